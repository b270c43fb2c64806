//! The blocking form: [`Job`] and [`run_job_blocking`].

use crate::wire::{self, Address, LineSplitter, Payload, ServerMessage};
use crate::{Error, Level};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// A connection to the job's socket.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(address: &Address) -> io::Result<Stream> {
        match address {
            Address::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Address::Tcp(host_port) => TcpStream::connect(host_port.as_str()).map(Stream::Tcp),
        }
    }

    /// Connects, retrying with a growing pause until `window` has passed.
    fn connect_within(address: &Address, window: Duration) -> io::Result<Stream> {
        let deadline = Instant::now() + window;
        let mut backoff = wire::FIRST_BACKOFF;
        loop {
            match Stream::connect(address) {
                Ok(stream) => return Ok(stream),
                Err(error) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(error);
                    }
                    thread::sleep(backoff.min(deadline - now));
                    backoff = (backoff * 2).min(wire::MAX_BACKOFF);
                }
            }
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Unix(stream) => stream.try_clone().map(Stream::Unix),
            Stream::Tcp(stream) => stream.try_clone().map(Stream::Tcp),
        }
    }

    fn shutdown(&self) {
        // The peer may already be gone, and then there is nothing left to do.
        let _ = match self {
            Stream::Unix(stream) => stream.shutdown(Shutdown::Both),
            Stream::Tcp(stream) => stream.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.read(buf),
            Stream::Tcp(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.write(buf),
            Stream::Tcp(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(stream) => stream.flush(),
            Stream::Tcp(stream) => stream.flush(),
        }
    }
}

struct Writer {
    stream: Option<Stream>,
    finished: bool,
}

#[derive(Default)]
struct CancelState {
    requested: bool,
    reason: Option<String>,
}

/// State shared by the job handle, the heartbeat thread and the reader thread.
struct Shared {
    job_id: String,
    address: Address,
    writer: Mutex<Writer>,
    cancel: Mutex<CancelState>,
    cancel_changed: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Writes one message. The writer lock is held for the whole write, so
    /// lines never interleave and go out in the order the locks were taken.
    fn send(&self, kind: &'static str, fields: &[(&str, Value)], terminal: bool) -> Result<(), Error> {
        let line = wire::encode(kind, &self.job_id, wire::now_ms(), fields);
        let mut writer = lock(&self.writer);
        if writer.finished {
            return Err(Error::Finished);
        }
        if terminal {
            writer.finished = true;
        }
        self.write_line(&mut writer, &line)
            .map_err(|source| Error::Send { kind, source })
    }

    /// Writes `line`. After a failed write, it reconnects once and writes
    /// the line again in full on the new connection.
    fn write_line(&self, writer: &mut Writer, line: &[u8]) -> io::Result<()> {
        if let Some(stream) = writer.stream.as_mut() {
            match stream.write_all(line) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    eprintln!("burro-job: connection to {} lost ({error}), reconnecting", self.address);
                    if let Some(stream) = writer.stream.take() {
                        stream.shutdown();
                    }
                }
            }
        }
        // A new connection does not announce protocol 2, so the server
        // never writes to it and it needs no reader.
        let mut stream = Stream::connect_within(&self.address, wire::CONNECT_WINDOW)?;
        stream.write_all(line)?;
        writer.stream = Some(stream);
        Ok(())
    }

    fn handle_server_line(&self, line: &[u8]) {
        if let Some(ServerMessage::Cancel { reason }) = wire::parse_server_line(line) {
            let mut cancel = lock(&self.cancel);
            if !cancel.requested {
                cancel.requested = true;
                cancel.reason = reason;
                self.cancel_changed.notify_all();
            }
        }
    }

    fn is_finished(&self) -> bool {
        lock(&self.writer).finished
    }

    /// Closes the connection; the kernel still delivers what was written.
    fn close(&self) {
        if let Some(stream) = lock(&self.writer).stream.take() {
            stream.shutdown();
        }
    }
}

/// The running job, passed to the handler of [`run_job_blocking`].
///
/// Every method that sends a message takes the same lock, so messages from
/// several threads go out whole and in order. `Job` is `Sync`: share it with
/// scoped threads.
pub struct Job {
    name: String,
    data: Value,
    shared: Arc<Shared>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.shared.job_id)
            .field("name", &self.name)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Job {
    /// Returns the job's id.
    pub fn id(&self) -> &str {
        &self.shared.job_id
    }

    /// Returns the name the job was registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the data the job was enqueued with.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// Deserializes the job data into `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Data`] when the data does not fit `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.data).map_err(Error::Data)
    }

    /// Sends `progress` with `percent` (the server clamps it to 0..=100) and
    /// an optional message.
    ///
    /// # Errors
    ///
    /// - [`Error::NotFinite`] for NaN or an infinite `percent`.
    /// - [`Error::Send`] when the message could not be written, even after
    ///   reconnecting.
    /// - [`Error::Finished`] after the outcome was sent.
    pub fn progress(&self, percent: f64, message: Option<&str>) -> Result<(), Error> {
        self.shared
            .send("progress", &wire::progress_fields(percent, message)?, false)
    }

    /// Sends `log` with `level` and `message`. The server adds it to the job log.
    ///
    /// # Errors
    ///
    /// As for [`Job::progress`], except `NotFinite`.
    pub fn log(&self, level: Level, message: &str) -> Result<(), Error> {
        let fields = [
            ("level", Value::from(level.as_str())),
            ("message", Value::from(message)),
        ];
        self.shared.send("log", &fields, false)
    }

    /// Sends `log` at level `debug`.
    ///
    /// # Errors
    ///
    /// As for [`Job::log`].
    pub fn debug(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Debug, message)
    }

    /// Sends `log` at level `info`.
    ///
    /// # Errors
    ///
    /// As for [`Job::log`].
    pub fn info(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Info, message)
    }

    /// Sends `log` at level `warn`.
    ///
    /// # Errors
    ///
    /// As for [`Job::log`].
    pub fn warn(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Warn, message)
    }

    /// Sends `log` at level `error`.
    ///
    /// # Errors
    ///
    /// As for [`Job::log`].
    pub fn error(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Error, message)
    }

    /// Returns true once the server sent `cancel`. The server terminates the job
    /// when it is still running after its cancel grace period.
    pub fn is_cancelled(&self) -> bool {
        lock(&self.shared.cancel).requested
    }

    /// Returns the reason that came with `cancel`, if any.
    pub fn cancel_reason(&self) -> Option<String> {
        lock(&self.shared.cancel).reason.clone()
    }

    /// Blocks until the server sends `cancel` or `timeout` passes. Returns
    /// true when the job is cancelled. Usable as an interruptible sleep.
    pub fn wait_cancelled(&self, timeout: Duration) -> bool {
        let guard = lock(&self.shared.cancel);
        let (guard, _) = self
            .shared
            .cancel_changed
            .wait_timeout_while(guard, timeout, |cancel| !cancel.requested)
            .unwrap_or_else(PoisonError::into_inner);
        guard.requested
    }
}

/// Connects to the job's socket and starts the reader thread.
fn connect(payload: Payload) -> Result<Job, Error> {
    let address = Address::parse(&payload.socket_path)?;
    let stream = Stream::connect_within(&address, wire::CONNECT_WINDOW).map_err(|source| Error::Connect {
        address: payload.socket_path.clone(),
        source,
    })?;
    let reader = stream.try_clone().map_err(|source| Error::Connect {
        address: payload.socket_path.clone(),
        source,
    })?;
    let shared = Arc::new(Shared {
        job_id: payload.job_id,
        address,
        writer: Mutex::new(Writer {
            stream: Some(stream),
            finished: false,
        }),
        cancel: Mutex::new(CancelState::default()),
        cancel_changed: Condvar::new(),
    });
    let for_reader = Arc::clone(&shared);
    thread::Builder::new()
        .name("burro-job-reader".into())
        .spawn(move || read_server_lines(reader, &for_reader))
        .map_err(|source| Error::Connect {
            address: payload.socket_path.clone(),
            source,
        })?;
    Ok(Job {
        name: payload.name,
        data: payload.data,
        shared,
    })
}

fn read_server_lines(mut stream: Stream, shared: &Shared) {
    let mut splitter = LineSplitter::default();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => splitter.push(&buffer[..count], |line| shared.handle_server_line(line)),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn heartbeat_loop(shared: &Shared, interval: Duration) {
    loop {
        thread::sleep(interval);
        match shared.send("heartbeat", &[], false) {
            Ok(()) => {}
            Err(Error::Finished) => return,
            Err(error) => eprintln!("burro-job: heartbeat failed: {error}"),
        }
    }
}

/// Runs the job once `payload` is known and returns the exit status.
pub(crate) fn execute<F, T, E>(payload: Payload, heartbeat: Duration, handler: F) -> i32
where
    F: FnOnce(&Job) -> Result<T, E>,
    T: Serialize,
    E: fmt::Display + fmt::Debug,
{
    let job = match connect(payload) {
        Ok(job) => job,
        Err(error) => {
            eprintln!("burro-job: cannot start the job: {error}");
            return 2;
        }
    };
    if let Err(error) = job
        .shared
        .send("started", &[("protocol", Value::from(wire::PROTOCOL_VERSION))], false)
    {
        eprintln!("burro-job: cannot start the job: {error}");
        return 2;
    }
    let for_heartbeat = Arc::clone(&job.shared);
    let spawned = thread::Builder::new()
        .name("burro-job-heartbeat".into())
        .spawn(move || heartbeat_loop(&for_heartbeat, heartbeat));
    if let Err(error) = spawned {
        eprintln!("burro-job: cannot start the heartbeat thread: {error}");
    }

    let outcome = match panic::catch_unwind(AssertUnwindSafe(|| handler(&job))) {
        Ok(Ok(result)) => match serde_json::to_value(result) {
            Ok(result) => Ok(result),
            Err(error) => Err((format!("serializing the job result failed: {error}"), None)),
        },
        Ok(Err(error)) => Err((error.to_string(), Some(format!("{error:?}")))),
        Err(panic) => Err((wire::panic_text(panic.as_ref()), None)),
    };
    let (kind, fields, code) = match outcome {
        Ok(result) => ("completed", vec![("result", result)], 0),
        Err((error, stack)) => ("failed", wire::failed_fields(error, stack), 1),
    };
    if let Err(error) = job.shared.send(kind, &fields, true) {
        eprintln!("burro-job: {error}");
    }
    debug_assert!(job.shared.is_finished());
    job.shared.close();
    code
}

/// Runs `handler` as a burro external job, then exits the process.
///
/// Reads the payload line from standard input, connects to the job's socket,
/// sends `started` with protocol 2, starts a heartbeat thread (every 5 s)
/// and a thread that reads server messages, and calls `handler`. Then it
/// sends `completed` with the handler's value, or `failed` with the error's
/// `Display` text as `error` and its `Debug` text as `stack`, closes the
/// connection and exits.
///
/// Exit status: 0 after `completed`; 1 after `failed`, including when the
/// handler panics or its value does not serialize; 2 when the job cannot
/// start (no payload, bad address, no connection), with a message on
/// standard error.
///
/// A broken connection is reopened once per failed message, retrying for up
/// to 10 s. The new connection does not announce protocol 2, so a cancel
/// after a reconnection arrives as SIGTERM.
pub fn run_job_blocking<F, T, E>(handler: F) -> !
where
    F: FnOnce(&Job) -> Result<T, E>,
    T: Serialize,
    E: fmt::Display + fmt::Debug,
{
    let code = match Payload::read(io::stdin().lock()) {
        Ok(payload) => execute(payload, wire::HEARTBEAT_INTERVAL, handler),
        Err(error) => {
            eprintln!("burro-job: cannot start the job: {error}");
            2
        }
    };
    crate::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    /// Runs `handler` against a listener and returns the exit status and the
    /// types of the lines the job sent, with the last line parsed.
    fn run_with<F>(heartbeat: Duration, handler: F) -> (i32, Vec<String>, Value)
    where
        F: FnOnce(&Job) -> Result<Value, String> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let payload = Payload {
            job_id: "j".into(),
            name: "n".into(),
            data: json!(null),
            socket_path: path.display().to_string(),
        };
        let job = thread::spawn(move || execute(payload, heartbeat, handler));
        let (stream, _) = listener.accept().unwrap();
        let mut kinds = Vec::new();
        let mut last = Value::Null;
        for line in BufReader::new(stream).lines() {
            last = serde_json::from_str(&line.unwrap()).unwrap();
            kinds.push(last["type"].as_str().unwrap().to_string());
        }
        (job.join().unwrap(), kinds, last)
    }

    #[test]
    fn sends_heartbeats_while_the_handler_runs() {
        let (code, kinds, last) = run_with(Duration::from_millis(40), |_| {
            thread::sleep(Duration::from_millis(300));
            Ok(json!(1))
        });
        assert_eq!(code, 0);
        assert_eq!(kinds.first().map(String::as_str), Some("started"));
        assert_eq!(kinds.last().map(String::as_str), Some("completed"));
        let heartbeats = kinds.iter().filter(|kind| *kind == "heartbeat").count();
        assert!(heartbeats >= 2, "{kinds:?}");
        assert_eq!(last["result"], json!(1));
    }

    #[test]
    fn a_panic_becomes_failed() {
        let (code, kinds, last) = run_with(wire::HEARTBEAT_INTERVAL, |_| panic!("boom"));
        assert_eq!(code, 1);
        assert_eq!(kinds, ["started", "failed"]);
        assert_eq!(last["error"], json!("the job panicked: boom"));
    }

    #[test]
    fn messages_from_several_threads_stay_whole() {
        let (code, kinds, _) = run_with(wire::HEARTBEAT_INTERVAL, |job| {
            thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| {
                        for _ in 0..200 {
                            job.info(&"x".repeat(5000)).unwrap();
                        }
                    });
                }
            });
            Ok(json!(null))
        });
        assert_eq!(code, 0);
        assert_eq!(kinds.len(), 802);
        assert_eq!(kinds.iter().filter(|kind| *kind == "log").count(), 800);
    }

    #[test]
    fn nothing_is_sent_after_the_outcome() {
        let (code, kinds, last) = run_with(wire::HEARTBEAT_INTERVAL, |job| {
            job.shared
                .send("completed", &[("result", json!("early"))], true)
                .unwrap();
            assert!(matches!(job.progress(1.0, None), Err(Error::Finished)));
            Ok(json!("late"))
        });
        assert_eq!(code, 0);
        assert_eq!(kinds, ["started", "completed"]);
        assert_eq!(last["result"], json!("early"));
    }
}
