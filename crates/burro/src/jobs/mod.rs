//! The jobs service: registration, enqueueing, dispatch, retries, cancel.

mod dispatch;
mod handler;
mod lease;
mod live;
mod logs;
mod outcome;
mod service;
mod view;

pub use handler::{handler, Handler, HandlerFuture, JobContext};
pub use live::{Live, LiveValues, FLUSH_INTERVAL};
pub use logs::{JobLogs, LogEntry, LogWriter};
pub use outcome::{
    backoff_delay, external_outcome, retry_decision, signal_name, ExitSummary, KillReason, Outcome,
    RetryDecision, Terminal,
};
pub use service::{CancelResult, EnqueueOptions, ExternalJob, JobList, JobStats, Jobs, JobsError, JobsSettings};
pub use view::{JobView, Progress};
