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
/// Maximum control frame the shim accepts from the server.
const MAX_SERVER_FRAME: usize = 64 * 1024 * 1024;

/// Request from the server, passed to the supervisor loop.
#[derive(Debug)]
pub enum Command {
    Kill(String),
    Send { conn: u64, line: Vec<u8> },
    Bye,
    /// The server rejected the handshake; the reason was logged.
    Rejected,
}

/// Unacknowledged frames kept in memory; newer ones go to the spool file.
pub const MEMORY_LIMIT: usize = 512 * 1024;

/// Consecutive encoded frames numbered `first` to `last`, each a line
/// ending in `\n`, stored in `bytes` from `start` on. The bytes before
/// `start` contain acknowledged frames, which are skipped instead of moved.
pub struct Frames {
    first: u64,
    last: u64,
    start: usize,
    bytes: Vec<u8>,
}

impl Frames {
    fn new(first: u64, last: u64, bytes: Vec<u8>) -> Self {
        Frames { first, last, start: 0, bytes }
    }

    /// Returns the bytes of frames `first` to `last`.
    fn held(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Returns the bytes of the frames after `seq`.
    fn after(&self, seq: u64) -> &[u8] {
        let held = self.held();
        if seq < self.first {
            return held;
        }
        let skip = (seq - self.first) as usize;
        let end = memchr::memchr_iter(b'\n', held).nth(skip).map_or(held.len(), |at| at + 1);
        &held[end..]
    }
}

/// State shared between the session task and the supervisor loop.
pub struct Shared {
    /// The oldest unacknowledged frames, in sequence order.
    unacked: RefCell<VecDeque<Frames>>,
    /// Total size of `unacked`, in bytes.
    pub unacked_bytes: Cell<usize>,
    /// Newer unacknowledged frames, beyond [`MEMORY_LIMIT`].
    pub spool: RefCell<Option<crate::spool::Spool>>,
    /// When the server last acknowledged a frame or welcomed the shim.
    pub last_contact: Cell<tokio::time::Instant>,
    /// True between the server's `WELCOME` and the end of that connection.
    pub connected: Cell<bool>,
    /// Notified when acknowledgements free room in memory.
    pub room: Notify,
    new_frames: Notify,
}

/// Handle used by the supervisor loop to queue frames and receive commands.
pub struct SessionHandle {
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub shared: Rc<Shared>,
}

impl SessionHandle {
    /// Queues an encoded frame for delivery: in memory while there is room
    /// and nothing is spooled, in the spool file otherwise.
    pub fn send(&self, seq: u64, bytes: Vec<u8>) {
        self.send_frames(seq, seq, bytes);
    }

    /// Queues the encoded frames `first` to `last`, in one buffer, like
    /// [`send`](Self::send).
    pub fn send_frames(&self, first: u64, last: u64, bytes: Vec<u8>) {
        self.shared.queue(first, last, bytes);
    }
}

impl Shared {
    fn new(spool_path: Option<std::path::PathBuf>) -> Self {
        Shared {
            unacked: RefCell::new(VecDeque::new()),
            unacked_bytes: Cell::new(0),
            spool: RefCell::new(spool_path.map(crate::spool::Spool::new)),
            last_contact: Cell::new(tokio::time::Instant::now()),
            connected: Cell::new(false),
            room: Notify::new(),
            new_frames: Notify::new(),
        }
    }

    /// Queues the encoded frames `first` to `last` for delivery.
    fn queue(&self, first: u64, last: u64, bytes: Vec<u8>) {
        let shared = self;
        let mut spool = shared.spool.borrow_mut();
        let spooling = spool.as_ref().is_some_and(|s| s.pending() > 0);
        // While the server is connected, frames stay in memory. Spooled
        // frames come back only as acknowledgements make room, and the
        // server acknowledges nothing after a terminal message until the
        // exit, so a frame spooled then (the exit among them) would never be
        // sent. Memory stays bounded because the caller reads a running job
        // only while memory is below the limit, and an exited one for at
        // most the one-second drain limit.
        let full = !shared.connected.get() && shared.unacked_bytes.get() >= MEMORY_LIMIT;
        if let (true, Some(spool)) = (spooling || full, spool.as_mut()) {
            match spool.append(&bytes) {
                Ok(()) => return,
                Err(err) => crate::diag!("writing to the spool file failed: {err}; keeping the frame in memory"),
            }
        }
        drop(spool);
        shared.unacked_bytes.set(shared.unacked_bytes.get() + bytes.len());
        shared.unacked.borrow_mut().push_back(Frames::new(first, last, bytes));
        shared.new_frames.notify_one();
    }

    /// Returns the bytes waiting for acknowledgement, in memory and spooled.
    pub fn pending_bytes(&self) -> u64 {
        let spooled = self.spool.borrow().as_ref().map_or(0, |s| s.pending());
        self.unacked_bytes.get() as u64 + spooled
    }

    /// Returns true when the job's output may be read on. While the server
    /// is connected, that is as long as the frames waiting for it fit in
    /// memory, so a slow server slows the job down instead of costing spool
    /// writes. While it is away, up to `limit` bytes may wait in memory and
    /// in the spool file together.
    pub fn has_room(&self, limit: u64) -> bool {
        if self.connected.get() {
            let spooled = self.spool.borrow().as_ref().map_or(0, |s| s.pending());
            spooled == 0 && self.unacked_bytes.get() < MEMORY_LIMIT
        } else {
            self.pending_bytes() < limit
        }
    }

    /// Moves spooled frames back into memory while there is room.
    fn refill(&self) {
        let mut spool = self.spool.borrow_mut();
        let Some(spool) = spool.as_mut() else { return };
        let room = MEMORY_LIMIT.saturating_sub(self.unacked_bytes.get());
        if room == 0 || spool.pending() == 0 {
            return;
        }
        match spool.take(room) {
            Ok(frames) => {
                let mut unacked = self.unacked.borrow_mut();
                for frame in frames {
                    let seq = frame_seq(&frame);
                    self.unacked_bytes.set(self.unacked_bytes.get() + frame.len());
                    unacked.push_back(Frames::new(seq, seq, frame));
                }
                if !unacked.is_empty() {
                    self.new_frames.notify_one();
                }
            }
            Err(err) => crate::diag!("reading the spool file failed: {err}"),
        }
    }

    /// Removes the frames up to `acked` from memory. Returns true when a
    /// frame after `acked` remains in memory.
    fn drop_acked(&self, acked: u64) -> bool {
        let mut unacked = self.unacked.borrow_mut();
        while let Some(front) = unacked.front_mut() {
            if front.first > acked {
                return true;
            }
            if front.last > acked {
                // `acked` falls inside this buffer, so only the frames after it stay.
                let cut = front.held().len() - front.after(acked).len();
                front.start += cut;
                front.first = acked + 1;
                self.unacked_bytes.set(self.unacked_bytes.get() - cut);
                return true;
            }
            self.unacked_bytes.set(self.unacked_bytes.get() - front.held().len());
            unacked.pop_front();
        }
        false
    }

    /// Copies the frames after `written` into one buffer. Returns the buffer
    /// and the last sequence number in it.
    fn pending_after(&self, written: u64) -> (Vec<u8>, u64) {
        let unacked = self.unacked.borrow();
        // The queue is in sequence order, so the frames after `written` are
        // found by binary search instead of a scan of every unacknowledged frame.
        let first = unacked.partition_point(|frames| frames.last <= written);
        let mut buffer = Vec::new();
        let mut last = written;
        for frames in unacked.range(first..) {
            buffer.extend_from_slice(frames.after(written));
            last = frames.last;
        }
        (buffer, last)
    }

    /// Returns every unacknowledged frame, spooled ones included, in order.
    pub fn all_unacked(&self) -> Vec<u8> {
        let mut contents = Vec::new();
        for frames in self.unacked.borrow().iter() {
            contents.extend_from_slice(frames.held());
        }
        if let Some(spool) = self.spool.borrow_mut().as_mut() {
            match spool.peek_all() {
                Ok(spooled) => contents.extend_from_slice(&spooled),
                Err(err) => crate::diag!("reading the spool file failed: {err}"),
            }
        }
        contents
    }
}

/// Reads the sequence number of an encoded frame: `KIND SEQ ...`.
fn frame_seq(frame: &[u8]) -> u64 {
    frame
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|word| std::str::from_utf8(word).ok())
        .and_then(|text| text.trim_end().parse().ok())
        .unwrap_or(0)
}

/// Starts the session task. `spool_path` names the file for frames beyond
/// the memory limit; without it, every frame stays in memory.
pub fn start(job_id: Rc<str>, control_path: String, hello: Hello, spool_path: Option<std::path::PathBuf>) -> SessionHandle {
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let shared = Rc::new(Shared::new(spool_path));
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
        self.shared.room.notify_one();
        loop {
            if self.shared.drop_acked(acked) {
                return;
            }
            // Memory is empty up to `acked`: bring spooled frames back.
            let before = self.shared.unacked_bytes.get();
            self.shared.refill();
            if self.shared.unacked_bytes.get() == before {
                return;
            }
        }
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
                self.shared.connected.set(true);
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
            let (buffer, last) = self.shared.pending_after(written);
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
        self.shared.connected.set(false);
        // The supervisor loop may wait for room that only the spool gives
        // now that the server is away.
        self.shared.room.notify_one();
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
                    Err(err) => crate::diag!("ignoring a control frame: {err}"),
                },
                LineEvent::Overflow { len } => {
                    crate::diag!("ignoring a control frame of {len} bytes");
                }
            }
        }
        match reader.read(chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => lines.push(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(first: u64, last: u64) -> Vec<u8> {
        (first..=last).flat_map(|seq| format!("MSG {seq} 1 {{\"n\":{seq}}}\n").into_bytes()).collect()
    }

    #[tokio::test]
    async fn partial_ack_keeps_later_frames() {
        let shared = Shared::new(None);
        shared.queue(1, 3, frames(1, 3));
        shared.queue(4, 4, frames(4, 4));
        shared.queue(5, 9, frames(5, 9));
        let total = frames(1, 9).len();
        assert_eq!(shared.unacked_bytes.get(), total);

        // Frames after 2 are all still to be sent, from frame 3 on.
        assert_eq!(shared.pending_after(2), (frames(3, 9), 9));
        assert_eq!(shared.pending_after(6), (frames(7, 9), 9));
        assert_eq!(shared.pending_after(9), (Vec::new(), 9));

        assert!(shared.drop_acked(6), "frames 7 to 9 remain");
        assert_eq!(shared.all_unacked(), frames(7, 9));
        assert_eq!(shared.unacked_bytes.get(), frames(7, 9).len());
        // A replay after acknowledgement 6 sends exactly frames 7 to 9.
        assert_eq!(shared.pending_after(6), (frames(7, 9), 9));

        assert!(!shared.drop_acked(9), "nothing remains");
        assert_eq!(shared.unacked_bytes.get(), 0);
        assert!(shared.all_unacked().is_empty());
    }
}
