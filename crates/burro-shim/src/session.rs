//! The shim's side of the control connection.
//!
//! A session task owns the connection to the server's control socket. It
//! connects (retrying with backoff from 50 ms up to 1 s), sends `HELLO`,
//! waits for `WELCOME`, replays every frame the server has not acknowledged,
//! and then forwards new frames while reading acknowledgements and commands.
//! Frames stay in the unacknowledged queue until the server acknowledges
//! them, so a server restart loses nothing that reached the shim.

use burro_protocol::control::{Hello, ServerFrame};
use burro_protocol::{LineBuffer, LineEvent};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest control frame the shim accepts from the server.
const MAX_SERVER_FRAME: usize = 64 * 1024 * 1024;

/// What the session reports to the supervisor loop.
#[derive(Debug)]
pub enum Command {
    Kill(String),
    Send { conn: u64, line: Vec<u8> },
    Bye,
    /// The server rejected the handshake; the reason was logged.
    Rejected,
}

/// State shared between the session task and the supervisor loop.
pub struct Shared {
    /// Frames queued or sent but not yet acknowledged, in sequence order.
    pub unacked: RefCell<VecDeque<(u64, Vec<u8>)>>,
    /// Total size of `unacked`, in bytes.
    pub unacked_bytes: Cell<usize>,
    /// When the server last acknowledged a frame or welcomed the shim.
    pub last_contact: Cell<tokio::time::Instant>,
    new_frames: Notify,
}

/// Handle used by the supervisor loop to queue frames and receive commands.
pub struct SessionHandle {
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub shared: Rc<Shared>,
}

impl SessionHandle {
    /// Queues an encoded frame for delivery.
    pub fn send(&self, seq: u64, bytes: Vec<u8>) {
        self.shared.unacked_bytes.set(self.shared.unacked_bytes.get() + bytes.len());
        self.shared.unacked.borrow_mut().push_back((seq, bytes));
        self.shared.new_frames.notify_one();
    }
}

/// Starts the session task.
pub fn start(job_id: Rc<str>, control_path: String, hello: Hello) -> SessionHandle {
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let shared = Rc::new(Shared {
        unacked: RefCell::new(VecDeque::new()),
        unacked_bytes: Cell::new(0),
        last_contact: Cell::new(tokio::time::Instant::now()),
        new_frames: Notify::new(),
    });
    let session = Session {
        job_id,
        control_path,
        hello,
        shared: shared.clone(),
        commands: commands_tx,
    };
    tokio::task::spawn_local(session.run());
    SessionHandle {
        commands: commands_rx,
        shared,
    }
}

struct Session {
    job_id: Rc<str>,
    control_path: String,
    hello: Hello,
    shared: Rc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

enum Ended {
    /// The connection broke; reconnect.
    Disconnected,
    /// The server rejected the shim; stop for good.
    Finished,
}

impl Session {
    async fn run(self) {
        let mut backoff = BACKOFF_START;
        let mut failures = 0u32;
        loop {
            match UnixStream::connect(&self.control_path).await {
                Ok(stream) => {
                    if failures > 0 {
                        crate::shim_log!(self.job_id, "connected to {} after {failures} failed attempts", self.control_path);
                    }
                    failures = 0;
                    backoff = BACKOFF_START;
                    match self.serve(stream).await {
                        Ended::Finished => return,
                        Ended::Disconnected => {}
                    }
                }
                Err(err) => {
                    if failures == 0 {
                        crate::shim_log!(self.job_id, "connecting to the control socket {} failed: {err}; retrying", self.control_path);
                    }
                    failures += 1;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn acknowledge(&self, acked: u64) {
        self.shared.last_contact.set(tokio::time::Instant::now());
        let mut unacked = self.shared.unacked.borrow_mut();
        while let Some((seq, bytes)) = unacked.front() {
            if *seq > acked {
                break;
            }
            self.shared.unacked_bytes.set(self.shared.unacked_bytes.get() - bytes.len());
            unacked.pop_front();
        }
    }

    /// Copies the frames after `written` into one buffer; returns the buffer
    /// and the last sequence number in it.
    fn pending_after(&self, written: u64) -> (Vec<u8>, u64) {
        let mut buffer = Vec::new();
        let mut last = written;
        for (seq, bytes) in self.shared.unacked.borrow().iter() {
            if *seq > written {
                buffer.extend_from_slice(bytes);
                last = *seq;
            }
        }
        (buffer, last)
    }

    async fn serve(&self, stream: UnixStream) -> Ended {
        let (mut reader, mut writer) = stream.into_split();
        let mut lines = LineBuffer::new(MAX_SERVER_FRAME);
        let mut chunk = vec![0u8; 8 * 1024];

        let hello = burro_protocol::control::ShimFrame::Hello(self.hello.clone()).encode();
        if writer.write_all(&hello).await.is_err() {
            return Ended::Disconnected;
        }
        let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut reader, &mut lines, &mut chunk)).await;
        let mut written = match welcome {
            Ok(Some(ServerFrame::Welcome(welcome))) => {
                self.acknowledge(welcome.acked_seq);
                welcome.acked_seq
            }
            Ok(Some(ServerFrame::Reject(reason))) => {
                crate::shim_log!(self.job_id, "the server rejected this shim: {reason}");
                let _ = self.commands.send(Command::Rejected);
                return Ended::Finished;
            }
            Ok(Some(other)) => {
                crate::shim_log!(self.job_id, "expected WELCOME from the server, received {other:?}");
                return Ended::Disconnected;
            }
            Ok(None) => return Ended::Disconnected,
            Err(_) => {
                crate::shim_log!(self.job_id, "the server sent no WELCOME within {} s", HANDSHAKE_TIMEOUT.as_secs());
                return Ended::Disconnected;
            }
        };

        // Writes run on their own task so reading acknowledgements and
        // commands never waits for a slow server to take our frames.
        let (write_tx, mut write_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer_task = tokio::task::spawn_local(async move {
            while let Some(bytes) = write_rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });

        let ended = loop {
            // Replay and new frames alike: everything after what was written.
            let (buffer, last) = self.pending_after(written);
            if !buffer.is_empty() {
                if write_tx.send(buffer).is_err() {
                    break Ended::Disconnected;
                }
                written = last;
            }
            tokio::select! {
                _ = self.shared.new_frames.notified() => {}
                frame = read_frame(&mut reader, &mut lines, &mut chunk) => match frame {
                    Some(ServerFrame::Ack(seq)) => self.acknowledge(seq),
                    Some(ServerFrame::Kill(reason)) => { let _ = self.commands.send(Command::Kill(reason)); }
                    Some(ServerFrame::Send { conn, line }) => { let _ = self.commands.send(Command::Send { conn, line }); }
                    Some(ServerFrame::Bye) => { let _ = self.commands.send(Command::Bye); }
                    Some(ServerFrame::Reject(reason)) => {
                        crate::shim_log!(self.job_id, "the server rejected this shim: {reason}");
                        let _ = self.commands.send(Command::Rejected);
                        break Ended::Finished;
                    }
                    Some(ServerFrame::Welcome(_)) => {}
                    None => break Ended::Disconnected,
                },
            }
        };
        writer_task.abort();
        ended
    }
}

/// Reads the next server frame. Returns `None` at EOF or on an I/O error.
/// Malformed frames are logged and skipped.
///
/// # Cancel safety
///
/// Cancel safe: partial input stays in `lines`.
async fn read_frame(
    reader: &mut tokio::net::unix::OwnedReadHalf,
    lines: &mut LineBuffer,
    chunk: &mut [u8],
) -> Option<ServerFrame> {
    loop {
        while let Some(event) = lines.next_event() {
            match event {
                LineEvent::Line(line) => match ServerFrame::decode(&line) {
                    Ok(frame) => return Some(frame),
                    Err(err) => eprintln!("burro-shim: ignoring a control frame: {err}"),
                },
                LineEvent::Overflow { len } => {
                    eprintln!("burro-shim: ignoring a control frame of {len} bytes");
                }
            }
        }
        match reader.read(chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => lines.push(&chunk[..n]),
        }
    }
}
