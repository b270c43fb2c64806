//! In-process job handlers written in Rust.

use super::logs::{LogEntry, LogWriter};
use super::live::Live;
use crate::clock::now_ms;
use crate::events::Events;
use burro_protocol::LogLevel;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The boxed future an in-process handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = anyhow::Result<Value>> + Send>>;

/// An in-process handler: receives the job context, returns the result.
pub type Handler = Arc<dyn Fn(JobContext) -> HandlerFuture + Send + Sync>;

/// Context of an in-process handler: the job, a cancellation token, and
/// emitters for progress and logs.
#[derive(Clone)]
pub struct JobContext {
    pub job_id: String,
    pub name: String,
    pub data: Value,
    pub attempt: u32,
    /// Cancelled when the job is cancelled or the attempt times out. A
    /// handler should return soon after; its result is then discarded.
    pub cancel: CancellationToken,
    pub(crate) events: Events,
    pub(crate) live: Live,
    pub(crate) log: Arc<Mutex<LogWriter>>,
}

impl JobContext {
    /// Reports progress (`percent` is clamped to 0–100): event `job.progress`,
    /// and the job's stored progress.
    pub async fn progress(&self, percent: f64, message: Option<&str>) {
        let percent = if percent.is_nan() { 0.0 } else { percent.clamp(0.0, 100.0) };
        self.live.progress(&self.job_id, percent, message);
        self.events
            .emit(
                "job.progress",
                json!({
                    "jobId": self.job_id,
                    "name": self.name,
                    "percent": percent,
                    "message": message,
                    "data": Value::Null,
                    "attempt": self.attempt,
                }),
            )
            .await;
    }

    /// Writes a line to the job log and emits `job.log`.
    pub async fn log(&self, level: LogLevel, message: &str) {
        let entry = LogEntry {
            ts: now_ms(),
            attempt: self.attempt,
            stream: "log".into(),
            level: level.as_str().into(),
            message: message.to_string(),
            data: None,
        };
        self.log.lock().expect("job log lock").append(&entry);
        self.events
            .emit(
                "job.log",
                json!({
                    "jobId": self.job_id,
                    "name": self.name,
                    "level": level.as_str(),
                    "message": message,
                    "data": Value::Null,
                    "attempt": self.attempt,
                }),
            )
            .await;
    }

    pub async fn info(&self, message: &str) {
        self.log(LogLevel::Info, message).await;
    }

    pub async fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message).await;
    }

    pub async fn error(&self, message: &str) {
        self.log(LogLevel::Error, message).await;
    }

    pub async fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message).await;
    }
}

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(function: F) -> Handler
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Value>> + Send + 'static,
{
    Arc::new(move |context| Box::pin(function(context)))
}
