//! Types exchanged with the store.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// Lifecycle status of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Scheduled,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Pending,
        JobStatus::Scheduled,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Returns true for `completed`, `failed` and `cancelled`.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                format!("invalid status {text:?}: expected one of pending, scheduled, running, completed, failed, cancelled")
            })
    }
}

/// Lifecycle of an external job's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// The shim was started; the job has not sent `started` yet.
    Spawning,
    Running,
    /// The server lost contact with the shim.
    Orphaned,
    /// The server restarted and waits for the shim to reconnect.
    Reconnecting,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Spawning => "spawning",
            ProcessState::Running => "running",
            ProcessState::Orphaned => "orphaned",
            ProcessState::Reconnecting => "reconnecting",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "spawning" => Some(ProcessState::Spawning),
            "running" => Some(ProcessState::Running),
            "orphaned" => Some(ProcessState::Orphaned),
            "reconnecting" => Some(ProcessState::Reconnecting),
            _ => None,
        }
    }
}

/// A job as stored. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub data: Value,
    pub status: JobStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: i64,
    pub run_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub stack: Option<String>,
    pub progress_percent: Option<f64>,
    pub progress_message: Option<String>,
    pub external: bool,
    pub pid: Option<i64>,
    pub process_state: Option<ProcessState>,
    pub last_heartbeat: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub node_id: Option<String>,
    /// Secret of the current attempt's shim; never leaves the server.
    pub shim_token: Option<String>,
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub name: String,
    pub data: Value,
    pub max_attempts: u32,
    pub created_at: i64,
    /// `pending` when due now, `scheduled` for later.
    pub run_at: i64,
    pub status: JobStatus,
    pub external: bool,
    pub timeout_ms: Option<i64>,
}

/// Filters and paging of [`super::Store::job_list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub name: Option<String>,
    pub limit: u32,
    pub offset: u32,
    /// Keyset cursor: only jobs that come after the job with this id in
    /// the listing order (newest first). Cheaper than a large `offset`.
    pub after: Option<String>,
}

/// One page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub total: u64,
}

/// Parameters of [`super::Store::job_claim`].
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub names: Vec<String>,
    pub limit: u32,
    pub now_ms: i64,
    pub node_id: String,
    /// On a shared store: the claimer's lease generation. Nothing is
    /// claimed unless the node's lease has this generation and is unexpired.
    pub lease_generation: Option<i64>,
}

/// The end of an attempt, as written by [`super::Store::job_finish`].
#[derive(Debug, Clone)]
pub struct JobFinish {
    pub id: String,
    /// The attempt that ends; a stale attempt changes nothing.
    pub attempt: u32,
    /// `completed`, `failed`, `cancelled`, or `scheduled` for a retry.
    pub status: JobStatus,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub stack: Option<String>,
    pub now_ms: i64,
    /// For a retry: when the next attempt may start.
    pub run_at: Option<i64>,
    /// Last progress of the attempt, flushed with the final state.
    pub progress_percent: Option<f64>,
    pub progress_message: Option<String>,
    /// The job's pid, when known and not flushed yet.
    pub pid: Option<i64>,
    /// When set, applies only while the job is owned by this node: a node
    /// whose jobs were rescued by another cannot record their end.
    pub node_id: Option<String>,
}

/// Result of [`super::Store::job_cancel_waiting`].
#[derive(Debug, Clone)]
pub enum CancelWaiting {
    Cancelled(Job),
    /// The job exists but is not waiting; it is returned unchanged.
    NotWaiting(Job),
    NotFound,
}

/// Result of [`super::Store::job_retry`].
#[derive(Debug, Clone)]
pub enum RetryRequest {
    Retried(Job),
    /// The job exists but is not `failed` or `cancelled`.
    NotRetryable(Job),
    NotFound,
}

/// Number of jobs with one name and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCount {
    pub name: String,
    pub status: JobStatus,
    pub count: u64,
}

/// Coalesced live state of a running job.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveUpdate {
    pub id: String,
    pub progress_percent: Option<f64>,
    pub progress_message: Option<String>,
    pub last_heartbeat: Option<i64>,
    pub process_state: Option<ProcessState>,
    pub pid: Option<i64>,
}

/// The lease of a server node on a shared store, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLease {
    pub id: String,
    /// Incremented each time other nodes rescue this node's jobs.
    pub generation: i64,
    /// Milliseconds since the Unix epoch, by the database clock.
    pub expires_at: i64,
    /// True while the lease is unexpired by the database clock.
    pub alive: bool,
    /// True after a rescue, until the node takes its lease again.
    pub fenced: bool,
    /// Running jobs the node owns.
    pub running: u64,
}

/// A running job taken over from a node whose lease expired.
#[derive(Debug, Clone, PartialEq)]
pub struct RescuedJob {
    /// The job, still `running`, now owned by the rescuer.
    pub job: Job,
    /// The node that ran it.
    pub from_node: String,
}

/// Result of [`super::Store::node_lease_renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRenewal {
    Renewed,
    /// The lease was taken from the node: its jobs were rescued by others,
    /// or its row is gone. The node must take a new lease and stop the jobs
    /// it no longer owns.
    Lost,
}

/// One line of a job log as kept by a shared store: the NDJSON text of a
/// log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLogLine {
    pub job_id: String,
    pub line: String,
}
