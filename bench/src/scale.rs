//! S6: many external jobs running at once that only sleep and heartbeat.
//! `burro serve` runs as a child process with a concurrency equal to the
//! number of jobs. Once every job runs, the harness records the server's
//! memory per job, the private memory of a sample of shims and the server's
//! CPU use over an idle window. Then it stops the jobs and counts the
//! `job.stale` events the server reported, which must be none, because
//! every job heartbeats well within its timeout.

use crate::report::{Metric, ScenarioResult, Target};
use crate::restart::{count, enqueue, median_shim_private_kib, rss_kib, running_jobs, serve_config, Serve};
use crate::Scale;
use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Heartbeat interval of the jobs.
const HEARTBEAT_MS: u64 = 5000;
/// Poll interval while waiting for the jobs, long enough that listing
/// thousands of jobs does not dominate the server's work.
const POLL: Duration = Duration::from_secs(1);
/// Upper bound of each wait.
const WAIT: Duration = Duration::from_secs(900);
/// Enqueue requests in flight at once.
const PARALLEL: usize = 16;

/// Figures of one round.
struct Round {
    all_running_ms: f64,
    server_kib_per_job: f64,
    shim_private_kib: f64,
    idle_cpu_percent: f64,
    stale: u64,
    not_completed: u64,
    open_files_soft_limit: Option<u64>,
}

pub async fn s6_scale(burro: &Path, worker: &Path, scale: Scale, rounds_count: usize) -> Result<ScenarioResult> {
    let (jobs, idle_window) = match scale {
        Scale::Small => (20u64, Duration::from_secs(3)),
        Scale::Full => (5_000, Duration::from_secs(30)),
    };
    let mut cpu = Metric::new("server CPU while jobs sleep", "% of a core", Target::AtMost(5.0));
    cpu.absolute = true;
    let mut memory = Metric::new("server memory per running job", "KiB", Target::AtMost(64.0));
    memory.absolute = true;
    let mut shim = Metric::new("shim private memory", "KiB", Target::AtMost(1024.0));
    shim.absolute = true;
    let mut false_stale = Metric::new("false job.stale reports", "events", Target::AtMost(0.0));
    false_stale.absolute = true;
    let (mut all_running, mut stale, mut not_completed, mut limits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds_count {
        let figures = run_round(burro, worker, jobs, idle_window).await?;
        cpu.burro.push(figures.idle_cpu_percent);
        memory.burro.push(figures.server_kib_per_job);
        shim.burro.push(figures.shim_private_kib);
        all_running.push(figures.all_running_ms);
        stale.push(figures.stale);
        false_stale.burro.push(figures.stale as f64);
        not_completed.push(figures.not_completed);
        limits.push(figures.open_files_soft_limit);
        eprintln!("  round {} of {rounds_count} done", round + 1);
    }
    Ok(ScenarioResult {
        id: "S6",
        title: "scale: sleeping jobs",
        params: json!({"jobs": jobs, "heartbeatMs": HEARTBEAT_MS, "idleWindowSeconds": idle_window.as_secs()}),
        metrics: vec![cpu, memory, shim, false_stale],
        lost: None,
        extra: json!({
            "falseStaleEvents": stale,
            "allRunningAfterEnqueueMs": all_running,
            "jobsNotCompleted": not_completed,
            "serverOpenFilesSoftLimit": limits,
        }),
    })
}

async fn run_round(burro: &Path, worker: &Path, jobs: u64, idle_window: Duration) -> Result<Round> {
    let dir = tempfile::tempdir().context("creating the data directory")?;
    // Linux limits socket paths to 107 bytes, so the directory name is short.
    let sockets = tempfile::Builder::new().prefix("b6").tempdir_in("/tmp").context("creating the socket directory")?;
    // A heartbeat timeout of three intervals: a job is stale only after it
    // missed two heartbeats in a row.
    let timeout = format!("{}ms", HEARTBEAT_MS * 3);
    let config = serve_config(dir.path(), sockets.path(), worker, jobs, &timeout)?;
    let stop_file = dir.path().join("stop");
    let client = reqwest::Client::new();

    let server = Serve::start(burro, &config)?;
    let pid = server.child.id();
    let idle_rss_kib = rss_kib(pid)?;
    let data = json!({"stopFile": stop_file, "heartbeatMs": HEARTBEAT_MS});
    let enqueued = Instant::now();
    futures::stream::iter(0..jobs)
        .map(|_| enqueue(&client, &server.url, data.clone()))
        .buffer_unordered(PARALLEL)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let started = Instant::now();
    loop {
        let running = running_jobs(&client, &server.url).await?;
        if running.iter().filter(|job| job["processState"] == "running").count() as u64 == jobs {
            break;
        }
        if started.elapsed() > WAIT {
            bail!("{} of {jobs} jobs ran after {WAIT:?}", running.len());
        }
        tokio::time::sleep(POLL).await;
    }
    let all_running_ms = enqueued.elapsed().as_secs_f64() * 1000.0;
    let server_kib_per_job = (rss_kib(pid)? - idle_rss_kib) / jobs as f64;
    let shim_private_kib = median_shim_private_kib(&running_jobs(&client, &server.url).await?)?;
    let open_files_soft_limit = open_files_soft_limit(pid);

    // The idle window: no request reaches the server, only heartbeats.
    let ticks_before = cpu_ticks(pid)?;
    let window_start = Instant::now();
    tokio::time::sleep(idle_window).await;
    let ticks = cpu_ticks(pid)? - ticks_before;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle_cpu_percent = ticks as f64 / ticks_per_second / window_start.elapsed().as_secs_f64() * 100.0;

    std::fs::write(&stop_file, b"").context("creating the stop file")?;
    let stopping = Instant::now();
    loop {
        if running_jobs(&client, &server.url).await?.is_empty() {
            break;
        }
        if stopping.elapsed() > WAIT {
            bail!("the jobs did not end within {WAIT:?} after the stop file appeared");
        }
        tokio::time::sleep(POLL).await;
    }
    let completed = count(&client, &server.url, "completed").await?;
    let stale = stale_count(&client, &server.url).await?;
    server.stop();
    Ok(Round {
        all_running_ms,
        server_kib_per_job,
        shim_private_kib,
        idle_cpu_percent,
        stale,
        not_completed: jobs - completed.min(jobs),
        open_files_soft_limit,
    })
}


/// Returns the user plus system CPU time of process `pid`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After the command name, which ends with the last ')', utime and stime
    // are the 12th and 13th fields.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |index: usize| fields.get(index).and_then(|text| text.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => bail!("/proc/{pid}/stat has no utime and stime"),
    }
}

/// Returns the CPU time of process `pid` and of the children it has
/// reaped (utime, stime, cutime and cstime), in clock ticks.
pub(crate) fn cpu_ticks_with_children(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    (11..=14)
        .map(|index| fields.get(index).and_then(|text| text.parse::<u64>().ok()))
        .sum::<Option<u64>>()
        .with_context(|| format!("/proc/{pid}/stat has no utime, stime, cutime and cstime"))
}

/// Returns the soft limit on open files of process `pid`, from
/// `/proc/PID/limits`.
fn open_files_soft_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Returns the server's count of `job.stale` events, from `/metrics`.
async fn stale_count(client: &reqwest::Client, url: &str) -> Result<u64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .context("reading /metrics failed")?
        .text()
        .await
        .context("reading /metrics failed")?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("burro_jobs_stale_total"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}
