//! The bare spawner: the baseline that runs the same worker with no server.
//! Per job it binds a Unix socket, starts the worker with the payload line on
//! its standard input, reads and parses every line it sends, and reaps it.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::Command;

/// Upper bound of the wait for a worker's connection or its next line.
const WAIT: Duration = Duration::from_secs(60);

/// Timings and counts of one baseline job.
pub struct Trace {
    /// Time from just before the spawn until the `started` line was read.
    pub started_after: Duration,
    /// Number of `progress` lines read.
    pub progress: u64,
}

pub struct Spawner {
    worker: PathBuf,
    dir: tempfile::TempDir,
    next: AtomicU64,
}

impl Spawner {
    pub fn new(worker: PathBuf) -> Result<Spawner> {
        // Linux limits socket paths to 107 bytes, so the directory name is short.
        let dir = tempfile::Builder::new()
            .prefix("bb")
            .tempdir_in("/tmp")
            .context("creating the baseline socket directory")?;
        Ok(Spawner {
            worker,
            dir,
            next: AtomicU64::new(0),
        })
    }

    /// Runs one worker that sends `progress` progress messages and returns
    /// what was read from it. Fails when it sends no `completed` line.
    pub async fn run_job(&self, progress: u64) -> Result<Trace> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let job_id = format!("bare-{n}");
        let path = self.dir.path().join(format!("j{n}.sock"));
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        let payload = json!({
            "jobId": job_id,
            "name": "tiny",
            "data": {"progress": progress},
            "socketPath": path,
        });

        let start = Instant::now();
        let mut child = Command::new(&self.worker)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.worker.display()))?;
        let mut stdin = child
            .stdin
            .take()
            .context("the worker has no standard input")?;
        stdin.write_all(format!("{payload}\n").as_bytes()).await?;
        drop(stdin);

        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .with_context(|| format!("timed out waiting for worker {job_id} to connect"))??;
        let mut lines = BufReader::with_capacity(64 * 1024, stream).lines();
        let mut trace = Trace {
            started_after: Duration::ZERO,
            progress: 0,
        };
        let mut completed = false;
        while let Some(line) = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .with_context(|| format!("timed out reading from worker {job_id}"))??
        {
            let message: Value = serde_json::from_str(&line)
                .with_context(|| format!("invalid line from worker {job_id}: {line}"))?;
            match message["type"].as_str() {
                Some("started") => trace.started_after = start.elapsed(),
                Some("progress") => trace.progress += 1,
                Some("completed") => completed = true,
                _ => {}
            }
        }

        let status = child.wait().await?;
        let _ = std::fs::remove_file(&path);
        if !status.success() || !completed {
            bail!("worker {job_id} ended with {status} and completed={completed}");
        }
        Ok(trace)
    }
}
