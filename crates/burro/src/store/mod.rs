//! Persistence of jobs behind one trait.
//!
//! [`Store`] is implemented by [`SqliteStore`] (embedded default) and
//! [`PostgresStore`] (several nodes on one database). Methods
//! are named noun first (`job_claim`, `job_finish`) and take their
//! parameters in structs, so another implementation can follow the same
//! contract.

mod model;
mod postgres;
mod sqlite;

pub use model::*;
pub use postgres::{PostgresStore, DEFAULT_POOL_SIZE};
pub use sqlite::SqliteStore;

use async_trait::async_trait;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("running database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid data in job {id}: {message}")]
    Corrupt { id: String, message: String },
    #[error("invalid database URL {url:?}: {message}")]
    Url { url: String, message: String },
}

/// The persistence contract of the jobs service.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new job.
    async fn job_insert(&self, job: &NewJob) -> Result<Job, StoreError>;

    /// Returns the job with `id`, if any.
    async fn job_get(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Returns one page of jobs, newest first, and the total that match.
    async fn job_list(&self, query: &ListQuery) -> Result<JobPage, StoreError>;

    /// Atomically moves up to `limit` due waiting jobs with a registered name
    /// to `running`, increments their attempts and returns them. Each job is
    /// claimed by exactly one caller.
    async fn job_claim(&self, claim: &ClaimRequest) -> Result<Vec<Job>, StoreError>;

    /// Records the process of a running external job.
    async fn job_spawned(&self, update: &SpawnUpdate) -> Result<(), StoreError>;

    /// Ends an attempt of a running job: `completed`, `failed`, `cancelled`,
    /// or `scheduled` again for a retry. Applies only while the job is still
    /// `running` in the same attempt; returns false otherwise.
    async fn job_finish(&self, finish: &JobFinish) -> Result<bool, StoreError>;

    /// Puts a claimed job whose attempt never started back to `pending` and
    /// takes back the attempt. Applies only while it is `running` in that
    /// attempt; returns false otherwise.
    async fn job_requeue(&self, id: &str, attempt: u32) -> Result<bool, StoreError>;

    /// Makes a `failed` or `cancelled` job `pending` again with one more
    /// allowed attempt; the row, its attempts and its last error are kept.
    async fn job_retry(&self, id: &str, now_ms: i64) -> Result<RetryRequest, StoreError>;

    /// Returns the number of jobs per name and status.
    async fn job_counts(&self) -> Result<Vec<JobCount>, StoreError>;

    /// Deletes up to `limit` finished jobs with one of `statuses` that ended
    /// before `before_ms`; returns their ids. Running, pending and scheduled
    /// jobs are never deleted.
    async fn jobs_purge(&self, statuses: &[JobStatus], before_ms: i64, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Cancels a `pending` or `scheduled` job.
    async fn job_cancel_waiting(&self, id: &str, now_ms: i64) -> Result<CancelWaiting, StoreError>;

    /// Writes coalesced progress and heartbeats of running jobs in one batch.
    async fn jobs_live_flush(&self, updates: &[LiveUpdate]) -> Result<(), StoreError>;

    /// Returns the running jobs owned by `node_id`, oldest start first.
    async fn jobs_running(&self, node_id: &str) -> Result<Vec<Job>, StoreError>;

    /// Returns the earliest `run_at` of waiting jobs with one of `names`.
    async fn job_next_run_at(&self, names: &[String]) -> Result<Option<i64>, StoreError>;

    /// Closes the store's connections, waiting for queued writes.
    async fn close(&self) {}

    /// Starts delivering what other nodes announce through the database:
    /// new jobs and their events. A store with one node delivers nothing.
    ///
    /// # Errors
    ///
    /// Returns a store error when listening cannot start.
    async fn listen(&self, _notices: tokio::sync::mpsc::UnboundedSender<Notice>) -> Result<(), StoreError> {
        Ok(())
    }

    /// Announces events (JSON texts) to the other nodes.
    ///
    /// # Errors
    ///
    /// Returns a store error; the events are then not announced.
    async fn events_publish(&self, _events: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Returns true when other nodes may share this store.
    fn is_shared(&self) -> bool {
        false
    }
}

/// Announcement from another node, received through the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Jobs were enqueued or became due: claim now.
    JobsChanged,
    /// An event emitted on another node, as JSON text.
    Event(String),
    /// The listening connection was lost and is back: notices may have been
    /// missed, so poll the store and tell SSE clients to reload.
    Resync,
}

/// Opens the store a database URL names: `sqlite://PATH` or
/// `postgres://...` (also `postgresql://`).
///
/// # Errors
///
/// Returns [`StoreError::Url`] for another scheme, or the store's own error.
pub async fn open(url: &str, pool_size: u32) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresStore::open(url, pool_size, None).await?))
    } else {
        Err(StoreError::Url {
            url: url.split('@').next_back().unwrap_or_default().to_string(),
            message: "expected sqlite://PATH or postgres://USER@HOST/DATABASE".into(),
        })
    }
}
