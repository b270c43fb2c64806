//! The SQLite writer: one connection on a thread of its own, with group
//! commit.
//!
//! With `synchronous = FULL`, every committed transaction costs one fsync of
//! the write-ahead log, and the fsync dominates a small write. The writer
//! thread takes the writes queued on its channel and runs them in one
//! transaction, each of several statements in a savepoint of its own. It
//! commits when the queue is empty (or after [`MAX_BATCH`] writes), so writes
//! that arrive together share one fsync. A caller's call returns after the
//! commit of the transaction that contains its write, so a write is durable
//! when its call returns, exactly as with one transaction per write.
//!
//! Statements run on the thread itself. Through an async driver, every
//! statement and every commit is a round trip between a runtime thread and
//! the driver's thread, and waking a thread costs tens of microseconds on a
//! virtual machine. Here a write costs one wakeup each way, however many
//! statements it runs.

use crate::store::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Maximum number of writes in one transaction, so a long queue still
/// commits now and then and its first callers do not wait for all of it.
const MAX_BATCH: usize = 512;

/// Prepared statements kept per connection. The claim statement has one
/// form per number of job names, so there are more than a handful.
const STATEMENT_CACHE: usize = 64;

/// The outcome of a transaction's commit, handed to every write in it.
type CommitOutcome = Result<(), Arc<str>>;

/// The last step of a write, run once its transaction ends: sending the
/// commit's outcome to its caller.
type Completion = Box<dyn FnOnce(CommitOutcome) + Send>;

/// A queued write. It receives the connection inside an open transaction,
/// or the reason no transaction could be opened.
type Write = Box<dyn FnOnce(Result<&Connection, Arc<str>>) -> Option<Completion> + Send>;

enum Request {
    Write(Write),
    /// Commits what is queued before it, then ends the thread.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    requests: mpsc::Sender<Request>,
}

impl Writer {
    /// Opens the database of `target` on a new writer thread. The database
    /// and its tables exist already.
    pub async fn open(target: Target, busy_timeout: Duration) -> Result<Self, StoreError> {
        let (requests, queue) = mpsc::channel();
        let (opened_tx, opened) = oneshot::channel();
        std::thread::Builder::new()
            .name("burro-sqlite-writer".into())
            .spawn(move || match open_connection(&target, busy_timeout) {
                Ok(conn) => {
                    let _ = opened_tx.send(Ok(()));
                    let closed = serve(&conn, &queue);
                    // Writes sent from now on fail at once with "closed".
                    drop(queue);
                    drop(conn);
                    if let Some(done) = closed {
                        let _ = done.send(());
                    }
                }
                Err(err) => {
                    let _ = opened_tx.send(Err(err));
                }
            })
            .map_err(|err| io_error(format!("starting the SQLite writer thread failed: {err}")))?;
        opened
            .await
            .map_err(|_| io_error("the SQLite writer thread ended while opening the database".into()))?
            .map_err(|err| io_error(format!("opening the SQLite writer connection failed: {err}")))?;
        Ok(Writer { requests })
    }

    /// Runs `write` in its own savepoint on the writer thread and returns
    /// its value once the transaction holding it is committed. A write that
    /// fails is undone and the other writes of its transaction are kept. A
    /// caller dropped before its write runs writes nothing; one dropped
    /// later may still have its write committed.
    pub async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(true, write).await
    }

    /// Runs `write` like [`Writer::write`] but without a savepoint, because
    /// SQLite undoes a failed statement by itself. The caller's `write` must
    /// not return an error once one of its statements has changed the
    /// database, since nothing would undo that change.
    pub async fn write_statement<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(false, write).await
    }

    async fn queue<T, F>(&self, savepoint: bool, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, response) = oneshot::channel::<Result<T, StoreError>>();
        let queued: Write = Box::new(move |conn| {
            if reply.is_closed() {
                return None;
            }
            let conn = match conn {
                Ok(conn) => conn,
                Err(reason) => {
                    let _ = reply.send(Err(io_error(format!("starting an SQLite transaction failed: {reason}"))));
                    return None;
                }
            };
            if savepoint {
                if let Err(err) = run_cached(conn, "SAVEPOINT write") {
                    let _ = reply.send(Err(err.into()));
                    return None;
                }
            }
            let written = write(conn).and_then(|value| {
                if savepoint {
                    run_cached(conn, "RELEASE write")?;
                }
                Ok(value)
            });
            match written {
                Ok(value) => Some(Box::new(move |outcome: CommitOutcome| {
                    let _ = reply.send(outcome.map(|()| value).map_err(|message| io_error(format!("committing the write failed: {message}"))));
                })),
                Err(err) => {
                    // When SQLite has already rolled back the whole
                    // transaction (after an I/O error, say), this fails, and
                    // the thread finds the transaction gone before the next write.
                    if savepoint {
                        let _ = conn.execute_batch("ROLLBACK TO write; RELEASE write");
                    }
                    let _ = reply.send(Err(err));
                    None
                }
            }
        });
        self.requests
            .send(Request::Write(queued))
            .map_err(|_| io_error("the SQLite writer is closed".into()))?;
        response
            .await
            .map_err(|_| io_error("the SQLite writer closed before it replied to the write".into()))?
    }

    /// Commits the writes queued so far and ends the writer thread. Later
    /// writes fail.
    pub async fn close(&self) {
        let (done_tx, done) = oneshot::channel();
        if self.requests.send(Request::Close(done_tx)).is_ok() {
            let _ = done.await;
        }
    }
}

/// The database the writer opens: the file, or the shared in-memory
/// database, that sqlx opened for the same URL.
pub(crate) struct Target {
    /// An SQLite URI filename.
    uri: String,
    in_memory: bool,
    file: Option<std::path::PathBuf>,
}

impl Target {
    /// Builds the target from the part of a `sqlite://` URL after the
    /// scheme, `PATH[?OPTIONS]`, and the filename sqlx made of it.
    pub fn new(path_and_options: &str, sqlx_filename: &Path) -> Self {
        let (path, options) = match path_and_options.split_once('?') {
            Some((path, options)) => (path, Some(options)),
            None => (path_and_options, None),
        };
        if path == ":memory:" {
            // sqlx names the database `file:sqlx-in-memory-N` and opens it
            // with a shared cache, so connections of one URL share it.
            return Target {
                uri: sqlx_filename.to_string_lossy().into_owned(),
                in_memory: true,
                file: None,
            };
        }
        let in_memory = options.is_some_and(|options| options.split('&').any(|option| option == "mode=memory"));
        // In a URI filename, `%` starts an escape, `?` the options and `#` a fragment.
        let decoded = sqlx_filename.to_string_lossy();
        let mut uri = format!("file:{}", decoded.replace('%', "%25").replace('?', "%3F").replace('#', "%23"));
        if let Some(options) = options {
            uri.push('?');
            uri.push_str(options);
        }
        Target {
            uri,
            in_memory,
            file: (!in_memory).then(|| sqlx_filename.to_path_buf()),
        }
    }

    /// Returns the directory of the database file, if it is a file in one.
    pub fn directory(&self) -> Option<&Path> {
        self.file.as_deref().and_then(Path::parent).filter(|parent| !parent.as_os_str().is_empty())
    }
}

fn open_connection(target: &Target, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    // CREATE only permits `mode=rwc`: the migrations created the file already.
    let mut flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
        | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    if target.in_memory {
        flags |= rusqlite::OpenFlags::SQLITE_OPEN_MEMORY | rusqlite::OpenFlags::SQLITE_OPEN_SHARED_CACHE;
    }
    let conn = Connection::open_with_flags(&target.uri, flags)?;
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Runs the writer thread's loop: waits for a write, runs it and every
/// write queued behind it in one transaction, commits, and replies to their
/// callers. Returns the reply channel of a close request, which the thread
/// replies to once the queue and the connection are gone.
fn serve(conn: &Connection, queue: &mpsc::Receiver<Request>) -> Option<oneshot::Sender<()>> {
    let mut pending: Vec<Completion> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        let mut closing = None;
        let mut ran = 0;
        while let Some(request) = next.take() {
            match request {
                Request::Write(write) => {
                    let opened = ensure_transaction(conn, &mut pending);
                    // A panicking write drops its caller's reply, and the savepoint it
                    // opened, if any, is rolled back. The thread goes on serving the others.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(opened.map(|()| conn)))) {
                        Ok(Some(completion)) => pending.push(completion),
                        Ok(None) => {}
                        Err(_) => {
                            tracing::error!("an SQLite write panicked; its caller gets an error");
                            let _ = conn.execute_batch("ROLLBACK TO write; RELEASE write");
                        }
                    }
                    ran += 1;
                }
                Request::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if ran < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        commit(conn, &mut pending);
        if closing.is_some() {
            return closing;
        }
    }
    commit(conn, &mut pending);
    None
}

/// Opens a transaction unless one is open. A transaction that SQLite ended
/// on its own after an error took the pending writes with it, so their
/// callers learn that here.
fn ensure_transaction(conn: &Connection, pending: &mut Vec<Completion>) -> Result<(), Arc<str>> {
    if !conn.is_autocommit() {
        return Ok(());
    }
    if !pending.is_empty() {
        tracing::error!("SQLite rolled back a group transaction after an error; the writes in it are not stored");
        let outcome: CommitOutcome = Err(Arc::from("SQLite rolled back the transaction after an error"));
        for completion in pending.drain(..) {
            completion(outcome.clone());
        }
    }
    // IMMEDIATE takes the write lock now, waiting up to the busy timeout for
    // another connection's write to end.
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|err| Arc::from(err.to_string()))
}

/// Commits the open transaction, if any, and replies to the writes in it.
fn commit(conn: &Connection, pending: &mut Vec<Completion>) {
    if conn.is_autocommit() && pending.is_empty() {
        return;
    }
    let outcome: CommitOutcome = if conn.is_autocommit() {
        Err(Arc::from("SQLite rolled back the transaction after an error"))
    } else {
        match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::error!(error = %err, "committing a group of SQLite writes failed; the writes are rolled back");
                // The transaction may still be open after a failed COMMIT.
                let _ = conn.execute_batch("ROLLBACK");
                Err(Arc::from(err.to_string()))
            }
        }
    };
    for completion in pending.drain(..) {
        completion(outcome.clone());
    }
}

/// Runs a statement without parameters through the statement cache.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn io_error(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(message)))
}

#[cfg(test)]
mod tests {
    use super::Target;
    use std::path::Path;

    #[test]
    fn target_escapes_the_path_and_keeps_the_options() {
        let plain = Target::new("/data/jobs.db", Path::new("/data/jobs.db"));
        assert_eq!(plain.uri, "file:/data/jobs.db");
        assert_eq!(plain.directory(), Some(Path::new("/data")));
        // sqlx decodes `%41` to `A`; the writer opens that same file.
        let escaped = Target::new("/d/p%41 #1.db?mode=rwc", Path::new("/d/pA #1.db"));
        assert_eq!(escaped.uri, "file:/d/pA %231.db?mode=rwc");
        let percent = Target::new("/d/100%25.db", Path::new("/d/100%.db"));
        assert_eq!(percent.uri, "file:/d/100%25.db");
    }

    #[test]
    fn target_of_memory_databases() {
        let memory = Target::new(":memory:", Path::new("file:sqlx-in-memory-7"));
        assert!(memory.in_memory);
        assert_eq!(memory.uri, "file:sqlx-in-memory-7");
        assert_eq!(memory.directory(), None);
        let named = Target::new("shared?mode=memory", Path::new("shared"));
        assert!(named.in_memory);
        assert_eq!(named.directory(), None);
    }
}
