//! The SQLite store: one file in WAL mode.
//!
//! SQLite allows one writer at a time, so every write goes through one
//! connection on a thread of its own, with group commit (see `writer`), and
//! a burst of jobs queues there instead of failing with "database is
//! locked". Reads use a separate small pool. An acknowledged enqueue
//! survives a power cut because `synchronous = FULL`.

use super::*;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use rusqlite::types::ToSql;
use sqlx::{Row, SqlitePool};
use sqlx::Connection;
use std::str::FromStr;
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CONNECTIONS: u32 = 4;

mod writer;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// [`Store`] on an SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    /// Writer with group commit, which every write after the migrations
    /// goes through. A second writing connection would wait for the write
    /// lock between group transactions, for up to the busy timeout.
    writer: std::sync::Arc<writer::Writer>,
}

/// The statement that writes a batch of live updates, given as one JSON
/// array. The unary `+` keeps SQLite from driving the join with the status
/// index, which would parse the array again for every running job. The plan
/// walks the array instead and finds each job by its primary key.
const LIVE_FLUSH_SQL: &str = "UPDATE jobs SET progress_percent = COALESCE(u.percent, jobs.progress_percent), \
         progress_message = COALESCE(u.message, jobs.progress_message), \
         last_heartbeat = COALESCE(u.heartbeat, jobs.last_heartbeat), \
         process_state = COALESCE(u.state, jobs.process_state), \
         pid = COALESCE(u.pid, jobs.pid) \
     FROM (SELECT value ->> '$.id' AS id, value ->> '$.percent' AS percent, \
                  value ->> '$.message' AS message, value ->> '$.heartbeat' AS heartbeat, \
                  value ->> '$.state' AS state, value ->> '$.pid' AS pid FROM json_each(?)) AS u \
     WHERE jobs.id = u.id AND +jobs.status = 'running' AND (? IS NULL OR jobs.node_id = ?)";

/// Returns the query of the due jobs of `names` job names, in due order.
/// The waiting jobs are read through the partial index `jobs_waiting`, in
/// the order it keeps: left to itself, SQLite picks the index on `name`, and
/// then every claim reads every job of that name, finished ones included.
fn due_jobs_sql(names: usize) -> String {
    format!(
        "SELECT {COLUMNS} FROM jobs INDEXED BY jobs_waiting \
         WHERE status IN ('pending', 'scheduled') AND run_at <= ? AND name IN ({}) \
         ORDER BY run_at, id LIMIT ?",
        placeholders(names)
    )
}

/// Moves one claimed job to `running`. [`claim`] sets the same values on
/// the job it returns.
const CLAIM_ONE_SQL: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, node_id = ?, \
         completed_at = NULL, pid = NULL, last_heartbeat = NULL, shim_token = NULL, \
         progress_percent = NULL, progress_message = NULL, \
         process_state = CASE WHEN external = 1 THEN 'spawning' ELSE NULL END \
     WHERE id = ? AND status IN ('pending', 'scheduled')";

const INSERT_SQL: &str = "INSERT INTO jobs (id, name, data, status, attempts, max_attempts, created_at, run_at, external, timeout_ms) \
     VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?)";

const FINISH_SQL: &str = "UPDATE jobs SET status = ?, result = ?, error = ?, stack = ?, \
         completed_at = CASE WHEN ? THEN NULL ELSE ? END, \
         run_at = COALESCE(?, run_at), \
         progress_percent = COALESCE(?, progress_percent), \
         progress_message = COALESCE(?, progress_message), \
         pid = COALESCE(?, pid), process_state = NULL, shim_token = NULL \
     WHERE id = ? AND attempts = ? AND status = 'running' AND (? IS NULL OR node_id = ?)";

/// Returns the query for the earliest waiting job of `names` job names,
/// through `jobs_waiting` for the same reason as [`due_jobs_sql`].
fn next_run_at_sql(names: usize) -> String {
    format!(
        "SELECT MIN(run_at) FROM jobs INDEXED BY jobs_waiting WHERE status IN ('pending', 'scheduled') AND name IN ({})",
        placeholders(names)
    )
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`)
    /// and runs pending migrations.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when the URL is invalid, the file cannot be
    /// opened, or a migration fails.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).ok_or_else(|| StoreError::Url {
            url: url.to_string(),
            message: "expected sqlite://PATH".into(),
        })?;
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::Url {
                url: url.to_string(),
                message: err.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // sqlx percent-decodes the path, so its filename is the file to use.
        let target = writer::Target::new(path, options.get_filename());
        if let Some(parent) = target.directory() {
            std::fs::create_dir_all(parent).map_err(|err| StoreError::Url {
                url: url.to_string(),
                message: format!("creating directory {} failed: {err}", parent.display()),
            })?;
        }
        // The migrations run on a connection of their own. It closes only
        // after the writer has opened, because a shared in-memory database
        // lasts as long as a connection to it.
        let mut migrations = sqlx::SqliteConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut migrations).await?;
        let writer = std::sync::Arc::new(writer::Writer::open(target, BUSY_TIMEOUT).await?);
        migrations.close().await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { reader, writer })
    }

    /// Commits the queued writes and closes the connections.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

const COLUMNS: &str = "id, name, data, status, attempts, max_attempts, created_at, run_at, started_at, completed_at, \
    result, error, stack, progress_percent, progress_message, external, pid, process_state, last_heartbeat, \
    timeout_ms, node_id, shim_token";

/// The names in [`COLUMNS`], in its order. Rows of the writer are read by
/// position: rusqlite finds a column by name with a case-insensitive scan
/// of every column name, which a profile of S3 showed at about 4 % of the
/// writer thread.
const COLUMN_NAMES: [&str; 22] = [
    "id",
    "name",
    "data",
    "status",
    "attempts",
    "max_attempts",
    "created_at",
    "run_at",
    "started_at",
    "completed_at",
    "result",
    "error",
    "stack",
    "progress_percent",
    "progress_message",
    "external",
    "pid",
    "process_state",
    "last_heartbeat",
    "timeout_ms",
    "node_id",
    "shim_token",
];

/// A row of either driver: the reader pool's (sqlx) or the writer
/// thread's (rusqlite).
trait Columns {
    fn column<T>(&self, name: &str) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + rusqlite::types::FromSql;
}

impl Columns for SqliteRow {
    fn column<T>(&self, name: &str) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + rusqlite::types::FromSql,
    {
        Ok(self.try_get(name)?)
    }
}

/// A row of a statement that returns [`COLUMNS`], read by position.
struct JobRow<'a, 'stmt>(&'a rusqlite::Row<'stmt>);

impl Columns for JobRow<'_, '_> {
    fn column<T>(&self, name: &str) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + rusqlite::types::FromSql,
    {
        match COLUMN_NAMES.iter().position(|column| *column == name) {
            Some(index) => Ok(self.0.get(index)?),
            None => Ok(self.0.get(name)?),
        }
    }
}

fn job_from_row(row: &impl Columns) -> Result<Job, StoreError> {
    let id: String = row.column("id")?;
    let corrupt = |message: String| StoreError::Corrupt { id: id.clone(), message };
    let data_text: String = row.column("data")?;
    let data = serde_json::from_str(&data_text).map_err(|e| corrupt(format!("data is not JSON: {e}")))?;
    let result_text: Option<String> = row.column("result")?;
    let result = result_text
        .map(|text| serde_json::from_str::<Value>(&text))
        .transpose()
        .map_err(|e| corrupt(format!("result is not JSON: {e}")))?;
    let status_text: String = row.column("status")?;
    let status = JobStatus::from_str(&status_text).map_err(corrupt)?;
    let process_state: Option<String> = row.column("process_state")?;
    Ok(Job {
        id: id.clone(),
        name: row.column("name")?,
        data,
        status,
        attempts: row.column::<i64>("attempts")? as u32,
        max_attempts: row.column::<i64>("max_attempts")? as u32,
        created_at: row.column("created_at")?,
        run_at: row.column("run_at")?,
        started_at: row.column("started_at")?,
        completed_at: row.column("completed_at")?,
        result,
        error: row.column("error")?,
        stack: row.column("stack")?,
        progress_percent: row.column("progress_percent")?,
        progress_message: row.column("progress_message")?,
        external: row.column::<i64>("external")? != 0,
        pid: row.column("pid")?,
        process_state: process_state.as_deref().and_then(ProcessState::parse),
        last_heartbeat: row.column("last_heartbeat")?,
        timeout_ms: row.column("timeout_ms")?,
        node_id: row.column("node_id")?,
        shim_token: row.column("shim_token")?,
    })
}

/// Runs `sql` on the writer's connection and decodes every row it returns
/// as a job.
fn jobs_returned(conn: &rusqlite::Connection, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Job>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next()? {
        jobs.push(job_from_row(&JobRow(row))?);
    }
    Ok(jobs)
}

/// Inserts `job` on the writer's connection and returns its row, built
/// from the values written. Without `RETURNING`, SQLite needs no temporary
/// table for the statement.
fn insert(conn: &rusqlite::Connection, job: &NewJob) -> Result<Job, StoreError> {
    let data = job.data.to_string();
    let params: [&dyn ToSql; 9] = [
        &job.id,
        &job.name,
        &data,
        &job.status.as_str(),
        &job.max_attempts,
        &job.created_at,
        &job.run_at,
        &job.external,
        &job.timeout_ms,
    ];
    rows_changed(conn, INSERT_SQL, &params)?;
    Ok(Job {
        id: job.id.clone(),
        name: job.name.clone(),
        data: job.data.clone(),
        status: job.status,
        attempts: 0,
        max_attempts: job.max_attempts,
        created_at: job.created_at,
        run_at: job.run_at,
        started_at: None,
        completed_at: None,
        result: None,
        error: None,
        stack: None,
        progress_percent: None,
        progress_message: None,
        external: job.external,
        pid: None,
        process_state: None,
        last_heartbeat: None,
        timeout_ms: job.timeout_ms,
        node_id: None,
        shim_token: None,
    })
}

/// Claims due jobs on the writer's connection, in due order. The single
/// writer connection runs the read and the updates in one transaction, so
/// no two claims can return the same job. A read followed by updates by
/// primary key costs SQLite less than one `UPDATE ... WHERE id IN (...)
/// RETURNING`, which builds two temporary tables.
///
/// A failed claim changes nothing, so callers need no savepoint of their
/// own: one claimed job is one `UPDATE`, which SQLite undoes by itself when
/// it fails, and several run in a savepoint.
fn claim(conn: &rusqlite::Connection, request: &ClaimRequest) -> Result<Vec<Job>, StoreError> {
    if request.names.is_empty() || request.limit == 0 {
        return Ok(Vec::new());
    }
    let mut params: Vec<&dyn ToSql> = vec![&request.now_ms];
    params.extend(request.names.iter().map(|name| name as &dyn ToSql));
    params.push(&request.limit);
    let mut jobs = jobs_returned(conn, &due_jobs_sql(request.names.len()), &params)?;
    if jobs.len() > 1 {
        conn.prepare_cached("SAVEPOINT claim")?.execute([])?;
        if let Err(err) = mark_claimed(conn, request, &mut jobs) {
            let _ = conn.execute_batch("ROLLBACK TO claim; RELEASE claim");
            return Err(err);
        }
        // The claimed rows are committed with the transaction even if the
        // release fails, so the jobs are returned either way.
        if let Err(err) = conn.prepare_cached("RELEASE claim").and_then(|mut release| release.execute([])) {
            tracing::warn!(error = %err, "releasing the claim's savepoint failed");
        }
    } else {
        mark_claimed(conn, request, &mut jobs)?;
    }
    sort_due_order(&mut jobs);
    Ok(jobs)
}

/// Moves the waiting `jobs` to `running`, one `UPDATE` each, and sets the
/// same values on them.
fn mark_claimed(conn: &rusqlite::Connection, request: &ClaimRequest, jobs: &mut [Job]) -> Result<(), StoreError> {
    let mut update = conn.prepare_cached(CLAIM_ONE_SQL)?;
    for job in jobs {
        let changed = update.execute(rusqlite::params![request.now_ms, request.node_id, job.id])?;
        if changed != 1 {
            return Err(StoreError::Corrupt {
                id: job.id.clone(),
                message: format!("claiming the waiting job changed {changed} rows"),
            });
        }
        job.status = JobStatus::Running;
        job.attempts += 1;
        job.started_at = Some(request.now_ms);
        job.node_id = Some(request.node_id.clone());
        job.completed_at = None;
        job.pid = None;
        job.last_heartbeat = None;
        job.shim_token = None;
        job.progress_percent = None;
        job.progress_message = None;
        job.process_state = job.external.then_some(ProcessState::Spawning);
    }
    Ok(())
}

/// Ends an attempt of a running job on the writer's connection. Returns
/// false when the job is no longer running in that attempt.
fn finish(conn: &rusqlite::Connection, finish: &JobFinish) -> Result<bool, StoreError> {
    let retrying = finish.status == JobStatus::Scheduled;
    let result = finish.result.as_ref().map(Value::to_string);
    let changed = rows_changed(
        conn,
        FINISH_SQL,
        &[
            &finish.status.as_str(),
            &result,
            &finish.error,
            &finish.stack,
            &retrying,
            &finish.now_ms,
            &finish.run_at,
            &finish.progress_percent,
            &finish.progress_message,
            &finish.pid,
            &finish.id,
            &finish.attempt,
            &finish.node_id,
            &finish.node_id,
        ],
    )?;
    Ok(changed == 1)
}

/// Runs `sql` on the writer's connection and returns the number of rows it changed.
fn rows_changed(conn: &rusqlite::Connection, sql: &str, params: &[&dyn ToSql]) -> Result<usize, StoreError> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

#[async_trait]
impl Store for SqliteStore {
    async fn job_insert(&self, job: &NewJob) -> Result<Job, StoreError> {
        let job = job.clone();
        // The returned row contains only the values just written, so its
        // decoding cannot fail after the insert.
        self.writer.write_statement(move |conn| insert(conn, &job)).await
    }

    async fn job_insert_claim(&self, job: &NewJob, claim: &ClaimRequest) -> Result<(Job, Vec<Job>), StoreError> {
        let (job, claim) = (job.clone(), claim.clone());
        // A failed claim changes nothing and leaves the insert recorded;
        // the dispatcher claims the jobs later.
        self.writer
            .write_statement(move |conn| {
                let inserted = insert(conn, &job)?;
                let claimed = self::claim(conn, &claim).unwrap_or_else(|err| {
                    tracing::warn!(job_id = %inserted.id, error = %err, "claiming jobs after an insert failed; the dispatcher claims them later");
                    Vec::new()
                });
                Ok((inserted, claimed))
            })
            .await
    }

    async fn job_get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.reader).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn job_list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        let mut filter = String::from("WHERE 1 = 1");
        if query.status.is_some() {
            filter.push_str(" AND status = ?");
        }
        if query.name.is_some() {
            filter.push_str(" AND name = ?");
        }
        let count_sql = format!("SELECT COUNT(*) FROM jobs {filter}");
        if query.after.is_some() {
            filter.push_str(" AND (created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?)");
        }
        let list_sql = format!("SELECT {COLUMNS} FROM jobs {filter} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?");

        let mut list = sqlx::query(&list_sql);
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
        if let Some(status) = query.status {
            list = list.bind(status.as_str());
            count = count.bind(status.as_str());
        }
        if let Some(name) = &query.name {
            list = list.bind(name.clone());
            count = count.bind(name.clone());
        }
        if let Some(after) = &query.after {
            list = list.bind(after.clone());
        }
        let rows = list
            .bind(i64::from(query.limit))
            .bind(i64::from(query.offset))
            .fetch_all(&self.reader)
            .await?;
        let total = count.fetch_one(&self.reader).await?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(JobPage { jobs, total: total as u64 })
    }

    async fn job_claim(&self, claim: &ClaimRequest) -> Result<Vec<Job>, StoreError> {
        let claim = claim.clone();
        self.writer.write_statement(move |conn| self::claim(conn, &claim)).await
    }

    async fn job_finish(&self, finish: &JobFinish) -> Result<bool, StoreError> {
        let finish = finish.clone();
        self.writer.write_statement(move |conn| self::finish(conn, &finish)).await
    }

    async fn job_finish_claim(&self, finish: &JobFinish, claim: &ClaimRequest) -> Result<(bool, Vec<Job>), StoreError> {
        let (finish, claim) = (finish.clone(), claim.clone());
        // The end is one statement, which SQLite undoes by itself when it
        // fails, and a failed claim changes nothing, so the end stays
        // recorded whatever the claim does.
        self.writer
            .write_statement(move |conn| {
                let finished = self::finish(conn, &finish)?;
                let claimed = self::claim(conn, &claim).unwrap_or_else(|err| {
                    tracing::warn!(job_id = %finish.id, error = %err, "claiming jobs after a job's end failed; the dispatcher claims them later");
                    Vec::new()
                });
                Ok((finished, claimed))
            })
            .await
    }

    async fn job_requeue(&self, id: &str, attempt: u32) -> Result<bool, StoreError> {
        let id = id.to_string();
        let changed = self
            .writer
            .write_statement(move |conn| {
                rows_changed(
                    conn,
                    "UPDATE jobs SET status = 'pending', attempts = attempts - 1, started_at = NULL, node_id = NULL, \
                         process_state = NULL, pid = NULL, shim_token = NULL \
                     WHERE id = ? AND attempts = ? AND status = 'running'",
                    &[&id, &attempt],
                )
            })
            .await?;
        Ok(changed == 1)
    }

    async fn job_retry(&self, id: &str, now_ms: i64) -> Result<RetryRequest, StoreError> {
        let sql = format!(
            "UPDATE jobs SET status = 'pending', run_at = ?, max_attempts = attempts + 1, completed_at = NULL, \
                 result = NULL, process_state = NULL, pid = NULL \
             WHERE id = ? AND status IN ('failed', 'cancelled') RETURNING {COLUMNS}"
        );
        let owned_id = id.to_string();
        let retried = self.writer.write(move |conn| jobs_returned(conn, &sql, &[&now_ms, &owned_id])).await?;
        if let Some(job) = retried.into_iter().next() {
            return Ok(RetryRequest::Retried(job));
        }
        // Nothing was written, so the reader sees the job as it is.
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?");
        match sqlx::query(&sql).bind(id).fetch_optional(&self.reader).await? {
            Some(row) => Ok(RetryRequest::NotRetryable(job_from_row(&row)?)),
            None => Ok(RetryRequest::NotFound),
        }
    }

    async fn job_counts(&self) -> Result<Vec<JobCount>, StoreError> {
        let rows = sqlx::query("SELECT name, status, COUNT(*) AS count FROM jobs GROUP BY name, status ORDER BY name, status")
            .fetch_all(&self.reader)
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
        let sql = format!(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE status IN ({}) AND completed_at < ? LIMIT ?) RETURNING id",
            placeholders(finished.len())
        );
        self.writer
            .write(move |conn| {
                let mut params: Vec<&dyn ToSql> = finished.iter().map(|status| status as &dyn ToSql).collect();
                params.push(&before_ms);
                params.push(&limit);
                let mut statement = conn.prepare_cached(&sql)?;
                let ids = statement.query_map(params.as_slice(), |row| row.get::<_, String>(0))?;
                Ok(ids.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    async fn job_cancel_waiting(&self, id: &str, now_ms: i64) -> Result<CancelWaiting, StoreError> {
        let sql = format!(
            "UPDATE jobs SET status = 'cancelled', completed_at = ? \
             WHERE id = ? AND status IN ('pending', 'scheduled') RETURNING {COLUMNS}"
        );
        let owned_id = id.to_string();
        let cancelled = self.writer.write(move |conn| jobs_returned(conn, &sql, &[&now_ms, &owned_id])).await?;
        if let Some(job) = cancelled.into_iter().next() {
            return Ok(CancelWaiting::Cancelled(job));
        }
        // Nothing was written, and every acknowledged write is committed,
        // so the reader sees the job as it is.
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?");
        match sqlx::query(&sql).bind(id).fetch_optional(&self.reader).await? {
            Some(row) => Ok(CancelWaiting::NotWaiting(job_from_row(&row)?)),
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
        // One statement for the whole batch: thousands of running jobs
        // heartbeat every few seconds, and a statement per job would cost a
        // round trip to the database thread each.
        let rows: Vec<serde_json::Value> = updates
            .iter()
            .map(|update| {
                serde_json::json!({
                    "id": update.id,
                    "percent": update.progress_percent,
                    "message": update.progress_message,
                    "heartbeat": update.last_heartbeat,
                    "state": update.process_state.map(ProcessState::as_str),
                    "pid": update.pid,
                })
            })
            .collect();
        let batch = serde_json::Value::Array(rows).to_string();
        let node_id = node_id.map(String::from);
        self.writer
            .write_statement(move |conn| rows_changed(conn, LIVE_FLUSH_SQL, &[&batch, &node_id, &node_id]))
            .await?;
        Ok(())
    }

    async fn jobs_running(&self, node_id: &str) -> Result<Vec<Job>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE status = 'running' AND node_id = ? ORDER BY started_at");
        let rows = sqlx::query(&sql).bind(node_id).fetch_all(&self.reader).await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn job_next_run_at(&self, names: &[String]) -> Result<Option<i64>, StoreError> {
        if names.is_empty() {
            return Ok(None);
        }
        let sql = next_run_at_sql(names.len());
        let mut query = sqlx::query_scalar::<_, Option<i64>>(&sql);
        for name in names {
            query = query.bind(name);
        }
        Ok(query.fetch_one(&self.reader).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_follow_columns() {
        assert_eq!(COLUMN_NAMES.join(", "), COLUMNS);
    }

    #[tokio::test]
    async fn live_flush_finds_jobs_by_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {LIVE_FLUSH_SQL}"))
            .bind("[]")
            .bind(None::<String>)
            .bind(None::<String>)
            .fetch_all(&store.reader)
            .await
            .unwrap();
        let details: Vec<&str> = rows.iter().map(|row| row.3.as_str()).collect();
        assert_eq!(details.len(), 2, "plan: {details:?}");
        assert!(details[0].starts_with("SCAN json_each"), "plan: {details:?}");
        assert!(details[1].contains("jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"), "plan: {details:?}");
    }

    async fn plan(store: &SqliteStore, sql: &str, binds: &[i64]) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for value in binds {
            query = query.bind(*value);
        }
        query.fetch_all(&store.reader).await.unwrap().into_iter().map(|row| row.3).collect()
    }

    #[tokio::test]
    async fn claim_reads_only_waiting_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let store = SqliteStore::open(&url).await.unwrap();

        let claim = plan(&store, &due_jobs_sql(2), &[0, 0, 0, 1]).await;
        assert!(claim.iter().any(|step| step.contains("USING INDEX jobs_waiting")), "claim plan: {claim:?}");
        assert!(!claim.iter().any(|step| step.contains("jobs_name_created")), "claim plan: {claim:?}");
        assert!(!claim.iter().any(|step| step.contains("TEMP B-TREE")), "claim plan: {claim:?}");

        let next = plan(&store, &next_run_at_sql(2), &[0, 0]).await;
        assert!(next.iter().any(|step| step.contains("USING INDEX jobs_waiting")), "next run plan: {next:?}");
        assert!(!next.iter().any(|step| step.contains("jobs_name_created")), "next run plan: {next:?}");
    }

    #[tokio::test]
    async fn job_row_writes_build_no_temporary_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        let store = SqliteStore::open(&format!("sqlite://{}", path.display())).await.unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in [INSERT_SQL, FINISH_SQL, CLAIM_ONE_SQL] {
            let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let mut rows = explain.raw_query();
            let mut opcodes = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                opcodes.push(row.get::<_, String>(1).unwrap());
            }
            assert!(opcodes.iter().any(|op| op == "OpenWrite"), "no write in the program of {sql}: {opcodes:?}");
            assert!(!opcodes.iter().any(|op| op == "OpenEphemeral"), "{sql} builds a temporary table: {opcodes:?}");
        }
        drop(store);
    }

    #[tokio::test]
    async fn rebuilt_jobs_table_keeps_rows_and_checks() {
        // A database made by the first two migrations, with one job in it.
        let dir = tempfile::tempdir().unwrap();
        let early = dir.path().join("early");
        std::fs::create_dir(&early).unwrap();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for file in ["0001_jobs.sql", "0002_finished_index.sql"] {
            std::fs::copy(migrations.join(file), early.join(file)).unwrap();
        }
        let path = dir.path().join("old.db");
        let url = format!("sqlite://{}", path.display());
        {
            let options = SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
            sqlx::migrate::Migrator::new(early.as_path()).await.unwrap().run(&mut conn).await.unwrap();
            sqlx::query(
                "INSERT INTO jobs (id, name, data, status, attempts, max_attempts, created_at, run_at, completed_at, result, external) \
                 VALUES ('old', 'resize', '{\"w\":1}', 'completed', 1, 3, 10, 10, 20, '7', 1)",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
        }

        let store = SqliteStore::open(&url).await.unwrap();
        let job = store.job_get("old").await.unwrap().expect("the job survives the rebuild");
        assert_eq!((job.status, job.attempts, job.completed_at), (JobStatus::Completed, 1, Some(20)));
        assert_eq!(job.data, serde_json::json!({"w": 1}));
        assert_eq!(job.result, Some(serde_json::json!(7)));
        assert!(job.external);

        let conn = rusqlite::Connection::open(&path).unwrap();
        let bad = conn.execute("UPDATE jobs SET status = 'done' WHERE id = 'old'", []);
        assert!(bad.is_err(), "the CHECK on status must still hold");
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["jobs_created", "jobs_name_created", "jobs_status_created", "jobs_waiting"]);
    }
}
