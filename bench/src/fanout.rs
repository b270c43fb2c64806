//! S5: SSE fan-out. Many clients follow the `jobs` channel of `burro serve`
//! while a few jobs send progress at a steady rate. Each client behaves like
//! a browser's `EventSource`: when its stream ends it reconnects at once
//! with the last event id it saw. The harness counts, per client, the
//! progress events and the terminal events it received, and measures the
//! server's CPU time over the run.

use crate::report::{Metric, ScenarioResult, Target};
use crate::restart::{count, enqueue, newest_jobs, running_jobs, serve_config, wait_for, Serve};
use crate::scale::cpu_ticks;
use crate::Scale;
use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the clients keep reading after the last job ended, for terminal
/// events still in flight.
const GRACE: Duration = Duration::from_secs(10);

/// The counts of events one SSE client received.
#[derive(Default, Clone)]
struct Received {
    progress: u64,
    /// Jobs whose `completed` or `failed` event arrived.
    ended: HashSet<String>,
    /// Streams that ended and were opened again.
    reconnects: u64,
    resyncs: u64,
}

/// Figures of one round.
struct Round {
    /// Progress events of the client that received the fewest, as a share
    /// of those the jobs sent, in percent.
    slowest_client_percent: f64,
    median_client_percent: f64,
    /// Clients that missed the terminal event of at least one job.
    clients_missing_terminal: u64,
    server_cpu_percent: f64,
    reconnects: u64,
    resyncs: u64,
    /// From the first enqueue until every client had every terminal event.
    elapsed_ms: f64,
}

/// Runs S5 for `rounds_count` rounds and returns its figures.
pub async fn s5_fanout(burro: &Path, worker: &Path, scale: Scale, rounds_count: usize) -> Result<ScenarioResult> {
    // Full scale: 10 jobs at 500 progress messages a second each, 5,000
    // events a second in all, for 10 s.
    let (clients, jobs, per_job, per_second) = match scale {
        Scale::Small => (10usize, 2u64, 200u64, 100u64),
        Scale::Full => (100, 10, 5_000, 500),
    };
    let mut delivered = Metric::new("progress delivered to the slowest client", "%", Target::AtLeast(90.0));
    delivered.absolute = true;
    let mut missing = Metric::new("clients that missed a terminal event", "clients", Target::AtMost(0.0));
    missing.absolute = true;
    let mut cpu = Metric::new("server CPU while streaming", "% of a core", Target::AtMost(100.0));
    cpu.absolute = true;

    let (mut median_client, mut reconnects, mut resyncs, mut elapsed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds_count {
        let figures = run_round(burro, worker, clients, jobs, per_job, per_second).await?;
        delivered.burro.push(figures.slowest_client_percent);
        missing.burro.push(figures.clients_missing_terminal as f64);
        cpu.burro.push(figures.server_cpu_percent);
        median_client.push(figures.median_client_percent);
        reconnects.push(figures.reconnects);
        resyncs.push(figures.resyncs);
        elapsed.push(figures.elapsed_ms);
        eprintln!("  round {} of {rounds_count} done", round + 1);
    }

    Ok(ScenarioResult {
        id: "S5",
        title: "SSE fan-out",
        params: json!({
            "clients": clients,
            "jobs": jobs,
            "progressPerJob": per_job,
            "progressPerSecondPerJob": per_second,
        }),
        metrics: vec![delivered, missing, cpu],
        lost: None,
        extra: json!({
            "medianClientProgressPercent": median_client,
            "reconnects": reconnects,
            "resyncs": resyncs,
            "elapsedMs": elapsed,
        }),
    })
}

async fn run_round(burro: &Path, worker: &Path, clients: usize, jobs: u64, per_job: u64, per_second: u64) -> Result<Round> {
    let dir = tempfile::tempdir().context("creating the data directory")?;
    // Linux limits socket paths to 107 bytes, so the directory name is short.
    let sockets = tempfile::Builder::new().prefix("b5").tempdir_in("/tmp").context("creating the socket directory")?;
    let config = serve_config(dir.path(), sockets.path(), worker, jobs, "30s")?;
    let server = Serve::start(burro, &config)?;
    let pid = server.child.id();
    let client = reqwest::Client::new();

    // Every client is connected before the first job is enqueued.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(clients);
    let url = Arc::new(server.url.clone());
    let readers: Vec<_> = (0..clients)
        .map(|_| {
            let (url, client, stop, connected) = (url.clone(), client.clone(), stop_rx.clone(), connected_tx.clone());
            tokio::spawn(async move { follow(&client, &url, jobs, stop, connected).await })
        })
        .collect();
    drop(connected_tx);
    for _ in 0..clients {
        connected_rx.recv().await.context("an SSE client ended before it connected")?;
    }

    let ticks_before = cpu_ticks(pid)?;
    let start = Instant::now();
    let data = json!({"progress": per_job, "perSecond": per_second});
    futures::stream::iter(0..jobs)
        .map(|_| enqueue(&client, &server.url, data.clone()))
        .buffer_unordered(jobs as usize)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    // Pending, then running: a job moves from pending to running to ended,
    // so none pending and then none running means all have ended. In the
    // other order, a job claimed between the two requests would be missed.
    wait_for("every job to end", || async {
        Ok(count(&client, &server.url, "pending").await? == 0 && running_jobs(&client, &server.url).await?.is_empty())
    })
    .await?;
    // The clients end by themselves once they have every terminal event;
    // the stop signal ends those that never get one.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(GRACE).await;
        let _ = stop_tx.send(true);
    });
    let mut received = Vec::with_capacity(clients);
    for reader in readers {
        received.push(reader.await.context("an SSE client panicked")??);
    }
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    let ticks = cpu_ticks(pid)? - ticks_before;
    stopper.abort();
    let completed = count(&client, &server.url, "completed").await?;
    let newest = if completed == jobs { String::new() } else { newest_jobs(&client, &server.url).await };
    server.stop();
    if completed != jobs {
        bail!("{completed} of {jobs} jobs completed; the newest jobs: {newest}");
    }

    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let produced = (jobs * per_job) as f64;
    let mut shares: Vec<f64> = received.iter().map(|r| r.progress as f64 / produced * 100.0).collect();
    shares.sort_by(f64::total_cmp);
    Ok(Round {
        slowest_client_percent: shares[0],
        median_client_percent: shares[shares.len() / 2],
        clients_missing_terminal: received.iter().filter(|r| (r.ended.len() as u64) < jobs).count() as u64,
        server_cpu_percent: ticks as f64 / ticks_per_second / (elapsed_ms / 1000.0) * 100.0,
        reconnects: received.iter().map(|r| r.reconnects).sum(),
        resyncs: received.iter().map(|r| r.resyncs).sum(),
        elapsed_ms,
    })
}

/// Follows `/api/events?channel=jobs` until `jobs` jobs have ended or
/// `stop` turns true, reconnecting with `Last-Event-ID` whenever the
/// stream ends. Reports on `connected` once the first response arrived.
async fn follow(
    client: &reqwest::Client,
    url: &str,
    jobs: u64,
    mut stop: watch::Receiver<bool>,
    connected: tokio::sync::mpsc::Sender<()>,
) -> Result<Received> {
    let mut received = Received::default();
    let mut last_id: Option<String> = None;
    let mut first = true;
    loop {
        let mut request = client.get(format!("{url}/api/events?channel=jobs"));
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.context("opening the SSE stream failed")?;
        if !response.status().is_success() {
            bail!("the SSE request returned {}", response.status());
        }
        if first {
            first = false;
            let _ = connected.send(()).await;
        }
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut frame = Frame::default();
        loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = stop.wait_for(|stop| *stop) => return Ok(received),
            };
            let Some(chunk) = chunk else { break };
            buffer.extend_from_slice(&chunk.context("reading the SSE stream failed")?);
            let mut consumed = 0;
            while let Some(end) = buffer[consumed..].iter().position(|byte| *byte == b'\n') {
                let line = &buffer[consumed..consumed + end];
                consumed += end + 1;
                if !line.is_empty() {
                    frame.field(line);
                    continue;
                }
                if let Some(id) = frame.id.take() {
                    last_id = Some(id);
                }
                match frame.event.take().as_deref() {
                    Some("progress") => received.progress += 1,
                    Some("completed" | "failed") => {
                        if let Some(job) = frame.job_id() {
                            received.ended.insert(job);
                        }
                    }
                    Some("resync") => received.resyncs += 1,
                    _ => {}
                }
                frame.data.clear();
                if received.ended.len() as u64 == jobs {
                    return Ok(received);
                }
            }
            buffer.drain(..consumed);
        }
        received.reconnects += 1;
    }
}

/// The fields of the SSE frame being read.
#[derive(Default)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Vec<u8>,
}

impl Frame {
    fn field(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if let Some(id) = text.strip_prefix("id: ") {
            self.id = Some(id.to_string());
        } else if let Some(event) = text.strip_prefix("event: ") {
            self.event = Some(event.to_string());
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            self.data.extend_from_slice(data);
        }
    }

    fn job_id(&self) -> Option<String> {
        let data: Value = serde_json::from_slice(&self.data).ok()?;
        data["jobId"].as_str().map(String::from)
    }
}

