//! The JSON shape of a job in the HTTP API and the CLI.

use super::live::LiveValues;
use crate::clock::to_rfc3339;
use crate::store::{Job, JobStatus, ProcessState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job as the API returns it: camelCase fields, RFC 3339 UTC times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub data: Value,
    pub status: JobStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: String,
    pub run_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub stack: Option<String>,
    pub progress: Progress,
    pub external: bool,
    pub pid: Option<i64>,
    pub process_state: Option<ProcessState>,
    pub last_heartbeat: Option<String>,
    /// Per-attempt time limit in milliseconds, if any.
    pub timeout: Option<i64>,
    /// The node that runs or last ran the job.
    pub node_id: Option<String>,
}

/// Last reported progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Progress {
    pub percent: Option<f64>,
    pub message: Option<String>,
}

impl JobView {
    /// Builds the view of a stored job, overlaid with live values of a
    /// running job that are not flushed yet.
    pub fn new(job: Job, live: Option<LiveValues>) -> Self {
        let mut view = JobView {
            id: job.id,
            name: job.name,
            data: job.data,
            status: job.status,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            created_at: to_rfc3339(job.created_at),
            run_at: to_rfc3339(job.run_at),
            started_at: job.started_at.map(to_rfc3339),
            completed_at: job.completed_at.map(to_rfc3339),
            result: job.result,
            error: job.error,
            stack: job.stack,
            progress: Progress {
                percent: job.progress_percent,
                message: job.progress_message,
            },
            external: job.external,
            pid: job.pid,
            process_state: job.process_state,
            last_heartbeat: job.last_heartbeat.map(to_rfc3339),
            timeout: job.timeout_ms,
            node_id: job.node_id,
        };
        if let (JobStatus::Running, Some(live)) = (view.status, live) {
            if live.progress_percent.is_some() {
                view.progress.percent = live.progress_percent;
            }
            if live.progress_message.is_some() {
                view.progress.message = live.progress_message;
            }
            if let Some(ms) = live.last_heartbeat {
                view.last_heartbeat = Some(to_rfc3339(ms));
            }
            if live.process_state.is_some() {
                view.process_state = live.process_state;
            }
            if live.pid.is_some() {
                view.pid = live.pid;
            }
        }
        view
    }
}
