//! Group commit for the SQLite store.
//!
//! With `synchronous = FULL`, every committed transaction costs one fsync of
//! the write-ahead log, and the fsync dominates a small write. The group
//! writer runs each write in a savepoint of a shared transaction on one
//! dedicated connection. A committer task commits that transaction as soon
//! as the writes queued before it have run, so writes that arrive together
//! share one fsync. Each caller waits until the transaction holding its
//! write is committed, so a write is durable when its call returns, exactly
//! as with one transaction per write.

use crate::store::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Executor};
use std::sync::Arc;
use tokio::sync::{watch, Mutex, MutexGuard, Notify};

/// Outcome of one group transaction: `None` while it is open, then the
/// commit's error message or `Ok`.
type Outcome = Option<Result<(), Arc<str>>>;

struct State {
    conn: SqliteConnection,
    /// The open transaction's outcome channel; `None` outside a transaction.
    open: Option<watch::Sender<Outcome>>,
    /// True from a caller's savepoint until its [`Turn::finish`], so still
    /// true at the next turn when that caller was dropped in between.
    savepoint_left_open: bool,
}

/// The single writer connection with group commit.
pub(crate) struct GroupWriter {
    state: Arc<Mutex<State>>,
    commit_due: Arc<Notify>,
}

/// One caller's turn on the writer connection. Run the write on
/// [`Turn::conn`], then pass its result to [`Turn::finish`].
pub(crate) struct Turn<'a> {
    guard: MutexGuard<'a, State>,
    outcome: watch::Receiver<Outcome>,
}

impl GroupWriter {
    /// Opens the dedicated connection and starts the committer task.
    pub async fn open(options: &SqliteConnectOptions) -> Result<Self, StoreError> {
        let conn = SqliteConnection::connect_with(options).await?;
        let state = Arc::new(Mutex::new(State {
            conn,
            open: None,
            savepoint_left_open: false,
        }));
        let commit_due = Arc::new(Notify::new());
        tokio::spawn(committer(Arc::downgrade(&state), commit_due.clone()));
        Ok(GroupWriter { state, commit_due })
    }

    /// Waits for the connection, opens a group transaction when none is
    /// open, and starts a savepoint for this caller's write.
    pub async fn turn(&self) -> Result<Turn<'_>, StoreError> {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        undo_dropped_write(state).await?;
        if state.open.is_none() {
            // IMMEDIATE takes the write lock now, waiting up to the busy
            // timeout for another connection's write to end. Both statements
            // go to the connection's thread in one round trip.
            if let Err(err) = state.conn.execute("BEGIN IMMEDIATE; SAVEPOINT write").await {
                // No transaction may stay open that the committer does not know of.
                let _ = state.conn.execute("ROLLBACK").await;
                return Err(err.into());
            }
            state.open = Some(watch::channel(None).0);
            self.commit_due.notify_one();
        } else {
            state.conn.execute("SAVEPOINT write").await?;
        }
        // Savepoints of successful writes are not released one by one: the
        // commit releases them all, which saves a round trip per write.
        state.savepoint_left_open = true;
        let outcome = state.open.as_ref().expect("an open transaction").subscribe();
        Ok(Turn { guard, outcome })
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        // Wakes the committer, which then finds the state gone and ends.
        self.commit_due.notify_one();
    }
}

impl Turn<'_> {
    /// Returns the connection, inside this caller's savepoint.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.guard.conn
    }

    /// Keeps the write when it succeeded and undoes it when it failed, lets
    /// the next caller in, and waits until the write is committed.
    pub async fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        let state = &mut *self.guard;
        state.savepoint_left_open = false;
        if result.is_err() {
            // ROLLBACK TO undoes this write and keeps the earlier ones. It
            // fails when SQLite has already rolled back the whole transaction
            // (after an I/O error, for example), and then every write in it
            // has failed.
            if let Err(err) = state.conn.execute("ROLLBACK TO write").await {
                tracing::error!(error = %err, "a failed SQLite write ended its group transaction; the writes in it are rolled back");
                let _ = state.conn.execute("ROLLBACK").await;
                if let Some(open) = state.open.take() {
                    open.send_replace(Some(Err(Arc::from(err.to_string()))));
                }
            }
        }
        drop(self.guard);
        let value = result?;

        let outcome = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| io_error("the SQLite writer stopped before committing the write".into()))?
            .clone();
        match outcome {
            Some(Err(message)) => Err(io_error(format!("committing the write failed: {message}"))),
            _ => Ok(value),
        }
    }
}

/// Undoes the write of a caller that was dropped inside its savepoint. That
/// caller never learned whether its write was stored, so it is not stored.
async fn undo_dropped_write(state: &mut State) -> Result<(), sqlx::Error> {
    if state.savepoint_left_open {
        state.conn.execute("ROLLBACK TO write").await?;
        state.savepoint_left_open = false;
    }
    Ok(())
}

fn io_error(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(message)))
}

/// Commits the open transaction whenever one is due. The lock is fair, so
/// every caller that queued before the committer writes into the same
/// transaction first.
async fn committer(state: std::sync::Weak<Mutex<State>>, commit_due: Arc<Notify>) {
    loop {
        commit_due.notified().await;
        let Some(state) = state.upgrade() else { return };
        let mut guard = state.lock().await;
        let state = &mut *guard;
        let Some(open) = state.open.take() else { continue };
        if let Err(err) = undo_dropped_write(state).await {
            tracing::warn!(error = %err, "undoing the write of a cancelled caller failed");
        }
        let outcome = match state.conn.execute("COMMIT").await {
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::error!(error = %err, "committing a group of SQLite writes failed; the writes are rolled back");
                // The transaction may still be open after a failed COMMIT.
                let _ = state.conn.execute("ROLLBACK").await;
                Err(Arc::from(err.to_string()))
            }
        };
        open.send_replace(Some(outcome));
    }
}
