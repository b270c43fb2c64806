//! The control socket: shims connect, authenticate with their job's token,
//! and forward frames that are processed in order and acknowledged.

use super::{constant_time_eq, Inner};
use crate::clock::BatchClock;
use crate::events::EventBatch;
use burro_protocol::control::{ServerFrame, ShimFrame, ShimFrameRef, CONTROL_VERSION};
use burro_protocol::{LineBuffer, LineEvent, LineSlice};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum time between acknowledgements while frames are being processed.
const ACK_INTERVAL: Duration = Duration::from_millis(250);
/// Time since the last acknowledgement after which a batch of heartbeats
/// alone is acknowledged. Every other frame is acknowledged at once, and an
/// acknowledgement covers the heartbeats before it, so a sleeping job costs
/// one write per interval instead of one per heartbeat.
const HEARTBEAT_ACK_INTERVAL: Duration = Duration::from_secs(30);
/// Maximum size of heartbeat frames left unacknowledged. The shim stops
/// reading from the job when its unacknowledged frames reach 512 KiB, and a
/// shim that sends nothing more would never get the acknowledgement.
const HEARTBEAT_ACK_BYTES: usize = 64 * 1024;
/// Job events gathered from frames before they are emitted together. The
/// events of a read are emitted before the next read, in batches of at
/// most this many.
pub(super) const EVENT_BATCH: usize = 256;
/// First and largest size of a connection's read buffer. The buffer doubles
/// whenever a read fills it, so a quiet job's connection holds a few KiB and
/// a busy one reads in large blocks.
const READ_FIRST: usize = 4 * 1024;
const READ_MOST: usize = 64 * 1024;
/// Frames are a job message plus a short prefix.
const FRAME_OVERHEAD: usize = 64;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Binds the control socket, replacing a stale socket file but never one a
/// live server still accepts on.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another burro server is listening on the control socket {}; stop it or set a different [external] socket_dir",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("removing the stale control socket {} failed: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("binding the control socket {} failed: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("setting mode 0600 on the control socket {} failed: {e}", path.display()))?;
    Ok(listener)
}

pub(crate) async fn accept_loop(inner: Arc<Inner>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(inner.clone(), stream));
            }
            Err(err) => {
                tracing::warn!(error = %err, "accepting a shim connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(inner: Arc<Inner>, stream: UnixStream) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // Writes run on their own task so a shim that reads slowly never blocks
    // the processing of its frames.
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });

    let mut lines = LineBuffer::new(inner.settings.max_message_bytes + FRAME_OVERHEAD);
    // Not zeroed: a zeroed allocation may be written in full by the
    // allocator, which makes every page of it resident at once.
    let mut chunk: Vec<u8> = Vec::with_capacity(READ_FIRST);

    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut reader, &mut lines, &mut chunk)).await {
        Ok(Some(ShimFrame::Hello(hello))) => hello,
        Ok(Some(_)) => {
            tracing::warn!("rejected a control connection: the first frame was not HELLO");
            let _ = tx.send(ServerFrame::Reject("the first frame must be HELLO".into()).encode());
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::warn!("closed a control connection that sent no HELLO within 10 s");
            return;
        }
    };
    if hello.version != CONTROL_VERSION {
        tracing::error!(job_id = %hello.job_id, version = hello.version, "rejected a shim that speaks control version {}, this server speaks {CONTROL_VERSION}", hello.version);
        let reason = format!("unsupported control version {}; this server speaks {CONTROL_VERSION}", hello.version);
        let _ = tx.send(ServerFrame::Reject(reason).encode());
        return;
    }
    let run = inner.runs.lock().expect("runs lock").get(&hello.job_id).cloned();
    let run = match run {
        Some(run) if constant_time_eq(run.token.as_bytes(), hello.token.as_bytes()) && run.attempt == hello.attempt => run,
        _ => {
            tracing::warn!(job_id = %hello.job_id, shim_pid = hello.shim_pid, "rejected a shim: unknown job or invalid token");
            let _ = tx.send(ServerFrame::Reject("unknown job or invalid token".into()).encode());
            return;
        }
    };

    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let reconnected = run.attach(session, tx.clone());
    run.on_hello(&inner, &hello);
    if reconnected {
        tracing::info!(job_id = %run.job_id, job_name = %run.name, shim_pid = hello.shim_pid, "job reconnected after a server restart");
        run.note("info", "the server restarted; the job's shim reconnected".into());
        inner.live.process_state(&run.job_id, crate::store::ProcessState::Running);
        inner
            .events
            .emit("job.reconnected", serde_json::json!({"jobId": run.job_id, "name": run.name, "attempt": run.attempt}))
            .await;
    }
    tracing::debug!(job_id = %run.job_id, shim_pid = hello.shim_pid, pid = ?hello.child_pid, "shim connected");

    let mut last_ack = std::time::Instant::now();
    // Heartbeat frames processed since the last acknowledgement, in bytes.
    let mut quiet_bytes = 0usize;
    let mut batch = EventBatch::new();
    loop {
        // Process everything already buffered, then acknowledge. Long batches
        // (a slow event subscriber) are acknowledged as they go, so the shim
        // keeps hearing from a live server and does not give up waiting.
        let mut processed_any = false;
        let mut urgent = false;
        let mut clock = BatchClock::now();
        while let Some(event) = lines.next_slice() {
            match event {
                LineSlice::Line(line) => {
                    // The frame's bytes and its newline.
                    let size = line.len() + 1;
                    match ShimFrameRef::decode(line) {
                        Ok(frame) => {
                            if run.already_processed(frame.seq()) {
                                continue;
                            }
                            let (heartbeat, mut waited) = poll_tracking_waits(run.process(&inner, frame, &clock, &mut batch)).await;
                            if batch.len() >= EVENT_BATCH {
                                waited |= poll_tracking_waits(run.emit_events(&inner, &mut batch)).await.1;
                            }
                            processed_any = true;
                            if heartbeat {
                                quiet_bytes += size;
                            } else {
                                urgent = true;
                            }
                            // A frame that waited, for example on a full
                            // subscriber queue, may have taken long. The next
                            // frame reads the clock again, so heartbeats never
                            // lag by more than one wait.
                            if waited {
                                clock = BatchClock::now();
                            } else {
                                clock.tick();
                            }
                            if urgent && clock.instant.saturating_duration_since(last_ack) >= ACK_INTERVAL {
                                run.emit_events(&inner, &mut batch).await;
                                run.flush_log();
                                let _ = tx.send(ServerFrame::Ack(run.ackable_seq()).encode());
                                last_ack = clock.instant;
                                quiet_bytes = 0;
                            }
                        }
                        Err(err) => tracing::warn!(job_id = %run.job_id, error = %err, "ignored an invalid control frame"),
                    }
                }
                LineSlice::Overflow { len } => {
                    tracing::warn!(job_id = %run.job_id, bytes = len, "ignored a control frame over the size limit");
                }
            }
        }
        run.emit_events(&inner, &mut batch).await;
        let heartbeats_due = quiet_bytes >= HEARTBEAT_ACK_BYTES || last_ack.elapsed() >= HEARTBEAT_ACK_INTERVAL;
        if processed_any && (urgent || heartbeats_due) {
            // Log lines become readable through the API once acknowledged.
            run.flush_log();
            let _ = tx.send(ServerFrame::Ack(run.ackable_seq()).encode());
            last_ack = std::time::Instant::now();
            quiet_bytes = 0;
        }
        if !read_chunk(&mut reader, &mut chunk, &mut lines).await {
            break;
        }
    }
    tracing::debug!(job_id = %run.job_id, "shim disconnected");
    run.detach(session);
}

/// Runs `future` to its end and returns its output and whether it was ever
/// pending, that is, whether it had to wait.
async fn poll_tracking_waits<T>(future: impl std::future::Future<Output = T>) -> (T, bool) {
    let mut future = std::pin::pin!(future);
    let mut waited = false;
    let output = std::future::poll_fn(|context| {
        let poll = future.as_mut().poll(context);
        waited |= poll.is_pending();
        poll
    })
    .await;
    (output, waited)
}

/// Reads what the shim has sent into `lines`, through `chunk`, which it
/// grows when the read filled it. Returns false at EOF or on an error.
async fn read_chunk(reader: &mut tokio::net::unix::OwnedReadHalf, chunk: &mut Vec<u8>, lines: &mut LineBuffer) -> bool {
    chunk.clear();
    let room = chunk.capacity();
    match reader.read_buf(chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            lines.push(&chunk[..n]);
            if n == room && room < READ_MOST {
                chunk.clear();
                chunk.reserve(room * 2);
            }
            true
        }
    }
}

/// Reads the next frame; `None` at EOF. Used only for the handshake.
async fn next_frame(
    reader: &mut tokio::net::unix::OwnedReadHalf,
    lines: &mut LineBuffer,
    chunk: &mut Vec<u8>,
) -> Option<ShimFrame> {
    loop {
        if let Some(event) = lines.next_event() {
            return match event {
                LineEvent::Line(line) => ShimFrame::decode(&line).ok(),
                LineEvent::Overflow { .. } => None,
            };
        }
        if !read_chunk(reader, chunk, lines).await {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_buffer_grows_only_when_filled() {
        let (mut shim, server) = UnixStream::pair().expect("socket pair");
        let (mut reader, _writer) = server.into_split();
        let mut lines = LineBuffer::new(1 << 20);
        let mut chunk = Vec::with_capacity(READ_FIRST);

        shim.write_all(b"{\"short\":1}\n").await.expect("write");
        assert!(read_chunk(&mut reader, &mut chunk, &mut lines).await);
        assert!(matches!(lines.next_event(), Some(LineEvent::Line(line)) if line == b"{\"short\":1}"));
        assert!(chunk.capacity() < 2 * READ_FIRST, "a short frame left a buffer of {} bytes", chunk.capacity());

        // 300 KiB in lines of 1 KiB: more than the socket holds, so reads fill the buffer.
        let line = [vec![b'x'; 1023], vec![b'\n']].concat();
        let writer = tokio::spawn(async move {
            for _ in 0..300 {
                shim.write_all(&line).await.expect("write");
            }
            shim
        });
        let mut received = 0;
        while received < 300 {
            assert!(read_chunk(&mut reader, &mut chunk, &mut lines).await, "the connection ended early");
            while let Some(event) = lines.next_event() {
                let LineEvent::Line(line) = event else { panic!("a 1 KiB line was reported as over the limit") };
                assert_eq!(line.len(), 1023, "line {received} has the wrong length");
                assert!(line.iter().all(|&byte| byte == b'x'), "line {received} was corrupted");
                received += 1;
            }
        }
        drop(writer.await.expect("writer"));
        assert!(chunk.capacity() >= READ_MOST, "a flood left the buffer at {} bytes", chunk.capacity());
        assert!(chunk.capacity() < 2 * READ_MOST, "the buffer grew past its limit to {} bytes", chunk.capacity());
    }
}
