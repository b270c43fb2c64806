//! The job side: the job's socket, its connections, its message pipe and its
//! output pipes. Each source runs as a task that turns bytes into [`Item`]s
//! on one bounded channel, so a server that reads slowly slows the job down
//! instead of growing the shim's memory.

use burro_protocol::{LineBuffer, LineEvent, LineSlice};
use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

/// Something the job produced, in the order it was read from one source.
#[derive(Debug)]
pub enum Item {
    /// Message lines of one connection, each ending in `\n`: the complete
    /// lines of one read, so a busy job costs one item per read.
    Messages { conn: u64, lines: Vec<u8> },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Oversize { conn: u64, len: usize },
}

/// The listening socket the job connects to.
pub enum JobListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Limits applied to every job connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// Shared bookkeeping of the open job connections.
#[derive(Default)]
pub struct Registry {
    /// Sources still producing items: connections, the message pipe, stdout
    /// and stderr. The exit is reported once this reaches zero.
    pub active_sources: Cell<usize>,
    pub open_connections: Cell<usize>,
    next_conn: Cell<u64>,
    /// Writers of connections, for server-to-job lines.
    pub writers: std::cell::RefCell<HashMap<u64, mpsc::UnboundedSender<Vec<u8>>>>,
}

impl Registry {
    fn next_conn_id(&self) -> u64 {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        id
    }
}

/// Guard that counts a running source and uncounts it when dropped.
struct SourceGuard(Rc<Registry>);

impl SourceGuard {
    fn new(registry: &Rc<Registry>) -> Self {
        registry.active_sources.set(registry.active_sources.get() + 1);
        SourceGuard(registry.clone())
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        self.0.active_sources.set(self.0.active_sources.get() - 1);
    }
}

/// Accepts job connections until `stop` is set, serving each on its own task.
pub async fn accept_loop(
    job_id: Rc<str>,
    listener: Rc<JobListener>,
    registry: Rc<Registry>,
    items: mpsc::Sender<Item>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(Accepted::Unix(stream)) => spawn_connection(&job_id, stream, &registry, &items, limits, &stop),
            Ok(Accepted::Tcp(stream)) => spawn_connection(&job_id, stream, &registry, &items, limits, &stop),
            Err(err) => {
                crate::shim_log!(job_id, "accepting a job connection failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts every connection already waiting in the backlog, without
/// blocking. Used once the job has exited, so no message it sent is missed.
pub async fn accept_backlog(
    job_id: &Rc<str>,
    listener: &JobListener,
    registry: &Rc<Registry>,
    items: &mpsc::Sender<Item>,
    limits: ConnectionLimits,
    stop: &watch::Receiver<bool>,
) {
    loop {
        let ready = tokio::time::timeout(Duration::ZERO, accept(listener)).await;
        match ready {
            Ok(Ok(Accepted::Unix(stream))) => spawn_connection(job_id, stream, registry, items, limits, stop),
            Ok(Ok(Accepted::Tcp(stream))) => spawn_connection(job_id, stream, registry, items, limits, stop),
            _ => return,
        }
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &JobListener) -> io::Result<Accepted> {
    match listener {
        JobListener::Unix(listener) => listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
        JobListener::Tcp(listener) => listener.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            Accepted::Tcp(s)
        }),
    }
}

fn spawn_connection<S>(
    job_id: &Rc<str>,
    stream: S,
    registry: &Rc<Registry>,
    items: &mpsc::Sender<Item>,
    limits: ConnectionLimits,
    stop: &watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    if registry.open_connections.get() >= limits.max_connections {
        crate::shim_log!(
            job_id,
            "closed a job connection: {} connections are open, the maximum is {} (max_connections_per_job)",
            registry.open_connections.get(),
            limits.max_connections
        );
        return;
    }
    let conn = registry.next_conn_id();
    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    registry.writers.borrow_mut().insert(conn, writer_tx);
    registry.open_connections.set(registry.open_connections.get() + 1);
    let guard = SourceGuard::new(registry);
    let job_id = job_id.clone();
    let registry = registry.clone();
    let items = items.clone();
    let stop = stop.clone();
    tokio::task::spawn_local(async move {
        let _guard = guard;
        serve_connection(&job_id, conn, stream, &items, limits, writer_rx, stop).await;
        registry.writers.borrow_mut().remove(&conn);
        registry.open_connections.set(registry.open_connections.get() - 1);
    });
}

async fn serve_connection<S>(
    job_id: &str,
    conn: u64,
    mut stream: S,
    items: &mpsc::Sender<Item>,
    limits: ConnectionLimits,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut lines = LineBuffer::new(limits.max_message_bytes);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut idle_deadline = Instant::now() + limits.idle_timeout;
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => {
                // A read error ends the connection as end of file does.
                let n = read.unwrap_or_default();
                if n == 0 {
                    // The peer half-closed: close our side at once, because
                    // clients such as socat wait for it.
                    if let Some(LineEvent::Line(line)) = lines.finish() {
                        let mut batch = Vec::new();
                        add_message(&mut batch, &line);
                        forward_messages(conn, batch, items).await;
                    }
                    return;
                }
                idle_deadline = Instant::now() + limits.idle_timeout;
                lines.push(&chunk[..n]);
                let mut batch = Vec::new();
                while let Some(slice) = lines.next_slice() {
                    match slice {
                        LineSlice::Line(line) => add_message(&mut batch, line),
                        LineSlice::Overflow { len } => {
                            forward_messages(conn, batch, items).await;
                            let _ = items.send(Item::Oversize { conn, len }).await;
                            return;
                        }
                    }
                }
                forward_messages(conn, batch, items).await;
            }
            Some(line) = outgoing.recv() => {
                if stream.write_all(&line).await.is_err() {
                    return;
                }
            }
            _ = sleep_until(idle_deadline) => {
                crate::shim_log!(job_id, "closed job connection {conn}: no line for {} ms", limits.idle_timeout.as_millis());
                return;
            }
            _ = stop.changed() => return,
        }
    }
}

/// Adds a message line and its newline to `batch`, unless it is blank.
fn add_message(batch: &mut Vec<u8>, line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    batch.extend_from_slice(line);
    batch.push(b'\n');
}

/// Sends the message lines gathered in `lines`, if any, as one item.
async fn forward_messages(conn: u64, lines: Vec<u8>, items: &mpsc::Sender<Item>) {
    if lines.is_empty() {
        return;
    }
    let _ = items.send(Item::Messages { conn, lines }).await;
}

/// Reads message lines from the inherited pipe (`BURRO_MESSAGE_FD`). The
/// pipe is connection 0.
pub fn spawn_message_pipe(
    receiver: tokio::net::unix::pipe::Receiver,
    registry: &Rc<Registry>,
    items: &mpsc::Sender<Item>,
    max_message_bytes: usize,
    stop: &watch::Receiver<bool>,
) {
    let guard = SourceGuard::new(registry);
    let items = items.clone();
    let mut stop = stop.clone();
    tokio::task::spawn_local(async move {
        let _guard = guard;
        let mut receiver = receiver;
        let mut lines = LineBuffer::new(max_message_bytes);
        let mut chunk = vec![0u8; 16 * 1024];
        // An oversized line on the shared pipe cannot close the pipe, so the
        // rest of that line is skipped and later lines are still read.
        loop {
            let n = tokio::select! {
                read = receiver.read(&mut chunk) => read.unwrap_or(0),
                _ = stop.changed() => return,
            };
            if n == 0 {
                if let Some(LineEvent::Line(line)) = lines.finish() {
                    let mut batch = Vec::new();
                    add_message(&mut batch, &line);
                    forward_messages(0, batch, &items).await;
                }
                return;
            }
            lines.push(&chunk[..n]);
            let mut batch = Vec::new();
            while let Some(slice) = lines.next_slice() {
                match slice {
                    LineSlice::Line(line) => add_message(&mut batch, line),
                    LineSlice::Overflow { len } => {
                        forward_messages(0, std::mem::take(&mut batch), &items).await;
                        let _ = items.send(Item::Oversize { conn: 0, len }).await;
                    }
                }
            }
            forward_messages(0, batch, &items).await;
        }
    });
}

/// Output stream that a reader captures.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Reads the job's stdout or stderr line by line. Lines longer than
/// `max_line` are split into pieces of at most that size, so output without
/// newlines cannot grow memory.
pub fn spawn_output(
    stream: Stream,
    receiver: tokio::net::unix::pipe::Receiver,
    registry: &Rc<Registry>,
    items: &mpsc::Sender<Item>,
    max_line: usize,
    stop: &watch::Receiver<bool>,
) {
    let guard = SourceGuard::new(registry);
    let items = items.clone();
    let mut stop = stop.clone();
    let wrap = move |line: Vec<u8>| match stream {
        Stream::Stdout => Item::Stdout(line),
        Stream::Stderr => Item::Stderr(line),
    };
    tokio::task::spawn_local(async move {
        let _guard = guard;
        let mut receiver = receiver;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                read = receiver.read(&mut chunk) => read.unwrap_or(0),
                _ = stop.changed() => 0,
            };
            if n == 0 {
                if !pending.is_empty() {
                    let _ = items.send(wrap(std::mem::take(&mut pending))).await;
                }
                return;
            }
            for &byte in &chunk[..n] {
                if byte == b'\n' {
                    let line = std::mem::take(&mut pending);
                    if items.send(wrap(line)).await.is_err() {
                        return;
                    }
                } else {
                    pending.push(byte);
                    if pending.len() >= max_line {
                        let line = std::mem::take(&mut pending);
                        if items.send(wrap(line)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
}
