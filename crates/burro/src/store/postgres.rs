//! The PostgreSQL store, for several server nodes sharing one queue.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent claimers on any node
//! skip rows another claimer has locked instead of waiting for them. The
//! conformance suite checks that each job is claimed exactly once.

use super::*;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use std::str::FromStr;
use std::time::Duration;

/// Default number of connections per node.
pub const DEFAULT_POOL_SIZE: u32 = 10;
/// Channel that announces new or due jobs.
const JOBS_CHANNEL: &str = "burro_jobs";
/// Channel that carries events between nodes.
const EVENTS_CHANNEL: &str = "burro_events";
/// Channel that asks the node running a job to cancel it.
const CANCEL_CHANNEL: &str = "burro_cancel";

/// Notification channels of one schema. Channels are shared by the whole
/// database, so queues in different schemas of one database use channel
/// names suffixed with their schema and never hear each other.
#[derive(Debug)]
struct Channels {
    jobs: String,
    events: String,
    cancel: String,
}

impl Channels {
    fn for_schema(schema: &str) -> Channels {
        let suffix = if schema == "public" {
            String::new()
        } else if schema.len() <= 40 && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            format!("_{schema}")
        } else {
            // Any other schema name gets a short stable digest instead.
            let digest = schema.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            format!("_{digest:016x}")
        };
        Channels {
            jobs: format!("{JOBS_CHANNEL}{suffix}"),
            events: format!("{EVENTS_CHANNEL}{suffix}"),
            cancel: format!("{CANCEL_CHANNEL}{suffix}"),
        }
    }
}
/// NOTIFY payloads must stay under 8000 bytes; larger events are stored in
/// `event_payloads` and announced by id.
const NOTIFY_LIMIT: usize = 7900;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// [`Store`] on a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    channels: std::sync::Arc<Channels>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://...`) with a pool of `pool_size`
    /// connections and runs pending migrations. `schema`, when given, is
    /// put first on the search path (tests use one schema each).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when the URL is invalid, the server cannot be
    /// reached, or a migration fails.
    pub async fn open(url: &str, pool_size: u32, schema: Option<&str>) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url).map_err(|err| StoreError::Url {
            url: redact(url),
            message: err.to_string(),
        })?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            // During a database outage every acquisition is slow; the
            // failures are logged once by their callers instead.
            .acquire_slow_level(log::LevelFilter::Debug)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&pool).await?;
        Ok(Self {
            pool,
            channels: std::sync::Arc::new(Channels::for_schema(&schema)),
        })
    }

    /// Returns the connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Returns the statements that look up due jobs, by name: `claim` (parameters
    /// now, node, names, limit, lease generation, candidates) and
    /// `next_run_at` (names). Exposed for tests that check their plans.
    #[doc(hidden)]
    pub fn due_statements() -> [(&'static str, &'static str); 2] {
        [("claim", CLAIM_SQL.as_str()), ("next_run_at", NEXT_RUN_AT_SQL)]
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Removes the password from a URL before it appears in an error.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

const COLUMNS: &str = "id, name, data, status, attempts, max_attempts, created_at, run_at, started_at, completed_at, \
    result, error, stack, progress_percent, progress_message, external, pid, process_state, last_heartbeat, \
    timeout_ms, node_id, shim_token";

fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |message: String| StoreError::Corrupt { id: id.clone(), message };
    let data_text: String = row.try_get("data")?;
    let data = serde_json::from_str(&data_text).map_err(|e| corrupt(format!("data is not JSON: {e}")))?;
    let result_text: Option<String> = row.try_get("result")?;
    let result = result_text
        .map(|text| serde_json::from_str::<Value>(&text))
        .transpose()
        .map_err(|e| corrupt(format!("result is not JSON: {e}")))?;
    let status_text: String = row.try_get("status")?;
    let status = JobStatus::from_str(&status_text).map_err(corrupt)?;
    let process_state: Option<String> = row.try_get("process_state")?;
    Ok(Job {
        id: id.clone(),
        name: row.try_get("name")?,
        data,
        status,
        attempts: row.try_get::<i32, _>("attempts")? as u32,
        max_attempts: row.try_get::<i32, _>("max_attempts")? as u32,
        created_at: row.try_get("created_at")?,
        run_at: row.try_get("run_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        result,
        error: row.try_get("error")?,
        stack: row.try_get("stack")?,
        progress_percent: row.try_get("progress_percent")?,
        progress_message: row.try_get("progress_message")?,
        external: row.try_get("external")?,
        pid: row.try_get("pid")?,
        process_state: process_state.as_deref().and_then(ProcessState::parse),
        last_heartbeat: row.try_get("last_heartbeat")?,
        timeout_ms: row.try_get("timeout_ms")?,
        node_id: row.try_get("node_id")?,
        shim_token: row.try_get("shim_token")?,
    })
}

/// Tells every node's dispatcher that there are jobs to claim. A lost
/// notification only delays the job until the next poll.
async fn notify_jobs(pool: &PgPool, channel: &str) {
    if let Err(err) = sqlx::query("SELECT pg_notify($1, '')").bind(channel).execute(pool).await {
        tracing::warn!(error = %err, "announcing new jobs to other nodes failed; they find them at their next poll");
    }
}

async fn fetch_payload(pool: &PgPool, id: i64) -> Option<String> {
    match sqlx::query_scalar("SELECT payload FROM event_payloads WHERE id = $1").bind(id).fetch_optional(pool).await {
        Ok(payload) => payload,
        Err(err) => {
            tracing::warn!(error = %err, payload_id = id, "reading a large event from the database failed");
            None
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The insert of a new job.
static INSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO jobs (id, name, data, status, attempts, max_attempts, created_at, run_at, external, timeout_ms) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    )
});

/// Due jobs a claim considers beyond its limit. Rows that a concurrent
/// claim has locked are skipped, so a claim still finds free jobs while up to
/// this many of the earliest ones are taken by others.
/// NOTE: with more of them locked, the claim comes back short and the node
/// waits for its next wake-up; 64 is a guess, not a measured bound.
const CLAIM_SPARE: u32 = 64;

/// The claim statement. Only a node whose lease has the claim's generation
/// claims anything.
///
/// The candidates are the first `$6` due jobs, looked up name by name, each
/// an ordered scan of the `jobs_waiting_name` index that stops after `$6`
/// rows. One condition `name = ANY($3)` lets a planner without statistics
/// (a fresh table, or autovacuum off) combine two bitmap scans that read
/// every job of the name: 16 ms per claim at 30,000 jobs in one test. The
/// candidates are locked in due order only after that, so a claim locks no
/// row it does not take, and a concurrent claim skips just the rows taken.
static CLAIM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = $1, node_id = $2, \
             completed_at = NULL, pid = NULL, last_heartbeat = NULL, shim_token = NULL, \
             progress_percent = NULL, progress_message = NULL, \
             process_state = CASE WHEN external THEN 'spawning' ELSE NULL END \
         WHERE id IN (SELECT id FROM jobs WHERE id IN ( \
                 SELECT due.id FROM (SELECT DISTINCT name FROM unnest($3::TEXT[]) AS names(name)) AS wanted \
                 CROSS JOIN LATERAL (SELECT id, run_at FROM jobs WHERE status IN ('pending', 'scheduled') \
                     AND jobs.name = wanted.name AND run_at <= $1 ORDER BY run_at, id LIMIT $6) due \
                 ORDER BY due.run_at, due.id LIMIT $6) \
             AND status IN ('pending', 'scheduled') AND run_at <= $1 \
             ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
         AND ($5::BIGINT IS NULL OR EXISTS (SELECT 1 FROM nodes \
             WHERE nodes.id = $2 AND generation = $5 AND NOT fenced AND expires_at > now())) \
         RETURNING {COLUMNS}"
    )
});

/// The earliest due time of the waiting jobs of the names in `$1`, looked
/// up name by name like the claim.
const NEXT_RUN_AT_SQL: &str = "SELECT MIN(earliest.run_at) FROM unnest($1::TEXT[]) AS wanted(name) \
     CROSS JOIN LATERAL (SELECT run_at FROM jobs WHERE status IN ('pending', 'scheduled') \
         AND jobs.name = wanted.name ORDER BY run_at LIMIT 1) earliest";

/// Returns the insert of a new job with its values bound.
fn insert_query(job: &NewJob) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(&INSERT_SQL)
        .bind(job.id.clone())
        .bind(job.name.clone())
        .bind(job.data.to_string())
        .bind(job.status.as_str())
        .bind(to_i32(job.max_attempts))
        .bind(job.created_at)
        .bind(job.run_at)
        .bind(job.external)
        .bind(job.timeout_ms)
}

/// Returns the claim statement with the values of `claim` bound.
fn claim_query(claim: &ClaimRequest) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(&CLAIM_SQL)
        .bind(claim.now_ms)
        .bind(claim.node_id.clone())
        .bind(claim.names.clone())
        .bind(i64::from(claim.limit))
        .bind(claim.lease_generation)
        .bind(i64::from(claim.limit.saturating_add(CLAIM_SPARE)))
}

/// Decodes the rows of a claim, in due order.
fn claimed_jobs(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Job>, StoreError> {
    let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
    sort_due_order(&mut jobs);
    Ok(jobs)
}

#[async_trait]
impl Store for PostgresStore {
    async fn job_insert(&self, job: &NewJob) -> Result<Job, StoreError> {
        let row = insert_query(job).fetch_one(&self.pool).await?;
        notify_jobs(&self.pool, &self.channels.jobs).await;
        job_from_row(&row)
    }

    async fn job_insert_claim(&self, job: &NewJob, claim: &ClaimRequest) -> Result<(Job, Vec<Job>), StoreError> {
        // One transaction, so the insert and the claim share one commit.
        let mut transaction = self.pool.begin().await?;
        let row = insert_query(job).fetch_one(&mut *transaction).await?;
        let claimed = if claim.names.is_empty() || claim.limit == 0 {
            Vec::new()
        } else {
            claim_query(claim).fetch_all(&mut *transaction).await?
        };
        transaction.commit().await?;
        notify_jobs(&self.pool, &self.channels.jobs).await;
        Ok((job_from_row(&row)?, claimed_jobs(&claimed)?))
    }

    async fn job_get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn job_list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        // Absent filters are bound as NULL, so one statement serves all cases.
        let filter = "WHERE ($1::TEXT IS NULL OR status = $1) AND ($2::TEXT IS NULL OR name = $2)";
        let list_sql = format!(
            "SELECT {COLUMNS} FROM jobs {filter} \
             AND ($5::TEXT IS NULL OR (created_at, id) < (SELECT created_at, id FROM jobs WHERE id = $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        );
        let count_sql = format!("SELECT COUNT(*) FROM jobs {filter}");
        let status = query.status.map(JobStatus::as_str);
        let rows = sqlx::query(&list_sql)
            .bind(status)
            .bind(&query.name)
            .bind(i64::from(query.limit))
            .bind(i64::from(query.offset))
            .bind(&query.after)
            .fetch_all(&self.pool)
            .await?;
        let total: i64 = sqlx::query_scalar(&count_sql).bind(status).bind(&query.name).fetch_one(&self.pool).await?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(JobPage { jobs, total: total as u64 })
    }

    async fn job_claim(&self, claim: &ClaimRequest) -> Result<Vec<Job>, StoreError> {
        if claim.names.is_empty() || claim.limit == 0 {
            return Ok(Vec::new());
        }
        let rows = claim_query(claim).fetch_all(&self.pool).await?;
        claimed_jobs(&rows)
    }

    async fn job_finish(&self, finish: &JobFinish) -> Result<bool, StoreError> {
        let retrying = finish.status == JobStatus::Scheduled;
        let result = finish.result.as_ref().map(Value::to_string);
        let outcome = sqlx::query(
            "UPDATE jobs SET status = $1, result = $2, error = $3, stack = $4, \
                 completed_at = CASE WHEN $5 THEN NULL ELSE $6 END, \
                 run_at = COALESCE($7, run_at), \
                 progress_percent = COALESCE($8, progress_percent), \
                 progress_message = COALESCE($9, progress_message), \
                 pid = COALESCE($13, pid), process_state = NULL, shim_token = NULL \
             WHERE id = $10 AND attempts = $11 AND status = 'running' AND ($12::TEXT IS NULL OR node_id = $12)",
        )
        .bind(finish.status.as_str())
        .bind(result)
        .bind(&finish.error)
        .bind(&finish.stack)
        .bind(retrying)
        .bind(finish.now_ms)
        .bind(finish.run_at)
        .bind(finish.progress_percent)
        .bind(&finish.progress_message)
        .bind(&finish.id)
        .bind(to_i32(finish.attempt))
        .bind(&finish.node_id)
        .bind(finish.pid)
        .execute(&self.pool)
        .await?;
        Ok(outcome.rows_affected() == 1)
    }

    async fn job_requeue(&self, id: &str, attempt: u32) -> Result<bool, StoreError> {
        let outcome = sqlx::query(
            "UPDATE jobs SET status = 'pending', attempts = attempts - 1, started_at = NULL, node_id = NULL, \
                 process_state = NULL, pid = NULL, shim_token = NULL \
             WHERE id = $1 AND attempts = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(to_i32(attempt))
        .execute(&self.pool)
        .await?;
        Ok(outcome.rows_affected() == 1)
    }

    async fn job_retry(&self, id: &str, now_ms: i64) -> Result<RetryRequest, StoreError> {
        let sql = format!(
            "UPDATE jobs SET status = 'pending', run_at = $1, max_attempts = attempts + 1, completed_at = NULL, \
                 result = NULL, process_state = NULL, pid = NULL \
             WHERE id = $2 AND status IN ('failed', 'cancelled') RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(now_ms).bind(id).fetch_optional(&self.pool).await? {
            notify_jobs(&self.pool, &self.channels.jobs).await;
            return Ok(RetryRequest::Retried(job_from_row(&row)?));
        }
        match self.job_get(id).await? {
            Some(job) => Ok(RetryRequest::NotRetryable(job)),
            None => Ok(RetryRequest::NotFound),
        }
    }

    async fn job_counts(&self) -> Result<Vec<JobCount>, StoreError> {
        let rows = sqlx::query("SELECT name, status, COUNT(*) AS count FROM jobs GROUP BY name, status ORDER BY name, status")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let status: String = row.try_get("status")?;
            let status = JobStatus::from_str(&status).map_err(|message| StoreError::Corrupt { id: name.clone(), message })?;
            let count: i64 = row.try_get("count")?;
            counts.push(JobCount { name, status, count: count as u64 });
        }
        Ok(counts)
    }

    async fn jobs_purge(&self, statuses: &[JobStatus], before_ms: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        let finished: Vec<&str> = statuses.iter().filter(|s| s.is_finished()).map(|s| s.as_str()).collect();
        if finished.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE status = ANY($1) AND completed_at < $2 LIMIT $3) RETURNING id",
        )
        .bind(&finished)
        .bind(before_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM job_logs WHERE job_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn job_cancel_waiting(&self, id: &str, now_ms: i64) -> Result<CancelWaiting, StoreError> {
        let sql = format!(
            "UPDATE jobs SET status = 'cancelled', completed_at = $1 \
             WHERE id = $2 AND status IN ('pending', 'scheduled') RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(now_ms).bind(id).fetch_optional(&self.pool).await? {
            return Ok(CancelWaiting::Cancelled(job_from_row(&row)?));
        }
        match self.job_get(id).await? {
            Some(job) => Ok(CancelWaiting::NotWaiting(job)),
            None => Ok(CancelWaiting::NotFound),
        }
    }

    async fn jobs_live_flush(
        &self,
        node_id: Option<&str>,
        updates: &[LiveUpdate],
    ) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        // One statement for the whole batch, with the updates as parallel
        // arrays, instead of a round trip per running job.
        let ids: Vec<&str> = updates.iter().map(|update| update.id.as_str()).collect();
        let percents: Vec<Option<f64>> = updates.iter().map(|update| update.progress_percent).collect();
        let messages: Vec<Option<&str>> = updates.iter().map(|update| update.progress_message.as_deref()).collect();
        let heartbeats: Vec<Option<i64>> = updates.iter().map(|update| update.last_heartbeat).collect();
        let states: Vec<Option<&str>> = updates.iter().map(|update| update.process_state.map(ProcessState::as_str)).collect();
        let pids: Vec<Option<i64>> = updates.iter().map(|update| update.pid).collect();
        sqlx::query(
            "UPDATE jobs SET progress_percent = COALESCE(u.percent, jobs.progress_percent), \
                 progress_message = COALESCE(u.message, jobs.progress_message), \
                 last_heartbeat = COALESCE(u.heartbeat, jobs.last_heartbeat), \
                 process_state = COALESCE(u.state, jobs.process_state), \
                 pid = COALESCE(u.pid, jobs.pid) \
             FROM UNNEST($1::TEXT[], $2::DOUBLE PRECISION[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $7::BIGINT[]) \
                  AS u(id, percent, message, heartbeat, state, pid) \
             WHERE jobs.id = u.id AND jobs.status = 'running' AND ($6::TEXT IS NULL OR jobs.node_id = $6)",
        )
        .bind(&ids)
        .bind(&percents)
        .bind(&messages)
        .bind(&heartbeats)
        .bind(&states)
        .bind(node_id)
        .bind(&pids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn jobs_running(&self, node_id: &str) -> Result<Vec<Job>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE status = 'running' AND node_id = $1 ORDER BY started_at");
        let rows = sqlx::query(&sql).bind(node_id).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn close(&self) {
        PostgresStore::close(self).await;
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn listen(&self, notices: tokio::sync::mpsc::UnboundedSender<Notice>) -> Result<(), StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([self.channels.jobs.as_str(), self.channels.events.as_str(), self.channels.cancel.as_str()])
            .await?;
        let pool = self.pool.clone();
        let channels = self.channels.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        failing = false;
                        let channel = notification.channel();
                        let notice = if channel == channels.jobs {
                            Notice::JobsChanged
                        } else if channel == channels.cancel {
                            Notice::Cancel(notification.payload().to_string())
                        } else {
                            match notification.payload().strip_prefix("ref:").and_then(|id| id.parse::<i64>().ok()) {
                                Some(id) => match fetch_payload(&pool, id).await {
                                    Some(payload) => Notice::Event(payload),
                                    None => continue,
                                },
                                None => Notice::Event(notification.payload().to_string()),
                            }
                        };
                        if notices.send(notice).is_err() {
                            return;
                        }
                    }
                    // The connection was lost and re-established: whatever
                    // was announced meanwhile is gone.
                    Ok(None) => {
                        tracing::warn!("the PostgreSQL listening connection was re-established; polling for missed jobs");
                        if notices.send(Notice::Resync).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        if !failing {
                            tracing::error!(error = %err, "listening for PostgreSQL notifications failed; retrying");
                            failing = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn events_publish(&self, events: &[String]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // Notifications are delivered when the transaction commits, in order.
        let mut tx = self.pool.begin().await?;
        for event in events {
            let payload = if event.len() > NOTIFY_LIMIT {
                let id: i64 = sqlx::query_scalar("INSERT INTO event_payloads (payload, created_at) VALUES ($1, $2) RETURNING id")
                    .bind(event)
                    .bind(crate::clock::now_ms())
                    .fetch_one(&mut *tx)
                    .await?;
                format!("ref:{id}")
            } else {
                event.clone()
            };
            sqlx::query("SELECT pg_notify($1, $2)").bind(&self.channels.events).bind(payload).execute(&mut *tx).await?;
        }
        // Stored payloads older than a minute have been read by every live node.
        sqlx::query("DELETE FROM event_payloads WHERE created_at < $1")
            .bind(crate::clock::now_ms() - 60_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn node_lease_acquire(&self, node_id: &str, ttl: Duration) -> Result<i64, StoreError> {
        let generation = sqlx::query_scalar(
            "INSERT INTO nodes (id, generation, expires_at, healthy_since, fenced) \
             VALUES ($1, 1, now() + $2 * INTERVAL '1 millisecond', now(), FALSE) \
             ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at, healthy_since = now(), \
                 fenced = FALSE, renewed_at = now() \
             RETURNING generation",
        )
        .bind(node_id)
        .bind(millis(ttl))
        .fetch_one(&self.pool)
        .await?;
        Ok(generation)
    }

    async fn node_lease_renew(
        &self,
        node_id: &str,
        generation: i64,
        ttl: Duration,
        after_failure: bool,
    ) -> Result<LeaseRenewal, StoreError> {
        let outcome = sqlx::query(
            "UPDATE nodes SET expires_at = now() + $3 * INTERVAL '1 millisecond', renewed_at = now(), \
                 healthy_since = CASE WHEN $4 THEN now() ELSE healthy_since END \
             WHERE id = $1 AND generation = $2 AND NOT fenced",
        )
        .bind(node_id)
        .bind(generation)
        .bind(millis(ttl))
        .bind(after_failure)
        .execute(&self.pool)
        .await?;
        Ok(if outcome.rows_affected() == 1 {
            LeaseRenewal::Renewed
        } else {
            LeaseRenewal::Lost
        })
    }

    async fn nodes_rescue(
        &self,
        rescuer: &str,
        rescue_after: Duration,
    ) -> Result<Vec<RescuedJob>, StoreError> {
        // Fencing the dead nodes and taking their jobs is one statement, so
        // two rescuers never take the same node's jobs.
        let sql = format!(
            "WITH me AS ( \
                 SELECT 1 FROM nodes WHERE id = $1 AND NOT fenced AND expires_at > now() \
                     AND healthy_since <= now() - $2 * INTERVAL '1 millisecond' \
             ), dead AS ( \
                 UPDATE nodes SET generation = generation + 1, fenced = TRUE \
                 WHERE id <> $1 AND NOT fenced AND expires_at <= now() - $2 * INTERVAL '1 millisecond' \
                     AND EXISTS (SELECT 1 FROM me) \
                 RETURNING id AS dead_id \
             ) \
             UPDATE jobs SET node_id = $1 FROM dead WHERE status = 'running' AND node_id = dead.dead_id \
             RETURNING {COLUMNS}, dead.dead_id AS from_node"
        );
        let rows = sqlx::query(&sql)
            .bind(rescuer)
            .bind(millis(rescue_after))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RescuedJob {
                    job: job_from_row(row)?,
                    from_node: row.try_get("from_node")?,
                })
            })
            .collect()
    }

    async fn nodes_list(&self) -> Result<Vec<NodeLease>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.id, n.generation, (EXTRACT(EPOCH FROM n.expires_at) * 1000)::BIGINT AS expires_ms, \
                 n.expires_at > now() AS alive, n.fenced, \
                 (SELECT COUNT(*) FROM jobs j WHERE j.status = 'running' AND j.node_id = n.id) AS running \
             FROM nodes n ORDER BY n.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut nodes = Vec::with_capacity(rows.len());
        for row in rows {
            nodes.push(NodeLease {
                id: row.try_get("id")?,
                generation: row.try_get("generation")?,
                expires_at: row.try_get("expires_ms")?,
                alive: row.try_get("alive")?,
                fenced: row.try_get("fenced")?,
                running: row.try_get::<i64, _>("running")?.max(0) as u64,
            });
        }
        Ok(nodes)
    }

    async fn job_logs_append(&self, lines: &[JobLogLine], keep: u32) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = lines.iter().map(|line| line.job_id.as_str()).collect();
        let entries: Vec<&str> = lines.iter().map(|line| line.line.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO job_logs (job_id, entry) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])",
        )
        .bind(&ids)
        .bind(&entries)
        .execute(&mut *tx)
        .await?;
        let mut jobs: Vec<&str> = ids.clone();
        jobs.sort_unstable();
        jobs.dedup();
        for job in jobs {
            // Keep the newest `keep` lines: find the oldest line to keep
            // through the primary key, then delete what precedes it.
            sqlx::query(
                "DELETE FROM job_logs WHERE job_id = $1 AND seq < ( \
                     SELECT seq FROM job_logs WHERE job_id = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1)",
            )
            .bind(job)
            .bind(i64::from(keep.max(1)) - 1)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn job_logs_read(
        &self,
        job_id: &str,
        tail: Option<usize>,
    ) -> Result<Vec<String>, StoreError> {
        let tail = tail.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let lines = sqlx::query_scalar(
            "SELECT entry FROM (SELECT seq, entry FROM job_logs WHERE job_id = $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq",
        )
        .bind(job_id)
        .bind(tail)
        .fetch_all(&self.pool)
        .await?;
        Ok(lines)
    }

    async fn job_cancel_announce(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channels.cancel)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn job_next_run_at(&self, names: &[String]) -> Result<Option<i64>, StoreError> {
        if names.is_empty() {
            return Ok(None);
        }
        let next: Option<i64> = sqlx::query_scalar(NEXT_RUN_AT_SQL)
            .bind(names)
            .fetch_one(&self.pool)
            .await?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_named_per_schema() {
        assert_eq!(Channels::for_schema("public").jobs, "burro_jobs");
        assert_eq!(Channels::for_schema("tenant_7").events, "burro_events_tenant_7");
        let odd = Channels::for_schema("Tenant-X");
        assert_eq!(odd.cancel.len(), "burro_cancel_".len() + 16);
        assert_eq!(odd.cancel, Channels::for_schema("Tenant-X").cancel, "stable");
        assert_ne!(odd.jobs, Channels::for_schema("Tenant-Y").jobs);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://burro:secret@db:5432/jobs"), "postgres://burro:***@db:5432/jobs");
        assert_eq!(redact("postgres://burro@db/jobs"), "postgres://burro@db/jobs");
        assert_eq!(redact("postgres://db/jobs"), "postgres://db/jobs");
    }
}
