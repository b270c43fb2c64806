//! S7: `burro serve` killed with SIGKILL while jobs run, then restarted on
//! the same data directory. The jobs keep running under their shims, which
//! reconnect to the new server. Each job sends numbered `log` messages, and
//! after the restart every number must be in the job's log.

use crate::report::{Metric, ScenarioResult, Target};
use crate::Scale;
use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound of each wait for the servers and the jobs.
const WAIT: Duration = Duration::from_secs(180);
/// Poll interval of the reconnect and completion checks.
const POLL: Duration = Duration::from_millis(20);
/// Page size of `GET /api/jobs`, the API's maximum.
const PAGE: usize = 1000;
/// Requests in flight while enqueueing and reading logs.
const PARALLEL: usize = 16;

/// `burro serve` as a child process in its own process group.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Serve {
    /// Starts `burro serve --config CONFIG` and waits until it prints the
    /// address it serves on.
    pub(crate) fn start(burro: &Path, config: &Path) -> Result<Serve> {
        let mut child = Command::new(burro)
            .args(["serve", "--config"])
            .arg(config)
            .env("BURRO_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", burro.display()))?;
        let stderr = child.stderr.take().context("burro serve has no standard error")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // The thread keeps draining standard error, so the server never
        // blocks on a full pipe, and echoes warnings for the reader.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match line.strip_prefix("burro is serving on ") {
                    Some(rest) => {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                    }
                    None => eprintln!("  burro serve: {line}"),
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Ok(Serve { child, url }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("burro serve printed no address within 60 s")
            }
        }
    }

    fn kill9(&mut self) -> Result<()> {
        self.child.kill().context("sending SIGKILL to burro serve")?;
        self.child.wait().context("waiting for burro serve")?;
        Ok(())
    }

    /// Stops the server with SIGTERM, then SIGKILL after 10 s.
    pub(crate) fn stop(mut self) {
        // SAFETY: kill only sends a signal to the server's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill9();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Figures of one round.
struct Round {
    /// From the restart until no job waits for its shim, in ms.
    all_reconnected_ms: f64,
    /// From the restart until the new server printed its address, in ms.
    ready_ms: f64,
    /// From the first enqueue until every job ran, in ms.
    all_running_ms: f64,
    /// Growth of the server's resident memory from idle to every job
    /// running, divided by the number of jobs, in KiB.
    server_kib_per_job: f64,
    /// Median private memory of a sample of shims, in KiB.
    shim_private_kib: f64,
    /// Numbered messages missing from the job logs.
    lost: u64,
    /// Jobs that did not complete.
    not_completed: u64,
}

/// Runs S7: `jobs` jobs running, SIGKILL, restart, reconnect, and a check
/// of every job's log.
pub async fn s7_restart(
    burro: &Path,
    worker: &Path,
    scale: Scale,
    rounds_count: usize,
) -> Result<ScenarioResult> {
    // The jobs must outlive the start of all of them, the kill and the
    // restart: 60 s at full scale, because starting 1,000 jobs on a busy
    // 2-core machine took about 30 s.
    let (jobs, logs, interval_ms) = match scale {
        Scale::Small => (20u64, 30u64, 100u64),
        Scale::Full => (1_000, 600, 100),
    };
    let mut reconnect = Metric::new("all reconnected after restart", "ms", Target::AtMost(2000.0));
    reconnect.absolute = true;
    let mut ready = Vec::new();
    let mut all_running = Vec::new();
    let mut server_kib = Vec::new();
    let mut shim_kib = Vec::new();
    let mut lost = 0;
    let mut not_completed = Vec::new();
    for round in 0..rounds_count {
        let figures = run_round(burro, worker, jobs, logs, interval_ms).await?;
        reconnect.burro.push(figures.all_reconnected_ms);
        ready.push(figures.ready_ms);
        all_running.push(figures.all_running_ms);
        server_kib.push(figures.server_kib_per_job);
        shim_kib.push(figures.shim_private_kib);
        lost += figures.lost;
        not_completed.push(figures.not_completed);
        eprintln!("  round {} of {rounds_count} done", round + 1);
    }
    Ok(ScenarioResult {
        id: "S7",
        title: "restart after kill -9",
        params: json!({"jobs": jobs, "logMessagesPerJob": logs, "intervalMs": interval_ms}),
        metrics: vec![reconnect],
        lost: Some(lost),
        extra: json!({
            "serverReadyMs": ready,
            "allRunningAfterEnqueueMs": all_running,
            "jobsNotCompleted": not_completed,
            "serverRssKibPerRunningJob": server_kib,
            "shimPrivateKibMedian": shim_kib,
        }),
    })
}

async fn run_round(burro: &Path, worker: &Path, jobs: u64, logs: u64, interval_ms: u64) -> Result<Round> {
    let dir = tempfile::tempdir().context("creating the data directory")?;
    // Linux limits socket paths to 107 bytes, so the directory name is short.
    let sockets = tempfile::Builder::new()
        .prefix("b7")
        .tempdir_in("/tmp")
        .context("creating the socket directory")?;
    // The heartbeat timeout sets the reconnect window (twice the timeout),
    // so no job is given up while 1,000 shims reconnect.
    let config = serve_config(dir.path(), sockets.path(), worker, jobs, "30s")?;
    let client = reqwest::Client::new();

    let mut first = Serve::start(burro, &config)?;
    let idle_rss_kib = rss_kib(first.child.id())?;
    let data = json!({"logs": logs, "intervalMs": interval_ms});
    let enqueued = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..jobs)
        .map(|_| enqueue(&client, &first.url, data.clone()))
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    wait_for("every job to run", || async {
        let running = running_jobs(&client, &first.url).await?;
        let connected = running.iter().filter(|job| job["processState"] == "running").count() as u64;
        if connected < jobs && count(&client, &first.url, "completed").await? > 0 {
            bail!("jobs ended before all {jobs} ran at once ({connected} running); the jobs are too short for this machine");
        }
        Ok(connected == jobs)
    })
    .await?;
    let all_running_ms = enqueued.elapsed().as_secs_f64() * 1000.0;
    let server_kib_per_job = (rss_kib(first.child.id())? - idle_rss_kib) / jobs as f64;
    let shim_private_kib = median_shim_private_kib(&running_jobs(&client, &first.url).await?)?;

    first.kill9()?;
    let restarted = Instant::now();
    let second = Serve::start(burro, &config)?;
    let ready_ms = restarted.elapsed().as_secs_f64() * 1000.0;
    wait_for("every shim to reconnect", || async {
        let running = running_jobs(&client, &second.url).await?;
        Ok(running.iter().all(|job| job["processState"] != "reconnecting"))
    })
    .await?;
    let all_reconnected_ms = restarted.elapsed().as_secs_f64() * 1000.0;

    wait_for("every job to end", || async {
        Ok(running_jobs(&client, &second.url).await?.is_empty() && count(&client, &second.url, "pending").await? == 0)
    })
    .await?;
    let completed = count(&client, &second.url, "completed").await?;
    let lost: u64 = futures::stream::iter(ids.iter())
        .map(|id| missing_numbers(&client, &second.url, id, logs))
        .buffer_unordered(PARALLEL)
        .try_fold(0, |sum, missing| async move { Ok(sum + missing) })
        .await?;
    second.stop();
    Ok(Round {
        all_reconnected_ms,
        ready_ms,
        all_running_ms,
        server_kib_per_job,
        shim_private_kib,
        lost,
        not_completed: jobs - completed.min(jobs),
    })
}


pub(crate) async fn enqueue(client: &reqwest::Client, url: &str, data: Value) -> Result<String> {
    let response = client
        .post(format!("{url}/api/jobs"))
        .json(&json!({"name": "tiny", "data": data}))
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

/// Returns every job with status `running`, page by page.
pub(crate) async fn running_jobs(client: &reqwest::Client, url: &str) -> Result<Vec<Value>> {
    let mut jobs = Vec::new();
    loop {
        let page: Value = client
            .get(format!("{url}/api/jobs?status=running&limit={PAGE}&offset={}", jobs.len()))
            .send()
            .await
            .context("listing running jobs failed")?
            .json()
            .await
            .context("invalid job list")?;
        let batch = page["jobs"].as_array().context("the job list has no jobs array")?;
        jobs.extend(batch.iter().cloned());
        if batch.len() < PAGE {
            return Ok(jobs);
        }
    }
}

pub(crate) async fn count(client: &reqwest::Client, url: &str, status: &str) -> Result<u64> {
    let page: Value = client
        .get(format!("{url}/api/jobs?status={status}&limit=1"))
        .send()
        .await
        .context("listing jobs failed")?
        .json()
        .await
        .context("invalid job list")?;
    page["total"].as_u64().context("the job list has no total")
}

/// Returns the status and error of the newest jobs, to explain a failed
/// round.
pub(crate) async fn newest_jobs(client: &reqwest::Client, url: &str) -> String {
    let page: Result<Value, reqwest::Error> = async { client.get(format!("{url}/api/jobs?limit=5")).send().await?.json().await }.await;
    match page {
        Ok(page) => page["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .map(|job| format!("{} {} ({})", job["id"], job["status"], job["error"]))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default(),
        Err(err) => format!("listing jobs failed: {err}"),
    }
}

/// Returns how many of the numbers 1 to `expected` are missing from the
/// job's log.
async fn missing_numbers(client: &reqwest::Client, url: &str, id: &str, expected: u64) -> Result<u64> {
    let logs: Value = client
        .get(format!("{url}/api/jobs/{id}/logs"))
        .send()
        .await
        .context("reading a job log failed")?
        .json()
        .await
        .context("invalid job log")?;
    let entries = logs["entries"]
        .as_array()
        .ok_or_else(|| anyhow!("the log of job {id} has no entries array"))?;
    let seen: HashSet<u64> = entries
        .iter()
        .filter(|entry| entry["stream"] == "log")
        .filter_map(|entry| entry["message"].as_str()?.parse().ok())
        .collect();
    Ok((1..=expected).filter(|number| !seen.contains(number)).count() as u64)
}

/// Returns the resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no VmRSS line"))
}

/// Returns the median of Private_Clean + Private_Dirty from
/// `/proc/PID/smaps_rollup` over the shims of up to 50 of `jobs`. A job's
/// `pid` is the job process, whose parent is its shim.
pub(crate) fn median_shim_private_kib(jobs: &[Value]) -> Result<f64> {
    let mut sizes = Vec::new();
    for job in jobs.iter().take(50) {
        let Some(pid) = job["pid"].as_i64() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The fields after the command name, which ends with the last ')',
        // are: state, ppid, ...
        let Some(shim) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)) else { continue };
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{shim}/smaps_rollup")) else { continue };
        let private: f64 = rollup
            .lines()
            .filter(|line| line.starts_with("Private_Clean:") || line.starts_with("Private_Dirty:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum();
        sizes.push(private);
    }
    if sizes.is_empty() {
        bail!("no shim memory could be read from /proc");
    }
    sizes.sort_by(f64::total_cmp);
    Ok(sizes[sizes.len() / 2])
}

/// Writes the configuration of a `burro serve` that runs the `tiny` job
/// (`worker`) at `concurrency`, with the data directory under `dir` and the
/// job sockets under `sockets`, and returns its path.
/// Setting of `[server] shim_launcher` for the `burro serve` of S5, S6 and
/// S7. `--no-shim-launcher` clears it.
pub(crate) static SERVE_SHIM_LAUNCHER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub(crate) fn serve_config(dir: &Path, sockets: &Path, worker: &Path, concurrency: u64, heartbeat_timeout: &str) -> Result<PathBuf> {
    let text = format!(
        r#"[server]
bind = "127.0.0.1:0"
data_dir = "{data}"
drain_timeout = "1s"
shim_launcher = {launcher}

[jobs]
concurrency = {concurrency}
max_attempts = 1

[external]
socket_dir = "{sockets}/s"

[external_jobs.tiny]
command = "{worker}"
heartbeat_timeout = "{heartbeat_timeout}"
"#,
        data = dir.join("state").display(),
        sockets = sockets.display(),
        worker = worker.display(),
        launcher = SERVE_SHIM_LAUNCHER.load(std::sync::atomic::Ordering::Relaxed),
    );
    let path = dir.join("burro.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Polls `check` every `POLL` until it returns true, for at most `WAIT`.
pub(crate) async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > WAIT {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}
