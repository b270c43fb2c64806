//! Job log files: one NDJSON file per job under `<data_dir>/logs/`.
//!
//! Each entry records the time, attempt, source (`stdout`, `stderr` or
//! `log`), level and message. The server is the only writer of a job's
//! file, so entries of one job never interleave.
//!
//! A file that would grow past the size cap is renamed to `<id>.log.1`,
//! replacing an older one, and a new `<id>.log` is started. A job therefore
//! keeps at most about twice the cap on disk.
//!
//! On a store shared by several nodes, every entry is also queued for the
//! store, which keeps the newest lines of each job so that any node can
//! serve them. When the queue is full (the database is slow or down), lines
//! are left out of the store and counted; the file still has them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::store::{JobLogLine, Store};

/// Log lines queued for the store before new ones are left out.
const MIRROR_QUEUE: usize = 10_000;
/// Log lines written to the store per transaction.
const MIRROR_BATCH: usize = 1000;

/// One line of a job log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub attempt: u32,
    /// `stdout`, `stderr` or `log`.
    pub stream: String,
    pub level: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// Default size cap of one job log file: 64 MiB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// Location of the job log files.
#[derive(Debug, Clone)]
pub struct JobLogs {
    dir: PathBuf,
    max_bytes: u64,
    mirror: Option<Mirror>,
}

/// Queue of log lines for the store.
#[derive(Debug, Clone)]
struct Mirror {
    tx: mpsc::Sender<JobLogLine>,
    /// Lines left out because the queue was full, since the last report.
    dropped: Arc<AtomicU64>,
}

impl JobLogs {
    /// Uses `dir`, creating it if needed.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of creating the directory.
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            max_bytes: DEFAULT_MAX_LOG_BYTES,
            mirror: None,
        })
    }

    /// Also keeps the newest `keep` lines of each job in `store`, written
    /// in batches by a background task. Must be called within a Tokio
    /// runtime.
    #[must_use]
    pub fn mirror_to(mut self, store: Arc<dyn Store>, keep: u32) -> Self {
        let (tx, rx) = mpsc::channel(MIRROR_QUEUE);
        let mirror = Mirror {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(mirror_writer(store, keep, rx, mirror.dropped.clone()));
        self.mirror = Some(mirror);
        self
    }

    /// Returns true when entries are also kept in the store.
    pub fn is_mirrored(&self) -> bool {
        self.mirror.is_some()
    }

    /// Sets the size at which a job's log file is rotated.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Returns the size at which a job's log file is rotated.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Returns the path of a job's log file.
    pub fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.log"))
    }

    /// Returns the path of a job's previous log file, the one rotated out.
    pub fn rotated_path(&self, job_id: &str) -> PathBuf {
        rotated(&self.path(job_id))
    }

    /// Opens a job's log for appending.
    pub fn writer(&self, job_id: &str) -> LogWriter {
        let mut writer = LogWriter::open(&self.path(job_id), self.max_bytes);
        writer.mirror = self
            .mirror
            .clone()
            .map(|mirror| (job_id.to_string(), mirror));
        writer
    }

    /// Reads the last `tail` entries of a job's log (all when `None`): the
    /// rotated file first, then the current one. A missing file is an empty
    /// log; unreadable lines are skipped.
    pub fn read(&self, job_id: &str, tail: Option<usize>) -> Vec<LogEntry> {
        let mut entries = std::collections::VecDeque::new();
        for path in [self.rotated_path(job_id), self.path(job_id)] {
            let Ok(file) = File::open(path) else { continue };
            for line in BufReader::new(file).split(b'\n').map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_slice::<LogEntry>(&line) {
                    entries.push_back(entry);
                    if tail.is_some_and(|limit| entries.len() > limit) {
                        entries.pop_front();
                    }
                }
            }
        }
        entries.into()
    }

    /// Removes a job's log files, the rotated one included.
    pub fn remove(&self, job_id: &str) {
        let _ = std::fs::remove_file(self.path(job_id));
        let _ = std::fs::remove_file(self.rotated_path(job_id));
    }
}

/// Writes queued log lines to the store in batches. While the store fails,
/// the batch is retried with a growing delay and newer lines wait in the
/// queue, or are left out once it is full.
async fn mirror_writer(
    store: Arc<dyn Store>,
    keep: u32,
    mut rx: mpsc::Receiver<JobLogLine>,
    dropped: Arc<AtomicU64>,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MIRROR_BATCH {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match store.job_logs_append(&batch, keep).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("storing job log lines in the database works again");
                        failing = false;
                    }
                    break;
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "storing job log lines in the database failed; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(lines = lost, "job log lines were left out of the database because its queue was full; the log files keep them");
        }
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Buffered appender of one job's log. Write failures are logged once and
/// then ignored: a full disk must not fail the job.
pub struct LogWriter {
    path: PathBuf,
    /// The job id and the store queue, on a shared store.
    mirror: Option<(String, Mirror)>,
    file: Option<BufWriter<File>>,
    /// True once opening the file was tried.
    opened: bool,
    failed: bool,
    /// Size of the current file, counting buffered entries.
    size: u64,
    max_bytes: u64,
}

impl LogWriter {
    /// Prepares a writer for `path`. The file is opened at the first
    /// append, so a job that logs nothing creates no file and no buffer.
    fn open(path: &Path, max_bytes: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            mirror: None,
            file: None,
            opened: false,
            failed: false,
            size: 0,
            max_bytes,
        }
    }

    fn open_file(&mut self) {
        self.opened = true;
        match OpenOptions::new().create(true).append(true).open(&self.path) {
            Ok(file) => {
                self.size = file.metadata().map(|meta| meta.len()).unwrap_or(0);
                self.file = Some(BufWriter::with_capacity(16 * 1024, file));
            }
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "opening the job log failed; its lines are not stored");
                self.failed = true;
            }
        }
    }

    /// Appends one entry. When the entry would take a non-empty file past
    /// the size cap, the file is rotated first. An entry larger than the
    /// cap is written whole to a new file.
    pub fn append(&mut self, entry: &LogEntry) {
        if !self.opened {
            self.open_file();
        }
        if self.file.is_none() && self.mirror.is_none() {
            return;
        }
        let mut line = serde_json::to_vec(entry).expect("log entry serializes");
        if let Some((job_id, mirror)) = &self.mirror {
            let text = String::from_utf8_lossy(&line).into_owned();
            let queued = mirror.tx.try_send(JobLogLine {
                job_id: job_id.clone(),
                line: text,
            });
            if queued.is_err() {
                mirror.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.file.is_none() {
            return;
        }
        line.push(b'\n');
        if self.size > 0 && self.size.saturating_add(line.len() as u64) > self.max_bytes {
            self.rotate();
        }
        let Some(file) = self.file.as_mut() else { return };
        match file.write_all(&line) {
            Ok(()) => self.size += line.len() as u64,
            Err(err) => self.report(err),
        }
    }

    /// Renames the current file to `<name>.1` and starts an empty one. When
    /// the rename fails, writing goes on in the current file.
    fn rotate(&mut self) {
        self.flush();
        if let Err(err) = std::fs::rename(&self.path, rotated(&self.path)) {
            self.report(err);
            return;
        }
        self.file = None;
        match OpenOptions::new().create(true).append(true).open(&self.path) {
            Ok(file) => {
                self.file = Some(BufWriter::with_capacity(16 * 1024, file));
                self.size = 0;
            }
            Err(err) => self.report(err),
        }
    }

    /// Writes buffered entries to the file.
    pub fn flush(&mut self) {
        if let Some(file) = self.file.as_mut() {
            if let Err(err) = file.flush() {
                self.report(err);
            }
        }
    }

    fn report(&mut self, err: std::io::Error) {
        if !self.failed {
            tracing::warn!(path = %self.path.display(), error = %err, "writing the job log failed; later lines may be missing");
            self.failed = true;
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> LogEntry {
        LogEntry {
            ts: 1,
            attempt: 1,
            stream: "stdout".into(),
            level: "info".into(),
            message: format!("line {n:04}"),
            data: None,
        }
    }

    fn entry_len() -> u64 {
        serde_json::to_vec(&entry(0)).unwrap().len() as u64 + 1
    }

    fn messages(entries: &[LogEntry]) -> Vec<String> {
        entries.iter().map(|entry| entry.message.clone()).collect()
    }

    #[test]
    fn small_file_not_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::new(dir.path().to_path_buf()).unwrap().with_max_bytes(10 * entry_len());
        let mut writer = logs.writer("j");
        for n in 0..10 {
            writer.append(&entry(n));
        }
        drop(writer);
        assert!(!logs.rotated_path("j").exists());
        assert_eq!(std::fs::metadata(logs.path("j")).unwrap().len(), 10 * entry_len());
        assert_eq!(logs.read("j", None).len(), 10);
    }

    #[test]
    fn rotation_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::new(dir.path().to_path_buf()).unwrap().with_max_bytes(10 * entry_len());
        let mut writer = logs.writer("j");
        for n in 0..25 {
            writer.append(&entry(n));
        }
        drop(writer);

        // 25 entries with room for 10 per file: 0-9 were dropped with the
        // first rotated file, 10-19 are in .log.1, 20-24 in .log.
        let current = std::fs::metadata(logs.path("j")).unwrap().len();
        let previous = std::fs::metadata(logs.rotated_path("j")).unwrap().len();
        assert_eq!(current, 5 * entry_len());
        assert_eq!(previous, 10 * entry_len());
        let all = messages(&logs.read("j", None));
        let expected: Vec<String> = (10..25).map(|n| format!("line {n:04}")).collect();
        assert_eq!(all, expected);
        let tail = messages(&logs.read("j", Some(7)));
        assert_eq!(tail, expected[8..].to_vec());
    }

    #[test]
    fn reopened_writer_counts_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::new(dir.path().to_path_buf()).unwrap().with_max_bytes(4 * entry_len());
        for n in 0..3 {
            let mut writer = logs.writer("j");
            writer.append(&entry(2 * n));
            writer.append(&entry(2 * n + 1));
        }
        // The second writer filled the file to the cap, the third rotated it.
        assert_eq!(messages(&logs.read("j", None)).len(), 6);
        assert_eq!(std::fs::metadata(logs.path("j")).unwrap().len(), 2 * entry_len());
        assert_eq!(std::fs::metadata(logs.rotated_path("j")).unwrap().len(), 4 * entry_len());
    }

    #[test]
    fn oversized_entry_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::new(dir.path().to_path_buf()).unwrap().with_max_bytes(64);
        let mut writer = logs.writer("j");
        let mut big = entry(1);
        big.message = "x".repeat(500);
        writer.append(&entry(0));
        writer.append(&big);
        writer.append(&entry(2));
        drop(writer);
        let all = logs.read("j", None);
        // Entry 0 went to .log.1 first and the big entry replaced it there.
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].message.len(), 500);
        assert_eq!(all[1].message, "line 0002");
    }

    #[test]
    fn remove_deletes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::new(dir.path().to_path_buf()).unwrap().with_max_bytes(entry_len());
        let mut writer = logs.writer("j");
        writer.append(&entry(0));
        writer.append(&entry(1));
        drop(writer);
        assert!(logs.rotated_path("j").exists());
        logs.remove("j");
        assert!(!logs.path("j").exists());
        assert!(!logs.rotated_path("j").exists());
        assert!(logs.read("j", None).is_empty());
    }
}
