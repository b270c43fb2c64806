//! The async form, on tokio: [`AsyncJob`] and [`run_job`].

use crate::wire::{self, Address, LineSplitter, Payload, ServerMessage};
use crate::{Error, Level};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

async fn open(address: &Address) -> io::Result<(ReadHalf, WriteHalf)> {
    match address {
        Address::Unix(path) => {
            let (read, write) = UnixStream::connect(path).await?.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
        Address::Tcp(host_port) => {
            let (read, write) = TcpStream::connect(host_port.as_str()).await?.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
    }
}

/// Connects, retrying with a growing pause until `window` has passed.
async fn open_within(address: &Address, window: Duration) -> io::Result<(ReadHalf, WriteHalf)> {
    let deadline = Instant::now() + window;
    let mut backoff = wire::FIRST_BACKOFF;
    loop {
        match open(address).await {
            Ok(halves) => return Ok(halves),
            Err(error) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(error);
                }
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(wire::MAX_BACKOFF);
            }
        }
    }
}

struct Writer {
    stream: Option<WriteHalf>,
    /// Set while a line is being written. Still set when a send starts, it
    /// means an earlier send was dropped in the middle of its line.
    in_progress: bool,
    finished: bool,
}

struct Shared {
    job_id: String,
    name: String,
    data: Value,
    address: Address,
    writer: Mutex<Writer>,
    cancel: watch::Sender<bool>,
    cancel_reason: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// Writes one message. The writer lock is held for the whole write, so
    /// lines never interleave and go out in the order the lock was taken.
    async fn send(&self, kind: &'static str, fields: &[(&str, Value)], terminal: bool) -> Result<(), Error> {
        let line = wire::encode(kind, &self.job_id, wire::now_ms(), fields);
        let mut writer = self.writer.lock().await;
        if writer.finished {
            return Err(Error::Finished);
        }
        if terminal {
            writer.finished = true;
        }
        self.write_line(&mut writer, &line)
            .await
            .map_err(|source| Error::Send { kind, source })
    }

    async fn write_line(&self, writer: &mut Writer, line: &[u8]) -> io::Result<()> {
        if writer.in_progress {
            // End the cut-off line, so the server drops it alone and reads
            // this one intact.
            if let Some(stream) = writer.stream.as_mut() {
                if stream.write_all(b"\n").await.is_err() {
                    writer.stream = None;
                }
            }
            writer.in_progress = false;
        }
        if let Some(stream) = writer.stream.as_mut() {
            writer.in_progress = true;
            let written = stream.write_all(line).await;
            writer.in_progress = false;
            match written {
                Ok(()) => return Ok(()),
                Err(error) => {
                    eprintln!("burro-job: connection to {} lost ({error}), reconnecting", self.address);
                    writer.stream = None;
                }
            }
        }
        // A new connection does not announce protocol 2, so the server
        // never writes to it and its read half is dropped.
        let (_, mut stream) = open_within(&self.address, wire::CONNECT_WINDOW).await?;
        writer.in_progress = true;
        stream.write_all(line).await?;
        writer.in_progress = false;
        writer.stream = Some(stream);
        Ok(())
    }

    fn handle_server_line(&self, line: &[u8]) {
        if let Some(ServerMessage::Cancel { reason }) = wire::parse_server_line(line) {
            if !*self.cancel.borrow() {
                *self.cancel_reason.lock().unwrap_or_else(PoisonError::into_inner) = reason;
                self.cancel.send_replace(true);
            }
        }
    }

    async fn close(&self) {
        if let Some(mut stream) = self.writer.lock().await.stream.take() {
            // The peer may already be gone, and then there is nothing left to do.
            let _ = stream.shutdown().await;
        }
    }
}

/// The running job, passed to the handler of [`run_job`].
///
/// Cloning is cheap and every clone refers to the same job, so clones can
/// move into spawned tasks. Sends take one lock, so messages go out whole and
/// in order.
#[derive(Clone)]
pub struct AsyncJob {
    shared: Arc<Shared>,
}

impl fmt::Debug for AsyncJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncJob")
            .field("id", &self.shared.job_id)
            .field("name", &self.shared.name)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl AsyncJob {
    /// Returns the job's id.
    pub fn id(&self) -> &str {
        &self.shared.job_id
    }

    /// Returns the name the job was registered under.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Returns the data the job was enqueued with.
    pub fn data(&self) -> &Value {
        &self.shared.data
    }

    /// Deserializes the job data into `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Data`] when the data does not fit `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.shared.data).map_err(Error::Data)
    }

    /// Sends `progress` with `percent` (the server clamps it to 0..=100) and
    /// an optional message.
    ///
    /// Dropping the future in the middle of a write cuts that line short.
    /// The next send ends it with a newline, so the server drops only that line.
    ///
    /// # Errors
    ///
    /// - [`Error::NotFinite`] for NaN or an infinite `percent`.
    /// - [`Error::Send`] when the message could not be written, even after
    ///   reconnecting.
    /// - [`Error::Finished`] after the outcome was sent.
    pub async fn progress(&self, percent: f64, message: Option<&str>) -> Result<(), Error> {
        let fields = wire::progress_fields(percent, message)?;
        self.shared.send("progress", &fields, false).await
    }

    /// Sends `log` with `level` and `message`. The server adds it to the job log.
    ///
    /// # Errors
    ///
    /// As for [`AsyncJob::progress`], except `NotFinite`.
    pub async fn log(&self, level: Level, message: &str) -> Result<(), Error> {
        let fields = [
            ("level", Value::from(level.as_str())),
            ("message", Value::from(message)),
        ];
        self.shared.send("log", &fields, false).await
    }

    /// Sends `log` at level `debug`.
    ///
    /// # Errors
    ///
    /// As for [`AsyncJob::log`].
    pub async fn debug(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Debug, message).await
    }

    /// Sends `log` at level `info`.
    ///
    /// # Errors
    ///
    /// As for [`AsyncJob::log`].
    pub async fn info(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Info, message).await
    }

    /// Sends `log` at level `warn`.
    ///
    /// # Errors
    ///
    /// As for [`AsyncJob::log`].
    pub async fn warn(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Warn, message).await
    }

    /// Sends `log` at level `error`.
    ///
    /// # Errors
    ///
    /// As for [`AsyncJob::log`].
    pub async fn error(&self, message: &str) -> Result<(), Error> {
        self.log(Level::Error, message).await
    }

    /// Returns true once the server sent `cancel`. The server terminates the job
    /// when it is still running after its cancel grace period.
    pub fn is_cancelled(&self) -> bool {
        *self.shared.cancel.borrow()
    }

    /// Returns the reason that came with `cancel`, if any.
    pub fn cancel_reason(&self) -> Option<String> {
        self.shared
            .cancel_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Completes when the server sends `cancel`, or at once if it already did.
    /// Use it in `tokio::select!` to stop work early.
    pub async fn cancelled(&self) {
        let mut receiver = self.shared.cancel.subscribe();
        // The sender lives in `self.shared`, so it outlives this wait and
        // the error case cannot happen.
        let _ = receiver.wait_for(|cancelled| *cancelled).await;
    }
}

/// Connects to the job's socket and starts the reader task.
async fn connect(payload: Payload) -> Result<AsyncJob, Error> {
    let address = Address::parse(&payload.socket_path)?;
    let (reader, writer) = open_within(&address, wire::CONNECT_WINDOW)
        .await
        .map_err(|source| Error::Connect {
            address: payload.socket_path.clone(),
            source,
        })?;
    let shared = Arc::new(Shared {
        job_id: payload.job_id,
        name: payload.name,
        data: payload.data,
        address,
        writer: Mutex::new(Writer {
            stream: Some(writer),
            in_progress: false,
            finished: false,
        }),
        cancel: watch::Sender::new(false),
        cancel_reason: std::sync::Mutex::new(None),
    });
    tokio::spawn(read_server_lines(reader, Arc::clone(&shared)));
    Ok(AsyncJob { shared })
}

async fn read_server_lines(mut reader: ReadHalf, shared: Arc<Shared>) {
    let mut splitter = LineSplitter::default();
    let mut buffer = vec![0u8; 8192];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => splitter.push(&buffer[..count], |line| shared.handle_server_line(line)),
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match shared.send("heartbeat", &[], false).await {
            Ok(()) => {}
            Err(Error::Finished) => return,
            Err(error) => eprintln!("burro-job: heartbeat failed: {error}"),
        }
    }
}

/// Polls a future and turns a panic inside it into an error value.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Runs the job once `payload` is known and returns the exit status.
pub(crate) async fn execute<F, Fut, T, E>(payload: Payload, heartbeat: Duration, handler: F) -> i32
where
    F: FnOnce(AsyncJob) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize,
    E: fmt::Display + fmt::Debug,
{
    let job = match connect(payload).await {
        Ok(job) => job,
        Err(error) => {
            eprintln!("burro-job: cannot start the job: {error}");
            return 2;
        }
    };
    let started = [("protocol", Value::from(wire::PROTOCOL_VERSION))];
    if let Err(error) = job.shared.send("started", &started, false).await {
        eprintln!("burro-job: cannot start the job: {error}");
        return 2;
    }
    let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&job.shared), heartbeat));

    let outcome = match CatchPanic(Box::pin(handler(job.clone()))).await {
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
    if let Err(error) = job.shared.send(kind, &fields, true).await {
        eprintln!("burro-job: {error}");
    }
    // The outcome is sent, so the heartbeat task can only be sleeping or
    // waiting for the lock: aborting it cuts no line.
    heartbeat.abort();
    job.shared.close().await;
    code
}

/// Runs the async `handler` as a burro external job, then exits the process.
///
/// Call it from a plain `fn main`: it builds a single-threaded tokio runtime
/// and runs the handler on it, next to a heartbeat task (every 5 s) and a
/// task that reads server messages. Work that blocks the thread for long
/// also stalls the heartbeat, so move it to `tokio::task::spawn_blocking`.
///
/// Otherwise it behaves as [`run_job_blocking`](crate::run_job_blocking):
/// it reads the payload from standard input, sends `started` with protocol
/// 2, then `completed` with the handler's value or `failed` with the error's
/// `Display` text and its `Debug` text as `stack`. Exit status: 0 after
/// `completed`, 1 after `failed` (a panic included), 2 when the job cannot
/// start.
///
/// # Panics
///
/// When called inside a tokio runtime (a runtime cannot start inside
/// another), or when the runtime cannot be built.
pub fn run_job<F, Fut, T, E>(handler: F) -> !
where
    F: FnOnce(AsyncJob) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize,
    E: fmt::Display + fmt::Debug,
{
    let payload = match Payload::read(io::stdin().lock()) {
        Ok(payload) => payload,
        Err(error) => {
            eprintln!("burro-job: cannot start the job: {error}");
            crate::exit(2)
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime failed");
    let code = runtime.block_on(execute(payload, wire::HEARTBEAT_INTERVAL, handler));
    // Exiting without dropping the runtime: its drop would wait for
    // blocking tasks the handler may have left running.
    crate::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn heartbeats_cancel_and_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let payload = Payload {
            job_id: "j".into(),
            name: "n".into(),
            data: json!({"k": "v"}),
            socket_path: path.display().to_string(),
        };
        let job = tokio::spawn(execute(
            payload,
            Duration::from_millis(30),
            |job: AsyncJob| async move {
                assert_eq!(
                    job.data_as::<std::collections::BTreeMap<String, String>>().unwrap()["k"],
                    "v"
                );
                job.progress(5.0, Some("waiting")).await.unwrap();
                job.cancelled().await;
                assert_eq!(job.cancel_reason().as_deref(), Some("stop"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                if job.is_cancelled() {
                    panic!("cancelled");
                }
                Ok::<_, Error>(())
            },
        ));

        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let mut kinds = Vec::new();
        let mut last = Value::Null;
        while let Some(line) = lines.next_line().await.unwrap() {
            last = serde_json::from_str(&line).unwrap();
            let kind = last["type"].as_str().unwrap().to_string();
            if kind == "progress" {
                write
                    .write_all(b"{\"type\":\"cancel\",\"jobId\":\"j\",\"reason\":\"stop\"}\n")
                    .await
                    .unwrap();
            }
            kinds.push(kind);
        }

        assert_eq!(job.await.unwrap(), 1);
        assert_eq!(kinds[..2], ["started", "progress"]);
        assert!(
            kinds.iter().filter(|kind| *kind == "heartbeat").count() >= 2,
            "{kinds:?}"
        );
        assert_eq!(last["type"], json!("failed"));
        assert_eq!(last["error"], json!("the job panicked: cancelled"));
    }
}
