//! Taking over external jobs after a server restart.
//!
//! A restarted server loads the external jobs that the store lists as
//! running on this node. Each one ends in one of three ways. Its shim
//! reconnects within the reconnect window and the job goes on. Or its shim
//! left an exit record, which is applied exactly as the frames would have
//! been. Or neither happens, and the job is lost.

use super::run::Run;
use super::{Inner, Supervisor};
use crate::jobs::{ExitSummary, ExternalJob};
use crate::store::{Job, ProcessState};
use burro_protocol::control::{exit_record_name, ExitRecordHeader, ShimFrame};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A job taken over after a restart, registered so that its shim is
/// accepted when it reconnects.
pub struct Adoption {
    run: Arc<Run>,
    exit_rx: oneshot::Receiver<ExitSummary>,
    window: Duration,
}

impl Supervisor {
    /// Registers a job that was running when the server last stopped. Call
    /// it for every such job before [`Supervisor::start_accepting`], so no
    /// reconnecting shim is rejected as unknown.
    pub fn adopt(&self, job: &Job, external: &ExternalJob) -> Adoption {
        let token = job.shim_token.clone().unwrap_or_default();
        let (exit_tx, exit_rx) = oneshot::channel();
        let log = self.inner.logs.writer(&job.id);
        let window = self.inner.settings.reconnect_window.unwrap_or(external.heartbeat_timeout * 2);
        let run = Arc::new(Run::new(job, external, self.inner.settings.cancel_grace, window, token, log, exit_tx));
        run.expect_reconnect();
        self.inner.runs.lock().expect("runs lock").insert(job.id.clone(), run.clone());
        self.inner.live.process_state(&job.id, ProcessState::Reconnecting);
        Adoption { run, exit_rx, window }
    }

    /// Waits for an adopted job to end: through its reconnected shim, its
    /// exit record, or as lost after the reconnect window.
    pub async fn recover(&self, adoption: Adoption, job: &Job) -> ExitSummary {
        let Adoption { run, exit_rx, window } = adoption;
        if !apply_exit_record(&self.inner, &run, job).await {
            tokio::spawn(reconnect_deadline(self.inner.clone(), run, job.clone(), window));
        }
        exit_rx.await.unwrap_or_default()
    }

    /// Takes back the spec file of a job's attempt if no shim took it: the
    /// server stopped after writing the spec but before a shim read it, so
    /// the job never started. Returns true when the spec was taken back,
    /// under its own name or under the name of a spec handed to a shim
    /// started directly. A shim that starts later finds it gone and exits.
    pub fn reclaim_spec(&self, job: &Job) -> bool {
        let path = super::spec_file(&self.inner.settings, &job.id, job.attempts);
        let reclaimed = path.with_extension("spec.reclaimed");
        for unclaimed in [path.with_extension("direct.spec"), path] {
            if std::fs::rename(&unclaimed, &reclaimed).is_ok() {
                let _ = std::fs::remove_file(&reclaimed);
                return true;
            }
        }
        false
    }

    /// Returns the token of a job's attempt from the spec file its shim
    /// claimed, or `None` when no shim claimed one. The store contains no
    /// token of the attempts this server starts.
    ///
    /// A claimed spec that cannot be read, or names another job or attempt,
    /// still shows that a shim took the spec and may run the job. The token
    /// returned then is a new one that no shim has: the job waits for a shim
    /// that cannot authenticate and is lost after the reconnect window,
    /// instead of starting again beside the shim that runs it.
    pub fn claimed_token(&self, job: &Job) -> Option<String> {
        for path in super::claimed_spec_files(&self.inner.settings, &job.id, job.attempts) {
            let problem = match std::fs::read(&path) {
                Ok(contents) => match serde_json::from_slice::<SpecOwner>(&contents) {
                    Ok(spec) if spec.job_id == job.id && spec.attempt == job.attempts => return Some(spec.token),
                    Ok(spec) => format!("it names attempt {} of job {}", spec.attempt, spec.job_id),
                    Err(err) => format!("it is not a valid spec: {err}"),
                },
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => format!("reading it failed: {err}"),
            };
            tracing::error!(
                job_id = %job.id, path = %path.display(),
                "the claimed spec of the job's attempt is unusable ({problem}); its shim cannot authenticate, so the job is lost after the reconnect window"
            );
            return Some(super::new_token());
        }
        None
    }

    /// Removes socket files and exit records that belong to no running job.
    pub fn remove_stale_files(&self, running: &HashSet<String>) {
        let settings = &self.inner.settings;
        remove_unowned(&settings.socket_dir, "job_", ".sock", running);
        remove_unowned(&settings.exit_dir, "", ".exit", running);
        remove_stale_spools(&settings.exit_dir, running);
    }
}

/// The fields of a spec file that name its attempt and its shim's token.
/// Parsing skips the other fields, such as the job's environment.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecOwner {
    job_id: String,
    attempt: u32,
    token: String,
}

async fn reconnect_deadline(inner: Arc<Inner>, run: Arc<Run>, job: Job, window: Duration) {
    tokio::time::sleep(window).await;
    if run.ever_attached() {
        return;
    }
    // The shim may have given up and written its record meanwhile.
    if apply_exit_record(&inner, &run, &job).await {
        return;
    }
    let reason = format!(
        "job lost: its shim did not reconnect within {} ms after the server restarted and left no exit record",
        window.as_millis()
    );
    tracing::warn!(job_id = %job.id, job_name = %job.name, attempt = job.attempts, "{reason}");
    run.note("error", reason.clone());
    run.deliver_lost_reason(reason);
}

/// Applies the job's exit record if there is a valid one; returns true when
/// it was applied.
async fn apply_exit_record(inner: &Inner, run: &Arc<Run>, job: &Job) -> bool {
    let path = inner.settings.exit_dir.join(exit_record_name(&job.id));
    let frames = match read_exit_record(&path, job) {
        Ok(Some(frames)) => frames,
        Ok(None) => return false,
        Err(err) => {
            tracing::warn!(job_id = %job.id, path = %path.display(), error = %err, "ignoring an invalid exit record");
            return false;
        }
    };
    tracing::info!(job_id = %job.id, job_name = %job.name, frames = frames.len(), "applying the exit record the job's shim left while the server was away");
    run.note("info", "the job ended while the server was away; applying its exit record".into());
    run.set_exit_record(path);
    let mut clock = crate::clock::BatchClock::now();
    let mut batch = crate::events::EventBatch::new();
    for frame in frames {
        if !run.already_processed(frame.seq()) {
            run.process(inner, (&frame).into(), &clock, &mut batch).await;
            if batch.len() >= super::control::EVENT_BATCH {
                run.emit_events(inner, &mut batch).await;
            }
            clock.tick();
        }
    }
    run.emit_events(inner, &mut batch).await;
    true
}

/// Reads an exit record. `Ok(None)` when there is none; an error when it
/// exists but does not belong to this attempt or cannot be parsed.
fn read_exit_record(path: &Path, job: &Job) -> Result<Option<Vec<ShimFrame>>, String> {
    let contents = match std::fs::read(path) {
        Ok(contents) => contents,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let mut lines = contents.split(|&b| b == b'\n').filter(|line| !line.is_empty());
    let header: ExitRecordHeader = serde_json::from_slice(lines.next().ok_or("the file is empty")?)
        .map_err(|e| format!("invalid header: {e}"))?;
    let token = job.shim_token.as_deref().unwrap_or_default();
    if header.job_id != job.id || header.attempt != job.attempts || !super::constant_time_eq(header.token.as_bytes(), token.as_bytes()) {
        return Err(format!("it belongs to attempt {} of job {}, not to the current attempt", header.attempt, header.job_id));
    }
    let mut frames = Vec::new();
    for line in lines {
        frames.push(ShimFrame::decode(line).map_err(|e| format!("invalid frame: {e}"))?);
    }
    Ok(Some(frames))
}

/// Removes spool files (`<job id>.<attempt>.spool`), unfinished exit
/// records (`<job id>.exit.tmp.<pid>`) and spec files
/// (`<job id>.<attempt>.spec*`) of jobs that are not running: a shim killed
/// with SIGKILL cannot remove its own.
fn remove_stale_spools(dir: &Path, running: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".spool") || name.contains(".exit.tmp.") || name.ends_with(".spec") || name.contains(".spec.")) {
            continue;
        }
        let id = name.split('.').next().unwrap_or_default();
        if running.contains(id) {
            continue;
        }
        if let Err(err) = std::fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %err, "removing a stale spool file failed");
        }
    }
}

fn remove_unowned(dir: &Path, prefix: &str, suffix: &str, running: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix)) else {
            continue;
        };
        if running.contains(id) {
            continue;
        }
        let path: PathBuf = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a stale file of a finished job"),
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "removing a stale file failed"),
        }
    }
}
