//! The public face of the jobs service.

use super::handler::{Handler, JobContext};
use super::live::Live;
use super::logs::JobLogs;
use super::view::JobView;
use crate::clock::now_ms;
use crate::config::{ExternalJobConfig, RetryBackoff};
use crate::events::Events;
use crate::store::{CancelWaiting, Job, JobStatus, ListQuery, NewJob, Store, StoreError};
use crate::supervisor::Supervisor;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Maximum page size of [`Jobs::list`].
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Settings of the jobs service.
#[derive(Debug, Clone)]
pub struct JobsSettings {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub retry_backoff: RetryBackoff,
    pub poll_interval: Duration,
    pub node_id: String,
    pub retention: crate::config::Retention,
    /// Node lease length on a shared store.
    pub lease_ttl: Duration,
    /// Expired time after which other nodes rescue a node's jobs.
    pub rescue_after: Duration,
    /// Newest log lines per job kept in a shared store.
    pub database_log_lines: u32,
}

/// An external job as registered: its command and its effective limits.
#[derive(Debug, Clone)]
pub struct ExternalJob {
    pub name: String,
    pub config: ExternalJobConfig,
    pub heartbeat_timeout: Duration,
    pub kill_grace: Duration,
    /// The resolved `user` and `group` of the configuration.
    pub run_as: Option<burro_protocol::control::RunAs>,
}

pub(crate) enum Registration {
    InProcess(Handler),
    External(Arc<ExternalJob>),
}

/// Options of [`Jobs::enqueue`] and [`Jobs::schedule`].
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Runs including the first; default: the job's or the server's setting.
    pub max_attempts: Option<u32>,
    /// Earliest start, in epoch milliseconds; default: now.
    pub run_at_ms: Option<i64>,
    /// Per-attempt time limit, overriding the job's `timeout`.
    pub timeout: Option<Duration>,
}

/// A page of jobs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub total: u64,
    /// Cursor of the next page (`after=<next>`), when this page is full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Result of [`Jobs::cancel`].
#[derive(Debug, Clone)]
pub enum CancelResult {
    /// The job was waiting and is now `cancelled`.
    Cancelled(JobView),
    /// The job is running; it was asked to stop and becomes `cancelled` when
    /// its process has exited.
    Requested(JobView),
    /// The job had already finished and was left as it is.
    AlreadyFinished(JobView),
}

/// Resolves the `user` and `group` of an external job to ids.
fn resolve_identity(name: &str, config: &ExternalJobConfig) -> Result<Option<burro_protocol::control::RunAs>, JobsError> {
    use nix::unistd::{Group, Uid, User};
    let invalid = |message: String| JobsError::InvalidOption(format!("external job {name:?}: {message}"));
    let Some(user_text) = config.user.as_deref() else {
        if config.group.is_some() {
            return Err(invalid("group is set without user; set user too".into()));
        }
        return Ok(None);
    };
    if !Uid::effective().is_root() {
        return Err(invalid(format!("user = {user_text:?} needs a server running as root; remove it or run burro as root")));
    }
    let user = match user_text.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user_text),
    }
    .map_err(|err| invalid(format!("looking up user {user_text:?} failed: {err}")))?
    .ok_or_else(|| invalid(format!("user {user_text:?} not found")))?;
    let gid = match config.group.as_deref() {
        None => user.gid.as_raw(),
        Some(group_text) => match group_text.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(group_text)
                .map_err(|err| invalid(format!("looking up group {group_text:?} failed: {err}")))?
                .ok_or_else(|| invalid(format!("group {group_text:?} not found")))?
                .gid
                .as_raw(),
        },
    };
    Ok(Some(burro_protocol::control::RunAs { uid: user.uid.as_raw(), gid }))
}

/// Deleted rows per retention batch.
const PURGE_BATCH: u32 = 500;
/// How often the retention sweeper runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);

/// Job counts for the overview.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStats {
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub by_name: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

/// Deletes finished jobs past their retention, every few minutes.
async fn retention_sweeper(jobs: Jobs) {
    let retention = jobs.shared.settings.retention;
    let rules = [
        (JobStatus::Completed, retention.completed),
        (JobStatus::Failed, retention.failed),
        (JobStatus::Cancelled, retention.cancelled),
    ];
    if rules.iter().all(|(_, keep)| keep.is_none()) {
        return;
    }
    let mut ticker = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = jobs.shared.shutdown.cancelled() => return,
        }
        for (status, keep) in rules {
            let Some(keep) = keep else { continue };
            match jobs.purge(&[status], keep).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(status = %status, deleted, "deleted finished jobs past their retention"),
                Err(err) => tracing::warn!(status = %status, error = %err, "deleting finished jobs past their retention failed"),
            }
        }
    }
}

/// Errors of the jobs service.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("unknown job name {name:?}; registered names: {known}")]
    UnknownJob { name: String, known: String },
    #[error("{0}")]
    InvalidName(String),
    #[error("job name {0:?} is already registered")]
    AlreadyRegistered(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {} is {}; only failed or cancelled jobs can be retried", .0.id, .0.status)]
    NotRetryable(Box<JobView>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) struct RunningEntry {
    pub attempt: u32,
    pub external: bool,
    pub token: CancellationToken,
    pub cancel_requested: bool,
    /// Another node rescued the job: its end here is not recorded.
    pub fenced: bool,
}

/// State shared by the service handle, the dispatcher and the executors.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub events: Events,
    pub live: Live,
    pub logs: JobLogs,
    pub supervisor: Supervisor,
    pub settings: JobsSettings,
    pub registry: RwLock<HashMap<String, Registration>>,
    pub wake: Notify,
    pub slots: Arc<Semaphore>,
    pub running: Mutex<HashMap<String, RunningEntry>>,
    /// Jobs cancelled between their claim and the start of their executor.
    pub early_cancels: Mutex<HashSet<String>>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This node's lease generation on a shared store.
    pub lease_generation: std::sync::atomic::AtomicI64,
    /// True once the dispatcher runs; until then an enqueue claims nothing.
    pub dispatching: std::sync::atomic::AtomicBool,
}

/// Handle to the jobs service; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    pub(crate) shared: Arc<Shared>,
}

impl Jobs {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        events: Events,
        live: Live,
        logs: JobLogs,
        supervisor: Supervisor,
        settings: JobsSettings,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.concurrency));
        Jobs {
            shared: Arc::new(Shared {
                store,
                events,
                live,
                logs,
                supervisor,
                settings,
                registry: RwLock::new(HashMap::new()),
                wake: Notify::new(),
                slots,
                running: Mutex::new(HashMap::new()),
                early_cancels: Mutex::new(HashSet::new()),
                shutdown: CancellationToken::new(),
                metrics: Arc::new(crate::metrics::Metrics::default()),
                lease_generation: std::sync::atomic::AtomicI64::new(0),
                dispatching: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Registers an in-process Rust handler for `name`.
    ///
    /// # Errors
    ///
    /// Returns [`JobsError::InvalidName`] or [`JobsError::AlreadyRegistered`].
    pub fn register<F, Fut>(&self, name: &str, handler: F) -> Result<(), JobsError>
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Value>> + Send + 'static,
    {
        self.insert(name, Registration::InProcess(super::handler::handler(handler)))
    }

    /// Registers an external job: a command started under a shim per attempt.
    ///
    /// # Errors
    ///
    /// Returns [`JobsError::InvalidName`], [`JobsError::AlreadyRegistered`],
    /// or [`JobsError::InvalidOption`] for an empty command.
    pub fn register_external(&self, name: &str, config: ExternalJobConfig) -> Result<(), JobsError> {
        if config.command.trim().is_empty() {
            return Err(JobsError::InvalidOption(format!("external job {name:?}: command is empty")));
        }
        let defaults = self.shared.supervisor.settings();
        let run_as = resolve_identity(name, &config)?;
        let job = ExternalJob {
            name: name.to_string(),
            heartbeat_timeout: config.heartbeat_timeout.unwrap_or(defaults.default_heartbeat_timeout),
            kill_grace: config.kill_grace.unwrap_or(defaults.kill_grace),
            run_as,
            config,
        };
        self.insert(name, Registration::External(Arc::new(job)))
    }

    fn insert(&self, name: &str, registration: Registration) -> Result<(), JobsError> {
        burro_protocol::names::validate_job_name(name).map_err(JobsError::InvalidName)?;
        let mut registry = self.shared.registry.write().expect("registry lock");
        if registry.contains_key(name) {
            return Err(JobsError::AlreadyRegistered(name.to_string()));
        }
        registry.insert(name.to_string(), registration);
        drop(registry);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Returns the registered job names, sorted.
    pub fn registered_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.registry.read().expect("registry lock").keys().cloned().collect();
        names.sort();
        names
    }

    /// Enqueues a job to run as soon as a slot is free; returns its id.
    ///
    /// # Errors
    ///
    /// Returns [`JobsError::UnknownJob`] for a name that is not registered,
    /// [`JobsError::InvalidOption`] for a zero `max_attempts`, or a store error.
    pub async fn enqueue(&self, name: &str, data: Value, options: EnqueueOptions) -> Result<String, JobsError> {
        let now = now_ms();
        let (external, default_attempts, default_timeout) = {
            let registry = self.shared.registry.read().expect("registry lock");
            match registry.get(name) {
                Some(Registration::InProcess(_)) => (false, None, None),
                Some(Registration::External(job)) => (true, job.config.max_attempts, job.config.timeout),
                None => {
                    let mut known: Vec<&String> = registry.keys().collect();
                    known.sort();
                    let known = if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    };
                    return Err(JobsError::UnknownJob { name: name.to_string(), known });
                }
            }
        };
        let max_attempts = options.max_attempts.or(default_attempts).unwrap_or(self.shared.settings.max_attempts);
        if max_attempts == 0 {
            return Err(JobsError::InvalidOption("maxAttempts is 0: it must be at least 1 (1 means never retry)".into()));
        }
        let run_at = options.run_at_ms.unwrap_or(now);
        if run_at > crate::clock::LATEST_MS {
            return Err(JobsError::InvalidOption(format!(
                "runAt {run_at} ms is after the year 9999, the latest time burro stores and shows; schedule the job earlier"
            )));
        }
        let timeout_ms = options.timeout.or(default_timeout).map(|d| d.as_millis() as i64);
        let new_job = NewJob {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_string(),
            data,
            max_attempts,
            created_at: now,
            status: if run_at > now { JobStatus::Scheduled } else { JobStatus::Pending },
            run_at,
            external,
            timeout_ms,
        };
        // With a slot free, the same transaction claims a job into it: the
        // oldest due job, which is the new one when none was waiting. The
        // job then starts without waiting for the dispatcher's own write.
        let job = match self.free_slot_for(&new_job) {
            Some(permit) => {
                // A task of its own runs the claim and starts the claimed
                // job, so a caller that goes away meanwhile (an HTTP client
                // that disconnects) cannot leave a committed claim unstarted.
                let shared = self.shared.clone();
                let claim = super::dispatch::claim_request(&shared, super::dispatch::registered_names(&shared), 1);
                let insert = tokio::spawn(async move {
                    let (job, claimed) = shared.store.job_insert_claim(&new_job, &claim).await?;
                    if let Some(claimed) = claimed.into_iter().next() {
                        super::dispatch::start_claimed(&shared, claimed, permit);
                    }
                    Ok::<_, crate::store::StoreError>(job)
                });
                match insert.await {
                    Ok(inserted) => inserted?,
                    Err(err) => {
                        let failure = std::io::Error::other(format!("the enqueue task failed: {err}"));
                        return Err(JobsError::Store(crate::store::StoreError::Database(sqlx::Error::Io(failure))));
                    }
                }
            }
            None => self.shared.store.job_insert(&new_job).await?,
        };
        tracing::debug!(job_id = %job.id, job_name = %job.name, "job enqueued");
        self.shared.metrics.count(crate::metrics::JobCounter::Enqueued, &job.name);
        self.shared.wake.notify_one();
        Ok(job.id)
    }

    /// Takes a free slot for a job being enqueued, if it is due now and the
    /// dispatcher runs.
    fn free_slot_for(&self, job: &NewJob) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let shared = &self.shared;
        if job.status != JobStatus::Pending || !shared.dispatching.load(std::sync::atomic::Ordering::SeqCst) || shared.shutdown.is_cancelled() {
            return None;
        }
        shared.slots.clone().try_acquire_owned().ok()
    }

    /// Enqueues a job that starts no earlier than `run_at_ms` (epoch ms).
    ///
    /// # Errors
    ///
    /// As [`Jobs::enqueue`].
    pub async fn schedule(&self, name: &str, data: Value, run_at_ms: i64, mut options: EnqueueOptions) -> Result<String, JobsError> {
        options.run_at_ms = Some(run_at_ms);
        self.enqueue(name, data, options).await
    }

    /// Returns a job with its live progress.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    pub async fn get(&self, id: &str) -> Result<Option<JobView>, JobsError> {
        let job = self.shared.store.job_get(id).await?;
        Ok(job.map(|job| self.view(job)))
    }

    pub(crate) fn view(&self, job: Job) -> JobView {
        let live = self.shared.live.get_attempt(&job.id, job.attempts);
        JobView::new(job, live)
    }

    /// Lists jobs, newest first, with optional status and name filters.
    /// `limit` defaults to 50 and is capped at 1000.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    pub async fn list(&self, mut query: ListQuery) -> Result<JobList, JobsError> {
        if query.limit == 0 {
            query.limit = 50;
        }
        query.limit = query.limit.min(MAX_LIST_LIMIT);
        if let Some(after) = &query.after {
            if query.offset > 0 {
                return Err(JobsError::InvalidOption("use either after or offset, not both: after continues from a job id, offset skips rows".into()));
            }
            if self.shared.store.job_get(after).await?.is_none() {
                return Err(JobsError::InvalidOption(format!(
                    "after is {after:?}, which is not a job id: pass the id of the last job of the previous page"
                )));
            }
        }
        let page = self.shared.store.job_list(&query).await?;
        let next = (page.jobs.len() == query.limit as usize)
            .then(|| page.jobs.last().map(|job| job.id.clone()))
            .flatten();
        Ok(JobList {
            jobs: page.jobs.into_iter().map(|job| self.view(job)).collect(),
            total: page.total,
            next,
        })
    }

    /// Returns the external jobs running on this server.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    pub async fn get_running_external(&self) -> Result<Vec<JobView>, JobsError> {
        let jobs = self.shared.store.jobs_running(&self.shared.settings.node_id).await?;
        Ok(jobs.into_iter().filter(|job| job.external).map(|job| self.view(job)).collect())
    }

    /// Cancels a job. A waiting job becomes `cancelled` at once. A running
    /// one is requested to stop and becomes `cancelled` when it has exited.
    /// A finished one is left as it is. The row is always kept.
    ///
    /// # Errors
    ///
    /// Returns [`JobsError::NotFound`] or a store error.
    pub async fn cancel(&self, id: &str) -> Result<CancelResult, JobsError> {
        match self.shared.store.job_cancel_waiting(id, now_ms()).await? {
            CancelWaiting::NotFound => Err(JobsError::NotFound(id.to_string())),
            CancelWaiting::Cancelled(job) => {
                tracing::info!(job_id = %job.id, job_name = %job.name, "job cancelled before it started");
                self.shared.events.emit("job.cancelled", json!({"jobId": job.id, "name": job.name})).await;
                Ok(CancelResult::Cancelled(self.view(job)))
            }
            CancelWaiting::NotWaiting(job) if job.status.is_finished() => Ok(CancelResult::AlreadyFinished(self.view(job))),
            CancelWaiting::NotWaiting(job) => {
                self.request_stop(&job);
                Ok(CancelResult::Requested(self.view(job)))
            }
        }
    }

    fn request_stop(&self, job: &Job) {
        let mut running = self.shared.running.lock().expect("running lock");
        match running.get_mut(&job.id) {
            Some(entry) if entry.attempt == job.attempts => {
                entry.cancel_requested = true;
                entry.token.cancel();
                drop(running);
                tracing::info!(job_id = %job.id, job_name = %job.name, "cancel requested for a running job");
                self.shared.supervisor.request_cancel(&job.id);
            }
            _ if job.node_id.as_deref() == Some(self.shared.settings.node_id.as_str()) => {
                // Claimed by this node but its executor has not started yet.
                drop(running);
                self.shared.early_cancels.lock().expect("early cancels lock").insert(job.id.clone());
            }
            _ if self.shared.store.is_shared() => {
                drop(running);
                tracing::info!(job_id = %job.id, node_id = ?job.node_id, "cancel requested for a job running on another node");
                let store = self.shared.store.clone();
                let id = job.id.clone();
                tokio::spawn(async move {
                    if let Err(err) = store.job_cancel_announce(&id).await {
                        tracing::warn!(job_id = %id, error = %err, "asking the node that runs the job to cancel it failed");
                    }
                });
            }
            _ => {
                tracing::warn!(job_id = %job.id, node_id = ?job.node_id, "cannot cancel a job that this node does not run");
            }
        }
    }

    /// Stops a job this node runs, at the request of another node.
    pub(crate) fn cancel_local(&self, id: &str) {
        let mut running = self.shared.running.lock().expect("running lock");
        if let Some(entry) = running.get_mut(id) {
            entry.cancel_requested = true;
            entry.token.cancel();
            drop(running);
            tracing::info!(job_id = %id, "cancel requested by another node");
            self.shared.supervisor.request_cancel(id);
        }
    }

    /// Takes over the jobs that were running on this node when the server
    /// last stopped. External jobs wait for their shims to reconnect, or for
    /// their exit records. In-process jobs cannot survive a stop, so each
    /// emits `job.lost` and is retried or failed according to its attempts.
    pub(crate) async fn recover_interrupted(&self) {
        if self.shared.store.is_shared() && !super::lease::acquire(&self.shared).await {
            return;
        }
        let jobs = match self.shared.store.jobs_running(&self.shared.settings.node_id).await {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::error!(error = %err, "reading the jobs interrupted by the last stop failed");
                return;
            }
        };
        let external: std::collections::HashSet<String> = jobs.iter().filter(|job| job.external).map(|job| job.id.clone()).collect();
        self.shared.supervisor.remove_stale_files(&external);
        if !jobs.is_empty() {
            tracing::info!(external = external.len(), in_process = jobs.len() - external.len(), "taking over the jobs that were running at the last stop");
        }
        for mut job in jobs {
            // A claimed spec stays claimed, so its shim runs the attempt. A job
            // that an older server started has its token in the store instead.
            let mut claimed = false;
            if job.external && job.shim_token.is_none() {
                job.shim_token = self.shared.supervisor.claimed_token(&job);
                claimed = job.shim_token.is_some();
            }
            if job.external && !claimed && self.shared.supervisor.reclaim_spec(&job) {
                // The server stopped before any shim read the job's spec: the
                // job never started, so the attempt is given back.
                match self.shared.store.job_requeue(&job.id, job.attempts).await {
                    Ok(_) => tracing::info!(job_id = %job.id, job_name = %job.name, "requeued a job whose shim never read its spec"),
                    Err(err) => tracing::error!(job_id = %job.id, error = %err, "requeueing a job whose shim never read its spec failed"),
                }
                continue;
            }
            if job.external && job.shim_token.is_none() {
                // A shim may have claimed the spec since the first look.
                job.shim_token = self.shared.supervisor.claimed_token(&job);
            }
            if job.external && job.shim_token.is_none() {
                // The server stopped between the claim and the spec's write:
                // no shim ever ran, so the attempt is given back.
                match self.shared.store.job_requeue(&job.id, job.attempts).await {
                    Ok(_) => tracing::info!(job_id = %job.id, job_name = %job.name, "requeued a job whose shim was never started"),
                    Err(err) => tracing::error!(job_id = %job.id, error = %err, "requeueing a job whose shim was never started failed"),
                }
            } else if job.external {
                let external = super::dispatch::external_of(&self.shared, &job);
                let adoption = self.shared.supervisor.adopt(&job, &external);
                tokio::spawn(super::dispatch::recover_external(self.shared.clone(), job, adoption));
            } else {
                super::dispatch::recover_lost(&self.shared, job).await;
            }
        }
        self.shared.supervisor.start_accepting();
    }

    /// Starts the dispatcher, the coalesced-write flusher and the retention
    /// sweeper.
    pub(crate) fn start(&self) {
        self.shared.dispatching.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(super::dispatch::dispatcher(self.shared.clone()));
        tokio::spawn(super::dispatch::flusher(self.shared.clone()));
        tokio::spawn(retention_sweeper(self.clone()));
        if self.shared.store.is_shared() {
            tokio::spawn(super::lease::keeper(self.shared.clone()));
        }
    }

    /// Starts a new attempt of a `failed` or `cancelled` job: it becomes
    /// `pending` with one more allowed attempt.
    ///
    /// # Errors
    ///
    /// Returns [`JobsError::NotFound`] or a store error. A job in another
    /// status is returned as `Err(JobsError::NotRetryable)`.
    pub async fn retry(&self, id: &str) -> Result<JobView, JobsError> {
        match self.shared.store.job_retry(id, now_ms()).await? {
            crate::store::RetryRequest::Retried(job) => {
                tracing::info!(job_id = %job.id, job_name = %job.name, attempt = job.attempts + 1, "job retried on request");
                self.shared.wake.notify_one();
                Ok(self.view(job))
            }
            crate::store::RetryRequest::NotRetryable(job) => Err(JobsError::NotRetryable(Box::new(self.view(job)))),
            crate::store::RetryRequest::NotFound => Err(JobsError::NotFound(id.to_string())),
        }
    }

    /// Returns the number of jobs per status and per name and status.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    pub async fn stats(&self) -> Result<JobStats, JobsError> {
        let counts = self.shared.store.job_counts().await?;
        let mut stats = JobStats::default();
        for status in JobStatus::ALL {
            stats.by_status.insert(status.as_str().to_string(), 0);
        }
        for count in counts {
            *stats.by_status.entry(count.status.as_str().to_string()).or_default() += count.count;
            *stats.by_name.entry(count.name).or_default().entry(count.status.as_str().to_string()).or_default() += count.count;
        }
        Ok(stats)
    }

    /// Deletes finished jobs with one of `statuses` that ended more than
    /// `older_than` ago, with their log files, in batches; returns how many.
    ///
    /// # Errors
    ///
    /// Returns a store error; jobs deleted before it stay deleted.
    pub async fn purge(&self, statuses: &[JobStatus], older_than: Duration) -> Result<u64, JobsError> {
        let before = now_ms() - older_than.as_millis() as i64;
        let mut deleted = 0u64;
        loop {
            let ids = self.shared.store.jobs_purge(statuses, before, PURGE_BATCH).await?;
            for id in &ids {
                self.shared.logs.remove(id);
            }
            deleted += ids.len() as u64;
            if ids.len() < PURGE_BATCH as usize {
                return Ok(deleted);
            }
            // Small batches keep the single writer free for running jobs.
            tokio::task::yield_now().await;
        }
    }

    /// Returns the metrics of this server.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    /// Returns the number of jobs this server is running.
    pub fn running_count(&self) -> usize {
        self.shared.running.lock().expect("running lock").len()
    }

    /// Stops claiming new jobs, waits up to `drain_timeout` for in-process
    /// jobs to finish, and flushes coalesced writes. External jobs keep
    /// running under their shims and are taken over at the next start.
    pub(crate) async fn stop(&self, drain_timeout: Duration) {
        self.shared.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        loop {
            let in_process = self.shared.running.lock().expect("running lock").values().filter(|entry| !entry.external).count();
            if in_process == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(in_process, "in-process jobs still running after the drain timeout; they are lost and retried at the next start");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shared
            .live
            .flush(
                self.shared.store.as_ref(),
                Some(&self.shared.settings.node_id),
            )
            .await;
    }

    /// Returns the events bus the service emits on.
    pub fn events(&self) -> &Events {
        &self.shared.events
    }

    /// Returns the job log files.
    pub fn logs(&self) -> &JobLogs {
        &self.shared.logs
    }

    /// Returns the last `tail` log entries of a job (all when `None`). On a
    /// store shared by several nodes they come from the store, which keeps
    /// the newest `database_log_lines` of each job, so every node serves
    /// the same log wherever the job ran; otherwise from the log files.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    pub async fn read_logs(
        &self,
        id: &str,
        tail: Option<usize>,
    ) -> Result<Vec<super::LogEntry>, JobsError> {
        if self.shared.logs.is_mirrored() {
            let lines = self.shared.store.job_logs_read(id, tail).await?;
            return Ok(lines
                .iter()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect());
        }
        let logs = self.shared.logs.clone();
        let job_id = id.to_string();
        match tokio::task::spawn_blocking(move || logs.read(&job_id, tail)).await {
            Ok(entries) => Ok(entries),
            Err(err) => {
                tracing::error!(job_id = %id, error = %err, "reading the job log failed");
                Ok(Vec::new())
            }
        }
    }

    /// Returns the nodes that share this server's store, with their leases.
    ///
    /// # Errors
    ///
    /// Returns a store error.
    pub async fn nodes(&self) -> Result<Vec<crate::store::NodeLease>, JobsError> {
        Ok(self.shared.store.nodes_list().await?)
    }
}

impl Jobs {
    /// Returns `ok` when the control socket file exists, or what is wrong.
    pub fn control_socket_status(&self) -> String {
        use std::os::unix::fs::FileTypeExt;
        let path = self.shared.supervisor.settings().control_socket();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => "ok".into(),
            Ok(_) => format!("error: {} is not a socket", path.display()),
            Err(err) => format!("error: {}: {err}", path.display()),
        }
    }

    /// Returns `ok` while the dispatcher claims jobs, `stopped` after a
    /// shutdown began.
    pub fn dispatcher_status(&self) -> &'static str {
        if self.shared.shutdown.is_cancelled() {
            "stopped"
        } else {
            "ok"
        }
    }

    /// Wakes the dispatcher, so it claims due jobs now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Returns this server's node id.
    pub fn node_id(&self) -> &str {
        &self.shared.settings.node_id
    }

    /// Returns the pid of the process that forks this node's shims, once
    /// one runs. Shims it started are its children, so their CPU time is
    /// counted in its children times.
    pub fn shim_launcher_pid(&self) -> Option<u32> {
        self.shared.supervisor.launcher_pid()
    }

    /// Returns the number of external jobs under supervision.
    pub fn supervised_count(&self) -> usize {
        self.shared.supervisor.running_count()
    }
}
