//! The server's record of one running external attempt, and how each frame
//! its shim forwards changes it.

use super::Inner;
use crate::clock::{now_ms, BatchClock};
use crate::events::EventBatch;
use crate::jobs::{ExitSummary, ExternalJob, KillReason, LogEntry, LogWriter, Terminal};
use crate::store::{Job, ProcessState};
use burro_protocol::control::{Hello, ServerFrame, ShimFrame, ShimFrameRef, Welcome, CONTROL_VERSION};
use burro_protocol::{parse_line, JobMessage};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Maximum number of stdout and stderr lines of one job sent as
/// `job.external.log` events per second. Lines over this rate are still
/// written to the job log.
pub(crate) const OUTPUT_EVENTS_PER_SECOND: u32 = 1000;

/// Per-second budget of output events of one job. Lines over the budget are
/// counted, and the count is reported once the second is over.
struct OutputRate {
    limit: u32,
    window_start: Instant,
    sent: u32,
    dropped: u64,
}

impl OutputRate {
    fn new(limit: u32, now: Instant) -> Self {
        OutputRate {
            limit,
            window_start: now,
            sent: 0,
            dropped: 0,
        }
    }

    /// Starts a new window when the current one is a second old. Returns
    /// the number of lines dropped in the window that ended, if any.
    fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window_start) < Duration::from_secs(1) {
            return None;
        }
        self.window_start = now;
        self.sent = 0;
        self.take_dropped()
    }

    /// Counts one line; returns true when it may be sent as an event.
    fn admit(&mut self) -> bool {
        if self.sent < self.limit {
            self.sent += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Returns and resets the number of lines dropped so far, if any.
    fn take_dropped(&mut self) -> Option<u64> {
        match std::mem::take(&mut self.dropped) {
            0 => None,
            dropped => Some(dropped),
        }
    }
}

/// Result of a heartbeat check.
pub(crate) enum Liveness {
    Healthy,
    /// Became stale at this check.
    Stale { since_ms: u64 },
    /// Silent for twice the heartbeat timeout.
    Dead { since_ms: u64 },
    /// Without a shim connection for the reconnect window, so the shim is
    /// presumed gone. `connected` is true when it had connected before.
    Lost { since_ms: u64, connected: bool },
}

/// Time between the acknowledgements sent while a batch of job events
/// waits for slow subscribers.
const ACK_INTERVAL_WHILE_DELIVERING: Duration = Duration::from_millis(250);

struct State {
    summary: ExitSummary,
    exit_tx: Option<oneshot::Sender<ExitSummary>>,
    last_seen: Instant,
    stale: bool,
    /// True while this job's events wait for slow subscribers.
    delivering: bool,
    processed_seq: u64,
    /// Connections that announced protocol 2 and accept server lines.
    protocol2: HashSet<u64>,
    control: Option<(u64, mpsc::UnboundedSender<Vec<u8>>)>,
    shim_exited: bool,
    /// A KILL to send as soon as the shim is connected.
    kill_pending: Option<String>,
    log: LogWriter,
    output_rate: OutputRate,
    /// True for a run taken over after a server restart, until its shim
    /// reconnects.
    awaiting_reconnect: bool,
    ever_attached: bool,
    /// When the run last lost its shim connection, or when its shim was
    /// started if it has not connected yet. `None` while connected and while
    /// the shim is being started.
    disconnected_since: Option<Instant>,
    /// Sequence number of the first processed frame that decides the end.
    first_decisive_seq: Option<u64>,
    /// The exit record this run was finished from, removed on release.
    exit_record: Option<std::path::PathBuf>,
    /// The job's pid and its start time in clock ticks after boot, as the
    /// shim reported them.
    job_process: Option<(u32, u64)>,
    /// Liveness and progress of the messages processed since the last
    /// [`Run::flush_live`].
    pending_live: PendingLive,
}

/// The latest liveness and progress of a job's recent messages. Only the
/// latest values matter to the live state, so it takes them before each
/// emit of the job's events (at least once per read), not per message.
#[derive(Default)]
struct PendingLive {
    /// When the latest message arrived, if one did.
    seen_ms: Option<i64>,
    percent: Option<f64>,
    /// The latest progress message that had one.
    message: Option<String>,
}

pub(crate) struct Run {
    pub job_id: String,
    pub name: String,
    pub attempt: u32,
    pub token: String,
    pub heartbeat_timeout: Duration,
    pub kill_grace: Duration,
    pub cancel_grace: Duration,
    /// How long the run may go without a shim connection before it is
    /// lost. A live shim reconnects within about a second.
    pub reconnect_window: Duration,
    state: Mutex<State>,
}

impl Run {
    pub fn new(
        job: &Job,
        external: &ExternalJob,
        cancel_grace: Duration,
        reconnect_window: Duration,
        token: String,
        log: LogWriter,
        exit_tx: oneshot::Sender<ExitSummary>,
    ) -> Self {
        Run {
            job_id: job.id.clone(),
            name: job.name.clone(),
            attempt: job.attempts,
            token,
            heartbeat_timeout: external.heartbeat_timeout,
            kill_grace: external.kill_grace,
            cancel_grace,
            reconnect_window,
            state: Mutex::new(State {
                summary: ExitSummary {
                    timeout_ms: job.timeout_ms.map(|ms| ms.max(0) as u64),
                    ..Default::default()
                },
                exit_tx: Some(exit_tx),
                last_seen: Instant::now(),
                stale: false,
                delivering: false,
                processed_seq: 0,
                protocol2: HashSet::new(),
                control: None,
                shim_exited: false,
                kill_pending: None,
                log,
                output_rate: OutputRate::new(OUTPUT_EVENTS_PER_SECOND, Instant::now()),
                awaiting_reconnect: false,
                ever_attached: false,
                disconnected_since: None,
                first_decisive_seq: None,
                exit_record: None,
                job_process: None,
                pending_live: PendingLive::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("run state lock")
    }

    /// Hands the end of the attempt to the executor, once.
    pub fn deliver(&self, summary: ExitSummary) {
        if let Some(tx) = self.lock().exit_tx.take() {
            let _ = tx.send(summary);
        }
    }

    /// Sends a frame to the shim if it is connected.
    pub fn send(&self, frame: ServerFrame) {
        if let Some((_, tx)) = &self.lock().control {
            let _ = tx.send(frame.encode());
        }
    }

    pub fn flush_log(&self) {
        self.lock().log.flush();
    }

    /// Asks the shim to terminate the job (SIGTERM, then SIGKILL after the
    /// kill grace). A cancel is remembered even when the job already ended.
    /// Connections that announced protocol 2 first receive a `cancel`
    /// message, and SIGTERM follows after the cancel grace.
    pub fn request_kill(self: &Arc<Self>, reason: KillReason, cancel: bool) {
        let mut state = self.lock();
        if cancel {
            state.summary.cancel_requested = true;
        }
        if state.summary.report.is_some() || state.summary.kill_reason.is_some() {
            return;
        }
        state.summary.kill_reason = Some(reason);

        let graceful = reason == KillReason::Cancel && !state.protocol2.is_empty() && !self.cancel_grace.is_zero();
        if let (true, Some((_, tx))) = (graceful, &state.control) {
            let line = json!({"type": "cancel", "jobId": self.job_id, "reason": "cancel requested"}).to_string().into_bytes();
            for conn in &state.protocol2 {
                let _ = tx.send(ServerFrame::Send { conn: *conn, line: line.clone() }.encode());
            }
            drop(state);
            let run = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(run.cancel_grace).await;
                let mut state = run.lock();
                if state.summary.report.is_none() {
                    Self::send_kill(&mut state, reason);
                }
            });
            return;
        }
        Self::send_kill(&mut state, reason);
    }

    fn send_kill(state: &mut State, reason: KillReason) {
        let frame = ServerFrame::Kill(reason.as_str().to_string()).encode();
        match &state.control {
            Some((_, tx)) => {
                let _ = tx.send(frame);
            }
            // NOTE: a shim that never connects (stopped, or stuck before its
            // spec) never gets this kill; its attempt ends only when it is lost.
            None => state.kill_pending = Some(reason.as_str().to_string()),
        }
    }

    /// Judges liveness by the time since the last message, with the
    /// server's clock. A job whose shim is disconnected is judged by how
    /// long it has been without a connection instead. A run taken over
    /// after a restart is left to its own reconnect deadline, because that
    /// deadline also looks for an exit record.
    pub fn check_liveness(&self) -> Liveness {
        let mut state = self.lock();
        if state.summary.report.is_some() || state.exit_tx.is_none() {
            return Liveness::Healthy;
        }
        if state.control.is_none() {
            if state.awaiting_reconnect {
                return Liveness::Healthy;
            }
            return match state.disconnected_since {
                Some(since) if since.elapsed() >= self.reconnect_window => Liveness::Lost {
                    since_ms: since.elapsed().as_millis() as u64,
                    connected: state.ever_attached,
                },
                _ => Liveness::Healthy,
            };
        }
        if state.summary.kill_reason.is_some() || state.delivering {
            return Liveness::Healthy;
        }
        let elapsed = state.last_seen.elapsed();
        let since_ms = elapsed.as_millis() as u64;
        if elapsed >= self.heartbeat_timeout * 2 {
            return Liveness::Dead { since_ms };
        }
        if elapsed >= self.heartbeat_timeout && !state.stale {
            state.stale = true;
            return Liveness::Stale { since_ms };
        }
        Liveness::Healthy
    }

    /// Records that the shim was started: from now on, until it connects,
    /// the run counts as disconnected.
    pub fn shim_started(&self) {
        let mut state = self.lock();
        if state.control.is_none() && !state.ever_attached {
            state.disconnected_since = Some(Instant::now());
        }
    }

    /// Marks a run taken over after a restart: its shim's first connection
    /// emits `job.reconnected`.
    pub fn expect_reconnect(&self) {
        self.lock().awaiting_reconnect = true;
    }

    /// Returns true when a shim has connected for this run.
    pub fn ever_attached(&self) -> bool {
        self.lock().ever_attached
    }

    /// Records the exit record applied to this run.
    pub fn set_exit_record(&self, path: std::path::PathBuf) {
        self.lock().exit_record = Some(path);
    }

    /// Takes the exit record path, for removal once the end is stored.
    pub fn take_exit_record(&self) -> Option<std::path::PathBuf> {
        self.lock().exit_record.take()
    }

    /// Appends a line of the server's own to the job log.
    pub fn note(&self, level: &str, message: String) {
        let entry = self.entry("log", level, message);
        let mut state = self.lock();
        state.log.append(&entry);
        state.log.flush();
    }

    /// Hands over the end of a run whose shim never came back.
    pub fn deliver_lost_reason(&self, reason: String) {
        let mut state = self.lock();
        if let Some(tx) = state.exit_tx.take() {
            state.summary.lost = Some(reason);
            state.log.flush();
            let _ = tx.send(state.summary.clone());
        }
    }

    /// Attaches a control session. The heartbeat clock restarts here, so a
    /// reconnect never kills a healthy job. Returns true when this is the
    /// first connection after a server restart.
    pub fn attach(&self, session: u64, tx: mpsc::UnboundedSender<Vec<u8>>) -> bool {
        let mut state = self.lock();
        state.last_seen = Instant::now();
        state.stale = false;
        // WELCOME goes first: the shim reads nothing else before it.
        let welcome = Welcome {
            version: CONTROL_VERSION,
            acked_seq: state.processed_seq,
        };
        let _ = tx.send(ServerFrame::Welcome(welcome).encode());
        if let Some(reason) = state.kill_pending.take() {
            let _ = tx.send(ServerFrame::Kill(reason).encode());
        }
        state.control = Some((session, tx));
        state.ever_attached = true;
        state.disconnected_since = None;
        std::mem::take(&mut state.awaiting_reconnect)
    }

    /// Detaches a control session that ended.
    pub fn detach(&self, session: u64) {
        let mut state = self.lock();
        if state.control.as_ref().is_some_and(|(id, _)| *id == session) {
            state.control = None;
            state.disconnected_since = Some(Instant::now());
        }
        if state.shim_exited {
            Self::deliver_lost(&mut state, &self.job_id);
        }
    }

    /// Records that the shim process is gone. Without an exit report and
    /// without a connection left to read, the attempt is lost. A shim that
    /// died before the job's exit may have left the job running unsupervised,
    /// so the job process is terminated.
    pub fn shim_exited(self: &Arc<Self>, _inner: &Inner) {
        self.terminate_orphan("the job's shim exited without reporting the job's exit");
        let mut state = self.lock();
        state.shim_exited = true;
        if state.control.is_none() {
            Self::deliver_lost(&mut state, &self.job_id);
        }
    }

    /// Terminates the job process when its shim is gone, or presumed gone,
    /// before it reported the job's exit, because nothing else would stop it
    /// and a retry would run beside it. `reason` starts the note in the
    /// job's log.
    pub fn terminate_orphan(self: &Arc<Self>, reason: &str) {
        let orphan = {
            let state = self.lock();
            match state.summary.report {
                None => state.job_process,
                Some(_) => None,
            }
        };
        let Some((pid, start_ticks)) = orphan else { return };
        self.note("error", format!("{reason}; terminating the job process {pid} if it still runs"));
        let run = self.clone();
        tokio::spawn(async move {
            let outcome = super::orphan::terminate(run.job_id.clone(), pid, start_ticks, run.kill_grace).await;
            run.note("error", outcome.describe(pid, run.kill_grace));
        });
    }

    fn deliver_lost(state: &mut State, job_id: &str) {
        if let Some(tx) = state.exit_tx.take() {
            tracing::warn!(job_id = %job_id, "the job's shim exited without reporting the job's exit");
            state.log.flush();
            let _ = tx.send(state.summary.clone());
        }
    }

    /// Returns true when `seq` was processed already (a replay).
    pub fn already_processed(&self, seq: u64) -> bool {
        seq <= self.lock().processed_seq
    }

    /// Returns the highest sequence number that may be acknowledged. Frames
    /// that decide the job's end (the terminal message and the exit) only
    /// change memory until that end is stored, so they and everything after
    /// them stay unacknowledged. `BYE` confirms them instead, and a server
    /// killed in between has them replayed to its successor.
    // NOTE: which connections announced protocol 2 is not replayed in this
    // way, so after a restart a cancel reaches such a job as SIGTERM.
    pub fn ackable_seq(&self) -> u64 {
        let state = self.lock();
        match state.first_decisive_seq {
            Some(decisive) => state.processed_seq.min(decisive - 1),
            None => state.processed_seq,
        }
    }

    fn mark_decisive(state: &mut State, seq: u64) {
        if state.first_decisive_seq.is_none() {
            state.first_decisive_seq = Some(seq);
        }
    }

    /// Applies the handshake: records the job's pid in the live state,
    /// which the next flush or the attempt's end writes to the store, and in
    /// the run, for a shim that dies before the job.
    pub fn on_hello(&self, inner: &Inner, hello: &Hello) {
        inner.live.pid(&self.job_id, hello.child_pid.map(i64::from));
        // A shim older than the start time field leaves the server no safe
        // way to find its job again, so such a job is never signalled.
        if let (Some(pid), Some(ticks)) = (hello.child_pid, hello.child_start_ticks) {
            self.lock().job_process = Some((pid, ticks));
        }
    }

    /// Applies one frame forwarded by the shim, received at `clock`. Returns
    /// true when it was a heartbeat and nothing else, which needs no prompt
    /// acknowledgement.
    ///
    /// Job events go to `batch`, which the caller emits. An `Exit` frame
    /// emits the batch before it ends the attempt, so every event of the
    /// attempt precedes the events of its end.
    pub async fn process(self: &Arc<Self>, inner: &Inner, frame: ShimFrameRef<'_>, clock: &BatchClock, batch: &mut EventBatch) -> bool {
        let seq = frame.seq();
        let due = self.lock().output_rate.roll(clock.instant);
        let reported_drops = due.is_some();
        if let Some(dropped) = due {
            self.report_dropped(seq, dropped, clock, batch);
        }
        let heartbeat = match frame {
            ShimFrameRef::Other(frame) => self.on_other_frame(inner, frame, clock, batch).await,
            payload => self.on_payload(inner, &payload, clock, batch),
        };
        self.lock().processed_seq = seq;
        heartbeat && !reported_drops
    }

    /// Applies a `MSG`, `OUT` or `ERR` frame. Returns true for a heartbeat
    /// message. [`ShimFrameRef::Other`] goes to [`Run::on_other_frame`].
    fn on_payload(self: &Arc<Self>, inner: &Inner, frame: &ShimFrameRef<'_>, clock: &BatchClock, batch: &mut EventBatch) -> bool {
        match *frame {
            ShimFrameRef::Message { seq, conn, line } => self.on_message(inner, seq, conn, line, clock, batch),
            ShimFrameRef::Stdout { seq, line } => {
                self.on_output(seq, "stdout", "info", line, clock, batch);
                false
            }
            ShimFrameRef::Stderr { seq, line } => {
                self.on_output(seq, "stderr", "error", line, clock, batch);
                false
            }
            ShimFrameRef::Other(_) => false,
        }
    }

    /// Applies a frame without a borrowed payload: `HELLO`, `DROP`, `EXIT`,
    /// or a payload frame that came owned. Returns true for a heartbeat
    /// message.
    async fn on_other_frame(self: &Arc<Self>, inner: &Inner, frame: ShimFrame, clock: &BatchClock, batch: &mut EventBatch) -> bool {
        match frame {
            ShimFrame::Hello(_) => false,
            ShimFrame::Message { .. } | ShimFrame::Stdout { .. } | ShimFrame::Stderr { .. } => {
                self.on_payload(inner, &ShimFrameRef::from(&frame), clock, batch)
            }
            ShimFrame::Oversize { conn, len, .. } => {
                tracing::error!(job_id = %self.job_id, job_name = %self.name, conn, bytes = len, "closed a job connection: message line over max_message_bytes");
                // Not decisive for the job's end, because the shim's exit
                // report repeats the first oversize length. So this frame is
                // acknowledged at once and the job's later messages keep flowing.
                let mut state = self.lock();
                state.summary.oversize.get_or_insert(len);
                let what = if conn == 0 { "the rest of that line on the message pipe was skipped" } else { "its connection was closed" };
                let entry = self.entry("log", "error", format!("message over the size limit ({len} bytes); {what}"));
                state.log.append(&entry);
                false
            }
            ShimFrame::Exit { seq, report } => {
                let left = self.lock().output_rate.take_dropped();
                if let Some(dropped) = left {
                    self.report_dropped(seq, dropped, clock, batch);
                }
                self.emit_events(inner, batch).await;
                tracing::debug!(job_id = %self.job_id, exit_code = ?report.code, signal = ?report.signal, elapsed_ms = report.elapsed_ms, "job process exited");
                let mut state = self.lock();
                Self::mark_decisive(&mut state, seq);
                if let Some(len) = report.oversize {
                    state.summary.oversize.get_or_insert(len);
                }
                state.summary.report = Some(report);
                state.log.flush();
                let summary = state.summary.clone();
                if let Some(tx) = state.exit_tx.take() {
                    let _ = tx.send(summary);
                }
                false
            }
        }
    }

    /// Hands the liveness and progress of the messages processed since the
    /// last call to the live state, in one update.
    fn flush_live(&self, inner: &Inner) {
        let pending = std::mem::take(&mut self.lock().pending_live);
        let Some(seen_ms) = pending.seen_ms else { return };
        match pending.percent {
            Some(percent) => inner.live.progress_at(&self.job_id, seen_ms, percent, pending.message.as_deref()),
            None => inner.live.heartbeat(&self.job_id, seen_ms),
        }
    }

    /// Hands the pending live values to the live state, then emits the job
    /// events of `batch`. The time this takes counts as a sign of life:
    /// while subscribers are slow to take the job's events, the job waits on
    /// the server, and must be neither reported stale nor killed as dead for
    /// it.
    ///
    /// While the emit waits, the frames processed so far are acknowledged
    /// every [`ACK_INTERVAL_WHILE_DELIVERING`]. A shim whose job has exited
    /// gives up `shim_linger` after the last acknowledgement, and a batch
    /// of 256 events can take longer than that to reach a slow subscriber.
    pub async fn emit_events(&self, inner: &Inner, batch: &mut EventBatch) {
        // A subscriber that reads the job after one of these events must
        // find progress at least as new as the event's.
        self.flush_live(inner);
        if batch.is_empty() {
            return;
        }
        struct Delivering<'a>(&'a Run);
        impl Drop for Delivering<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                state.delivering = false;
                state.last_seen = state.last_seen.max(Instant::now());
            }
        }
        self.lock().delivering = true;
        let _delivering = Delivering(self);

        let mut emit = std::pin::pin!(inner.events.emit_batch(batch));
        // Most batches go out at once, and those need no timer.
        if futures::poll!(emit.as_mut()).is_ready() {
            return;
        }
        let mut acknowledge = tokio::time::interval(ACK_INTERVAL_WHILE_DELIVERING);
        acknowledge.reset();
        loop {
            tokio::select! {
                () = emit.as_mut() => return,
                _ = acknowledge.tick() => {
                    self.flush_log();
                    self.send(ServerFrame::Ack(self.ackable_seq()));
                }
            }
        }
    }

    fn entry(&self, stream: &str, level: &str, message: String) -> LogEntry {
        LogEntry {
            ts: now_ms(),
            attempt: self.attempt,
            stream: stream.into(),
            level: level.into(),
            message,
            data: None,
        }
    }

    fn on_output(&self, seq: u64, stream: &str, level: &str, line: &[u8], clock: &BatchClock, batch: &mut EventBatch) {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        let send = {
            let mut state = self.lock();
            state.log.append(&self.entry(stream, level, text.clone()));
            state.output_rate.admit()
        };
        if !send {
            return;
        }
        batch.push(
            "job.external.log",
            json!({"jobId": self.job_id, "name": self.name, "level": level, "message": text, "data": Value::Null, "stream": stream, "attempt": self.attempt, "seq": seq}),
            clock.ms,
        );
    }

    /// Emits the one `log` event that counts the output lines sent to the
    /// job log but not as events.
    fn report_dropped(&self, seq: u64, dropped: u64, clock: &BatchClock, batch: &mut EventBatch) {
        tracing::debug!(job_id = %self.job_id, dropped, "output lines over the event rate were not sent as events");
        let message = format!("{dropped} output lines over {OUTPUT_EVENTS_PER_SECOND} per second were written to the job log but not sent as events");
        batch.push(
            "job.external.log",
            json!({"jobId": self.job_id, "name": self.name, "level": "warn", "message": message, "data": {"dropped": dropped}, "stream": "log", "attempt": self.attempt, "seq": seq}),
            clock.ms,
        );
    }

    /// Processes one message line of the job. Returns true when it was a
    /// heartbeat.
    fn on_message(self: &Arc<Self>, inner: &Inner, seq: u64, conn: u64, line: &[u8], clock: &BatchClock, batch: &mut EventBatch) -> bool {
        let parsed = match parse_line(line) {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::warn!(job_id = %self.job_id, job_name = %self.name, conn, error = %err, "rejected a message line");
                return false;
            }
        };
        if parsed.job_id != self.job_id {
            tracing::warn!(job_id = %self.job_id, message_job_id = %parsed.job_id, "rejected a message for another job on this job's socket");
            return false;
        }
        let now = clock.ms;
        {
            let mut state = self.lock();
            // A reading taken before the shim reattached must not move the
            // heartbeat clock back.
            state.last_seen = state.last_seen.max(clock.instant);
            state.stale = false;
            if state.summary.terminal.is_some() {
                tracing::debug!(job_id = %self.job_id, kind = parsed.message.kind(), "ignored a message after the job's terminal message");
                return false;
            }
            // Every message counts as a heartbeat of the live state.
            let pending = &mut state.pending_live;
            pending.seen_ms = Some(now);
            if let JobMessage::Progress { percent, message, .. } = &parsed.message {
                pending.percent = Some(*percent);
                if let Some(message) = message {
                    pending.message = Some(message.clone());
                }
            }
        }
        if let Some(raw) = parsed.clamped_percent {
            tracing::warn!(job_id = %self.job_id, percent = raw, "progress percent outside 0-100 was clamped");
        }

        let (id, name, attempt) = (&self.job_id, &self.name, self.attempt);
        let heartbeat = matches!(parsed.message, JobMessage::Heartbeat);
        match parsed.message {
            JobMessage::Started { protocol } => {
                if protocol.unwrap_or(1) >= 2 {
                    self.lock().protocol2.insert(conn);
                }
                inner.live.process_state(id, ProcessState::Running);
                batch.push("job.external.spawned", json!({"jobId": id, "name": name, "attempt": attempt, "seq": seq}), now);
            }
            JobMessage::Progress { percent, message, data } => {
                batch.push(
                    "job.external.progress",
                    json!({"jobId": id, "name": name, "percent": percent, "message": message, "data": data, "attempt": attempt, "seq": seq}),
                    now,
                );
            }
            JobMessage::Heartbeat => {}
            JobMessage::Log { level, message, data } => {
                let mut entry = self.entry("log", level.as_str(), message.clone());
                entry.data = data.clone();
                self.lock().log.append(&entry);
                batch.push(
                    "job.external.log",
                    json!({"jobId": id, "name": name, "level": level.as_str(), "message": message, "data": data, "stream": "log", "attempt": attempt, "seq": seq}),
                    now,
                );
            }
            JobMessage::Completed { result } => self.record_terminal(seq, Terminal::Completed(result)),
            JobMessage::Failed { error, stack } => self.record_terminal(seq, Terminal::Failed { error, stack }),
            JobMessage::Unknown { kind } => {
                tracing::info!(job_id = %id, kind = %kind, "ignored a message of unknown type");
            }
        }
        heartbeat
    }

    fn record_terminal(self: &Arc<Self>, seq: u64, terminal: Terminal) {
        {
            let mut state = self.lock();
            Self::mark_decisive(&mut state, seq);
            state.summary.terminal_after_cancel = state.summary.cancel_requested;
            state.summary.terminal = Some(terminal);
        }
        // The job is finished: a process that lingers past the grace is
        // terminated.
        let run = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(run.kill_grace).await;
            let exited = run.lock().summary.report.is_some();
            if !exited {
                run.request_kill(KillReason::Finished, false);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_admits_limit_per_second() {
        let start = Instant::now();
        let mut rate = OutputRate::new(3, start);
        assert_eq!(rate.roll(start), None);
        let admitted: Vec<bool> = (0..5).map(|_| rate.admit()).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        // Within the same second nothing is reported yet.
        assert_eq!(rate.roll(start + Duration::from_millis(999)), None);
        assert!(!rate.admit());
        // The next second reports the three dropped lines once and admits again.
        let next = start + Duration::from_secs(1);
        assert_eq!(rate.roll(next), Some(3));
        assert_eq!(rate.roll(next), None);
        assert!(rate.admit());
    }

    #[test]
    fn rate_without_drops_reports_nothing() {
        let start = Instant::now();
        let mut rate = OutputRate::new(10, start);
        for _ in 0..10 {
            assert!(rate.admit());
        }
        assert_eq!(rate.roll(start + Duration::from_secs(2)), None);
        assert_eq!(rate.take_dropped(), None);
    }

    #[test]
    fn take_dropped_resets_count() {
        let start = Instant::now();
        let mut rate = OutputRate::new(1, start);
        assert!(rate.admit());
        assert!(!rate.admit());
        assert_eq!(rate.take_dropped(), Some(1));
        assert_eq!(rate.take_dropped(), None);
        assert_eq!(rate.roll(start + Duration::from_secs(1)), None);
    }
}
