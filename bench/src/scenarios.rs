//! The scenarios. Each round runs the burro side and the baseline side once,
//! alternating which goes first.

use crate::baseline::Spawner;
use crate::report::{Metric, ScenarioResult, Target};
use crate::Scale;
use anyhow::{anyhow, bail, Context, Result};
use burro::config::{Config, ExternalJobConfig};
use burro::events::Subscription;
use burro::RunningServer;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name under which the tiny worker is registered.
const JOB: &str = "tiny";
/// Concurrency of S2 and S4, on both sides.
const CONCURRENCY: usize = 32;
/// Number of jobs of S4.
const S4_JOBS: u64 = 16;
/// Upper bound of any single wait for an event.
const WAIT: Duration = Duration::from_secs(120);
/// Enqueue requests in flight at once in S2 and S4.
const ENQUEUE_PARALLEL: usize = 16;

/// The in-process server, an HTTP client and the bare spawner.
pub struct Bench {
    server: RunningServer,
    client: reqwest::Client,
    spawner: Spawner,
    _data_dir: tempfile::TempDir,
    _socket_dir: tempfile::TempDir,
}

impl Bench {
    /// Starts a server on 127.0.0.1 with `tiny_worker` registered as the
    /// external job `tiny`. With `shim_launcher` false, the server starts
    /// each shim with exec.
    pub async fn start(shim: &Path, worker: &Path, shim_launcher: bool) -> Result<Bench> {
        let data_dir = tempfile::tempdir().context("creating the data directory")?;
        // Linux limits socket paths to 107 bytes, so the directory name is short.
        let socket_dir = tempfile::Builder::new()
            .prefix("bb")
            .tempdir_in("/tmp")
            .context("creating the socket directory")?;

        let mut config = Config::default();
        config.server.bind = "127.0.0.1:0".parse()?;
        config.server.data_dir = data_dir.path().to_path_buf();
        config.server.shim_path = Some(shim.to_path_buf());
        config.server.shim_launcher = shim_launcher;
        config.external.socket_dir = Some(socket_dir.path().join("s"));
        config.jobs.concurrency = CONCURRENCY;
        config.jobs.max_attempts = 1;
        config.external_jobs.insert(
            JOB.to_string(),
            ExternalJobConfig {
                command: worker.display().to_string(),
                ..Default::default()
            },
        );

        let server = burro::AppServer::from_config(config)
            .await
            .map_err(|e| anyhow!("starting the server failed: {e}"))?
            .start()
            .await
            .map_err(|e| anyhow!("starting the server failed: {e}"))?;
        Ok(Bench {
            server,
            client: reqwest::Client::new(),
            spawner: Spawner::new(worker.to_path_buf())?,
            _data_dir: data_dir,
            _socket_dir: socket_dir,
        })
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }

    fn subscribe(&self, pattern: &str) -> Subscription {
        self.server.core().events.subscribe(pattern)
    }

    /// Enqueues one `tiny` job over HTTP and returns its id.
    async fn enqueue(&self, data: Value) -> Result<String> {
        let response = self
            .client
            .post(format!("{}/api/jobs", self.server.url()))
            .json(&json!({"name": JOB, "data": data}))
            .send()
            .await
            .context("enqueue request failed")?;
        let status = response.status();
        let body: Value = response.json().await.context("invalid enqueue response")?;
        if !status.is_success() {
            bail!("enqueue returned {status}: {body}");
        }
        body["id"]
            .as_str()
            .map(String::from)
            .context("the enqueue response has no id")
    }

    /// Enqueues `count` jobs with `data`, `ENQUEUE_PARALLEL` requests at a time.
    async fn enqueue_many(self: &Arc<Self>, count: u64, data: Value) -> Result<()> {
        futures::stream::iter(0..count)
            .map(|_| self.enqueue(data.clone()))
            .buffer_unordered(ENQUEUE_PARALLEL)
            .try_for_each(|_| async { Ok(()) })
            .await
    }
}

/// Receives the next event or fails after `WAIT`.
async fn next_event(events: &mut Subscription, awaited: &str) -> Result<Arc<burro::events::Event>> {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("the event subscription ended while waiting for {awaited}"),
        Err(_) => bail!("timed out after {WAIT:?} waiting for {awaited}"),
    }
}

/// Subscriptions to the events that end an attempt. The pattern `job.*`
/// would also queue every progress event, so each name has its own.
struct Ends {
    completed: Subscription,
    failed: Subscription,
}

impl Ends {
    fn new(bench: &Bench) -> Ends {
        Ends {
            completed: bench.subscribe("job.completed"),
            failed: bench.subscribe("job.failed"),
        }
    }

    /// Receives the next `job.completed` or `job.failed` event.
    async fn next(&mut self) -> Result<Arc<burro::events::Event>> {
        tokio::select! {
            event = next_event(&mut self.completed, "job.completed") => event,
            event = next_event(&mut self.failed, "job.failed") => event,
        }
    }

    /// Receives the next `job.completed` or `job.failed` event with no time
    /// limit, which costs no timer.
    async fn recv(&mut self) -> Result<Arc<burro::events::Event>> {
        let event = tokio::select! {
            event = self.completed.recv() => event,
            event = self.failed.recv() => event,
        };
        event.context("an event subscription ended while waiting for the ends of jobs")
    }

    /// Takes a queued `job.completed` or `job.failed` event without waiting.
    fn try_next(&mut self) -> Option<Arc<burro::events::Event>> {
        self.completed.try_recv().or_else(|| self.failed.try_recv())
    }
}

/// Returns true for the events that end an attempt of a `tiny` job. Fails
/// on `job.failed`, with the job's error.
fn is_end(event: &burro::events::Event) -> Result<bool> {
    if event.data["name"] != JOB {
        return Ok(false);
    }
    match event.name.as_str() {
        "job.completed" => Ok(true),
        "job.failed" => bail!(
            "job {} failed: {}",
            event.data["jobId"],
            event.data["error"]
        ),
        _ => Ok(false),
    }
}

/// Runs `burro` and `baseline` once per round, alternating which goes first.
async fn rounds<T, U, B, L>(
    rounds: usize,
    mut burro: impl FnMut() -> B,
    mut baseline: impl FnMut() -> L,
) -> Result<(Vec<T>, Vec<U>)>
where
    B: Future<Output = Result<T>>,
    L: Future<Output = Result<U>>,
{
    let (mut burro_out, mut baseline_out) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            burro_out.push(burro().await?);
            baseline_out.push(baseline().await?);
        } else {
            baseline_out.push(baseline().await?);
            burro_out.push(burro().await?);
        }
        eprintln!("  round {} of {rounds} done", round + 1);
    }
    Ok((burro_out, baseline_out))
}

/// Returns the CPU time used so far by this process and its reaped
/// children, in seconds. Shims reap their jobs, so the CPU time of a job
/// whose shim this process started is included once that shim is reaped.
fn cpu_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage only writes to the zeroed struct passed to it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } == 0 {
            for time in [usage.ru_utime, usage.ru_stime] {
                total += time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
            }
        }
    }
    total
}

impl Bench {
    /// Returns the CPU time of this process, of its reaped children and of
    /// the server's shim launcher with the shims it reaped, in seconds. The
    /// launcher, not this process, is the parent of the shims it forks, so
    /// their time reaches this process only when the launcher exits.
    fn burro_cpu_seconds(&self) -> f64 {
        let launcher = self.server.core().jobs.shim_launcher_pid().and_then(|pid| crate::scale::cpu_ticks_with_children(pid).ok());
        // SAFETY: sysconf only reads a system setting.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        cpu_seconds() + launcher.map_or(0.0, |ticks| ticks as f64 / ticks_per_second)
    }
}

/// Returns the nearest-rank percentile `p` (0 to 100) of `samples`, in ms.
fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    let index = rank.clamp(1, samples.len()) - 1;
    samples[index].as_secs_f64() * 1000.0
}

/// S1: enqueue over HTTP until the job's `started` message arrives as a
/// `job.external.spawned` event, one job at a time. The limit is spawning
/// the worker directly until its `started` line arrives on a socket.
pub async fn s1_dispatch_latency(
    bench: &Arc<Bench>,
    scale: Scale,
    rounds_count: usize,
) -> Result<ScenarioResult> {
    let jobs = match scale {
        Scale::Small => 20,
        Scale::Full => 500,
    };

    let burro_round = move || async move {
        let mut spawned = bench.subscribe("job.external.spawned");
        let mut ends = Ends::new(bench);
        let mut samples = Vec::with_capacity(jobs);
        let mut enqueue_samples = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            let start = Instant::now();
            let id = bench.enqueue(json!({})).await?;
            enqueue_samples.push(start.elapsed());
            loop {
                // The spawned event is queued before the job's end event, so
                // polling its subscription first never reads an end before its start.
                let event = tokio::select! {
                    biased;
                    event = next_event(&mut spawned, "job.external.spawned") => event?,
                    event = ends.next() => {
                        let event = event?;
                        if is_end(&event)? && event.data["jobId"] == id.as_str() {
                            bail!("job {id} ended before its started event arrived");
                        }
                        continue;
                    }
                };
                if event.data["jobId"] == id.as_str() {
                    samples.push(start.elapsed());
                    break;
                }
            }
            // The next job starts only once this one has ended.
            loop {
                let event = ends.next().await?;
                if is_end(&event)? && event.data["jobId"] == id.as_str() {
                    break;
                }
            }
        }
        Ok((samples, enqueue_samples))
    };
    let baseline_round = move || async move {
        let mut samples = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            samples.push(bench.spawner.run_job(0).await?.started_after);
        }
        Ok(samples)
    };
    let (burro, baseline) = rounds(rounds_count, burro_round, baseline_round).await?;

    let mut p50 = Metric::new("p50 enqueue to started", "ms", Target::AtMost(1.5));
    let mut p99 = Metric::new("p99 enqueue to started", "ms", Target::None);
    let mut enqueue_p50 = Vec::new();
    for (mut samples, mut enqueue_samples) in burro {
        p50.burro.push(percentile_ms(&mut samples, 50.0));
        p99.burro.push(percentile_ms(&mut samples, 99.0));
        enqueue_p50.push(percentile_ms(&mut enqueue_samples, 50.0));
    }
    for mut samples in baseline {
        p50.limit.push(percentile_ms(&mut samples, 50.0));
        p99.limit.push(percentile_ms(&mut samples, 99.0));
    }
    Ok(ScenarioResult {
        id: "S1",
        title: "dispatch latency",
        params: json!({"jobs": jobs, "concurrency": 1}),
        metrics: vec![p50, p99],
        lost: None,
        // The HTTP enqueue alone, a part of burro's enqueue-to-started time.
        extra: json!({"enqueueRequestP50Ms": enqueue_p50}),
    })
}

/// S2: N trivial jobs at concurrency 32 through burro against a bare spawner
/// at concurrency 32. Time runs from the first enqueue to the last end.
pub async fn s2_throughput(
    bench: &Arc<Bench>,
    scale: Scale,
    rounds_count: usize,
) -> Result<ScenarioResult> {
    let jobs: u64 = match scale {
        Scale::Small => 100,
        Scale::Full => 5_000,
    };

    let burro_round = move || async move {
        let mut ends = Ends::new(bench);
        let start = Instant::now();
        let cpu_start = bench.burro_cpu_seconds();
        let producer = tokio::spawn({
            let bench = Arc::clone(bench);
            async move { bench.enqueue_many(jobs, json!({})).await }
        });
        let mut ended = 0;
        while ended < jobs {
            let event = ends.next().await?;
            if is_end(&event)? {
                ended += 1;
            }
        }
        let elapsed = start.elapsed();
        let cpu_ms_per_job = (bench.burro_cpu_seconds() - cpu_start) * 1000.0 / jobs as f64;
        producer.await??;
        Ok((jobs as f64 / elapsed.as_secs_f64(), cpu_ms_per_job))
    };
    let baseline_round = move || async move {
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        futures::stream::iter(0..jobs)
            .map(|_| bench.spawner.run_job(0))
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        let cpu_ms_per_job = (cpu_seconds() - cpu_start) * 1000.0 / jobs as f64;
        Ok((jobs as f64 / start.elapsed().as_secs_f64(), cpu_ms_per_job))
    };
    let (burro, baseline) = rounds(rounds_count, burro_round, baseline_round).await?;

    let mut rate = Metric::new("throughput", "jobs/s", Target::AtLeast(0.5));
    rate.burro = burro.iter().map(|(rate, _)| *rate).collect();
    rate.limit = baseline.iter().map(|(rate, _)| *rate).collect();
    let burro_cpu: Vec<f64> = burro.iter().map(|(_, cpu)| *cpu).collect();
    let limit_cpu: Vec<f64> = baseline.iter().map(|(_, cpu)| *cpu).collect();
    Ok(ScenarioResult {
        id: "S2",
        title: "throughput",
        params: json!({"jobs": jobs, "concurrency": CONCURRENCY}),
        metrics: vec![rate],
        lost: None,
        extra: json!({"burroCpuMsPerJob": burro_cpu, "limitCpuMsPerJob": limit_cpu}),
    })
}

/// S4: 16 jobs each send M progress messages as fast as they can. burro must
/// deliver every one to an events subscriber. The limit is a reader that only
/// reads and parses the same lines from the sockets.
pub async fn s4_message_ingest(
    bench: &Arc<Bench>,
    scale: Scale,
    rounds_count: usize,
) -> Result<ScenarioResult> {
    let per_job: u64 = match scale {
        Scale::Small => 2_000,
        Scale::Full => 100_000,
    };
    let expected = S4_JOBS * per_job;

    let burro_round = move || async move {
        let mut progress = bench.subscribe("job.external.progress");
        let mut ends = Ends::new(bench);
        let start = Instant::now();
        let producer = tokio::spawn({
            let bench = Arc::clone(bench);
            async move {
                bench
                    .enqueue_many(S4_JOBS, json!({"progress": per_job}))
                    .await
            }
        });
        let (mut received, mut ended) = (0u64, 0u64);
        // The counting loop sets no timer per event, because this process
        // shares the cores with the server it measures: it takes what is
        // queued without waiting, and resets its two timers at most once
        // per wakeup.
        let stall = tokio::time::sleep(WAIT);
        let grace = tokio::time::sleep(WAIT);
        tokio::pin!(stall, grace);
        let mut grace_started = false;
        loop {
            let before = received;
            while let Some(event) = progress.try_recv() {
                if event.data["name"] == JOB {
                    received += 1;
                }
            }
            while ended < S4_JOBS {
                let Some(event) = ends.try_next() else { break };
                if is_end(&event)? {
                    ended += 1;
                }
            }
            if ended == S4_JOBS && !grace_started {
                // Once every job has ended, a progress event still missing
                // after this grace is counted as lost.
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
                grace_started = true;
            }
            if ended == S4_JOBS && received >= expected {
                break;
            }
            if received > before {
                stall.as_mut().reset(tokio::time::Instant::now() + WAIT);
            }
            tokio::select! {
                event = progress.recv() => {
                    let event = event.context("the event subscription ended while waiting for progress events")?;
                    if event.data["name"] == JOB {
                        received += 1;
                    }
                }
                event = ends.recv(), if ended < S4_JOBS => {
                    if is_end(&*event?)? {
                        ended += 1;
                    }
                }
                () = &mut grace, if grace_started => break,
                () = &mut stall => bail!("timed out after {WAIT:?} waiting for progress events"),
            }
        }
        let elapsed = start.elapsed();
        producer.await??;
        Ok((
            received as f64 / elapsed.as_secs_f64(),
            expected - received.min(expected),
        ))
    };
    let baseline_round = move || async move {
        let start = Instant::now();
        let received: u64 = futures::stream::iter(0..S4_JOBS)
            .map(|_| bench.spawner.run_job(per_job))
            .buffer_unordered(CONCURRENCY)
            .map_ok(|trace| trace.progress)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await?;
        Ok((
            received as f64 / start.elapsed().as_secs_f64(),
            expected - received.min(expected),
        ))
    };
    let (burro, baseline) = rounds(rounds_count, burro_round, baseline_round).await?;

    let mut rate = Metric::new("message ingest", "msgs/s", Target::AtLeast(0.5));
    rate.burro = burro.iter().map(|(rate, _)| *rate).collect();
    rate.limit = baseline.iter().map(|(rate, _)| *rate).collect();
    let lost = burro.iter().map(|(_, lost)| *lost).sum::<u64>()
        + baseline.iter().map(|(_, lost)| *lost).sum::<u64>();
    Ok(ScenarioResult {
        id: "S4",
        title: "message ingest",
        params: json!({"jobs": S4_JOBS, "messagesPerJob": per_job, "concurrency": CONCURRENCY}),
        metrics: vec![rate],
        lost: Some(lost),
        extra: Value::Null,
    })
}
