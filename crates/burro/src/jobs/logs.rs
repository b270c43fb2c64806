//! Job log files: one NDJSON file per job under `<data_dir>/logs/`.
//!
//! Each entry records the time, attempt, source (`stdout`, `stderr` or
//! `log`), level and message. The server is the only writer of a job's
//! file, so entries of one job never interleave.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

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

/// Location of the job log files.
#[derive(Debug, Clone)]
pub struct JobLogs {
    dir: PathBuf,
}

impl JobLogs {
    /// Uses `dir`, creating it if needed.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of creating the directory.
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Returns the path of a job's log file.
    pub fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.log"))
    }

    /// Opens a job's log for appending.
    pub fn writer(&self, job_id: &str) -> LogWriter {
        LogWriter::open(&self.path(job_id))
    }

    /// Reads the last `tail` entries of a job's log (all when `None`).
    /// A missing file is an empty log; unreadable lines are skipped.
    pub fn read(&self, job_id: &str, tail: Option<usize>) -> Vec<LogEntry> {
        let Ok(file) = File::open(self.path(job_id)) else {
            return Vec::new();
        };
        let mut entries = std::collections::VecDeque::new();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Ok(entry) = serde_json::from_str::<LogEntry>(&line) {
                entries.push_back(entry);
                if tail.is_some_and(|limit| entries.len() > limit) {
                    entries.pop_front();
                }
            }
        }
        entries.into()
    }
}

/// Buffered appender of one job's log. Write failures are logged once and
/// then ignored: a full disk must not fail the job.
pub struct LogWriter {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    failed: bool,
}

impl LogWriter {
    fn open(path: &Path) -> Self {
        let file = OpenOptions::new().create(true).append(true).open(path);
        let (file, failed) = match file {
            Ok(file) => (Some(BufWriter::with_capacity(16 * 1024, file)), false),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "opening the job log failed; its lines are not stored");
                (None, true)
            }
        };
        Self {
            path: path.to_path_buf(),
            file,
            failed,
        }
    }

    /// Appends one entry.
    pub fn append(&mut self, entry: &LogEntry) {
        let Some(file) = self.file.as_mut() else { return };
        let mut line = serde_json::to_vec(entry).expect("log entry serializes");
        line.push(b'\n');
        if let Err(err) = file.write_all(&line) {
            self.report(err);
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
