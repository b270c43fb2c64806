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
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("running database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid data in job {id}: {message}")]
    Corrupt { id: String, message: String },
    #[error("invalid database URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Sorts claimed jobs in the order they became due, as every claim returns them.
fn sort_due_order(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| (a.run_at, &a.id).cmp(&(b.run_at, &b.id)));
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

    /// Inserts a new job and claims due jobs as [`Store::job_claim`] does,
    /// in one transaction where the store allows it. The claim takes the
    /// oldest due jobs, which need not include the new one. An error means
    /// nothing was stored. This default inserts first, and when only the
    /// claim then fails, it returns the job and no claimed jobs.
    async fn job_insert_claim(&self, job: &NewJob, claim: &ClaimRequest) -> Result<(Job, Vec<Job>), StoreError> {
        let inserted = self.job_insert(job).await?;
        match self.job_claim(claim).await {
            Ok(claimed) => Ok((inserted, claimed)),
            Err(err) => {
                tracing::warn!(job_id = %inserted.id, error = %err, "claiming jobs after an enqueue failed; the dispatcher claims them later");
                Ok((inserted, Vec::new()))
            }
        }
    }

    /// Ends an attempt of a running job: `completed`, `failed`, `cancelled`,
    /// or `scheduled` again for a retry. Applies only while the job is still
    /// `running` in the same attempt; returns false otherwise.
    async fn job_finish(&self, finish: &JobFinish) -> Result<bool, StoreError>;

    /// Ends an attempt as [`Store::job_finish`] does and may claim due jobs
    /// as [`Store::job_claim`] does, in the same transaction. An error means
    /// the end was not recorded. When only the claim fails, the end is
    /// recorded and no jobs are claimed. This default only ends the attempt:
    /// where a claim costs a round trip of its own, the dispatcher's claim
    /// for every free slot at once costs less than a claim per ending job.
    async fn job_finish_claim(&self, finish: &JobFinish, _claim: &ClaimRequest) -> Result<(bool, Vec<Job>), StoreError> {
        Ok((self.job_finish(finish).await?, Vec::new()))
    }

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
    /// With `node_id`, only jobs this node still owns are updated.
    async fn jobs_live_flush(
        &self,
        node_id: Option<&str>,
        updates: &[LiveUpdate],
    ) -> Result<(), StoreError>;

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

    /// Takes or takes back the lease of `node_id` for `ttl`, judged by the
    /// database clock, and returns its generation. A store with one node
    /// returns 0.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    async fn node_lease_acquire(
        &self,
        _node_id: &str,
        _ttl: std::time::Duration,
    ) -> Result<i64, StoreError> {
        Ok(0)
    }

    /// Extends the lease of `node_id` by `ttl` from the database's now, if
    /// it still has `generation`. `after_failure` is true when the previous
    /// renewal failed: the node then counts as healthy only from now on,
    /// so it rescues no job until it has stayed healthy for `rescue_after`.
    ///
    /// # Errors
    ///
    /// Returns a store error; the lease is then unchanged.
    async fn node_lease_renew(
        &self,
        _node_id: &str,
        _generation: i64,
        _ttl: std::time::Duration,
        _after_failure: bool,
    ) -> Result<LeaseRenewal, StoreError> {
        Ok(LeaseRenewal::Renewed)
    }

    /// Takes over the running jobs of nodes whose lease expired more than
    /// `rescue_after` ago, by the database clock: those nodes are fenced
    /// (their generation changes) and their running jobs become owned by
    /// `rescuer`, which returns them still `running` so it can end their
    /// attempts. Nothing is rescued unless the rescuer's own lease is valid
    /// and has been renewed without failure for `rescue_after`, so that
    /// after a database outage every node renews before any node rescues.
    ///
    /// # Errors
    ///
    /// Returns a store error; nothing is then changed.
    async fn nodes_rescue(
        &self,
        _rescuer: &str,
        _rescue_after: std::time::Duration,
    ) -> Result<Vec<RescuedJob>, StoreError> {
        Ok(Vec::new())
    }

    /// Lists the nodes that hold or held a lease.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    async fn nodes_list(&self) -> Result<Vec<NodeLease>, StoreError> {
        Ok(Vec::new())
    }

    /// Appends job log lines and keeps at most `keep` lines per job, the
    /// newest. A store with one node keeps logs in files only.
    ///
    /// # Errors
    ///
    /// Returns a store error; the lines are then not stored.
    async fn job_logs_append(&self, _lines: &[JobLogLine], _keep: u32) -> Result<(), StoreError> {
        Ok(())
    }

    /// Returns the last `tail` stored log lines of a job (all when `None`),
    /// oldest first.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    async fn job_logs_read(
        &self,
        _job_id: &str,
        _tail: Option<usize>,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Asks every node to stop the running job `job_id`; the node that runs
    /// it does.
    ///
    /// # Errors
    ///
    /// Returns a store error; the request is then not announced.
    async fn job_cancel_announce(&self, _job_id: &str) -> Result<(), StoreError> {
        Ok(())
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
    /// A node was asked to cancel this running job.
    Cancel(String),
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
