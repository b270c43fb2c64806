//! The supervisor loop: start the job, forward what it produces, enforce its
//! timeout, carry out the server's commands, and report its exit once every
//! message it sent before exiting has been forwarded.

use crate::connections::{self, ConnectionLimits, Item, JobListener, Registry, Stream};
use crate::process::{self, Ended};
use crate::session::{self, Command};
use burro_protocol::control::{exit_record_name, ExitRecordHeader, ExitReport, Hello, ShimFrame, ShimSpec, TransportSpec, CONTROL_VERSION};
use burro_protocol::Payload;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

/// Messages that already left the job are drained for at most this long
/// after it exits, so a descendant holding a connection open cannot hold the
/// job.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// While the server is away, the shim stops reading from the job once this
/// many bytes wait for its acknowledgement, in memory and in the spool file
/// together. While it is connected, the shim reads only while the waiting
/// frames fit in memory.
const MAX_UNACKED_BYTES: u64 = 1024 * 1024 * 1024;
/// Capacity of the channel between the job-side tasks and this loop. An
/// item carries the message lines of one read of at most 16 KiB, plus the
/// start of a line that read completed. With lines shorter than a read,
/// a full channel comes to about 512 KiB at most.
const ITEM_QUEUE: usize = 32;
/// How often exited descendants are reaped after the job ended, and how
/// often liveness is polled when no pidfd is available.
const TICK: Duration = Duration::from_millis(100);

/// Lifecycle of the job, as the shim observes it.
enum Phase {
    Running,
    /// The leader exited (unreaped); messages still in flight are read.
    Draining { ended: Ended, deadline: Instant },
    /// The exit frame was queued; waiting for the server's `BYE`.
    Reported { since: Instant },
}

/// A termination in progress: SIGTERM was sent, SIGKILL follows at `kill_at`.
struct Termination {
    reason: String,
    kill_at: Instant,
    killed: bool,
}

pub async fn run(spec: ShimSpec) -> Result<(), String> {
    tokio::task::LocalSet::new().run_until(supervise(spec)).await
}

async fn supervise(spec: ShimSpec) -> Result<(), String> {
    let job_id: Rc<str> = Rc::from(spec.job_id.as_str());
    let started_at = Instant::now();
    if let Err(err) = process::become_subreaper() {
        crate::shim_log!(job_id, "becoming a child subreaper failed: {err}; descendants that leave the process group may survive the job");
    }

    let (listener, address, socket_file) = match bind_listener(&spec).await {
        Ok(bound) => bound,
        Err(reason) => return fail_before_start(&spec, &job_id, String::new(), reason, started_at).await,
    };
    // Last sequence number queued, and the length of the first oversize line.
    let mut queued = Queued::default();

    let message_pipe = if spec.message_fd {
        match process::message_pipe() {
            Ok(pipe) => Some(pipe),
            Err(err) => {
                remove_socket(&socket_file);
                let reason = format!("creating the message pipe failed: {err}");
                return fail_before_start(&spec, &job_id, address, reason, started_at).await;
            }
        }
    } else {
        None
    };
    let mut command = process::build_command(&spec, message_pipe.as_ref().map(|(_, write)| process::raw(write)));
    match &spec.transport {
        TransportSpec::Unix { .. } => {
            command.env("DONKEYLABS_SOCKET_PATH", &address).env("DONKEYLABS_TCP_PORT", "");
        }
        TransportSpec::Tcp { .. } => {
            let port = address.rsplit(':').next().unwrap_or_default().to_string();
            command.env("DONKEYLABS_SOCKET_PATH", "").env("DONKEYLABS_TCP_PORT", port);
        }
    }
    let spawned = command.spawn();
    let message_reader = message_pipe.map(|(read, _write)| read);

    let mut hello = hello_for(&spec, address.clone());

    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            remove_socket(&socket_file);
            let reason = spawn_failure(&spec, &err);
            return fail_before_start(&spec, &job_id, address, reason, started_at).await;
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    hello.child_pid = Some(child.id());
    // The job is an unreaped child of this shim, so its pid still names it.
    hello.child_start_ticks = process::start_ticks(child.id());
    let mut handle = session::start(job_id.clone(), spec.control_socket.clone(), hello, spool_path(&spec));

    let registry = Rc::new(Registry::default());
    let (items_tx, mut items_rx) = mpsc::channel::<Item>(ITEM_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    start_job_side(&spec, &job_id, &mut child, message_reader, &address, &registry, &items_tx, &stop_rx)?;
    let limits = ConnectionLimits {
        max_message_bytes: spec.max_message_bytes,
        max_connections: spec.max_connections,
        idle_timeout: Duration::from_millis(spec.idle_timeout_ms),
    };
    let listener = Rc::new(listener);
    {
        let listener = listener.clone();
        let (job_id, registry, items_tx, stop_rx) = (job_id.clone(), registry.clone(), items_tx.clone(), stop_rx.clone());
        tokio::task::spawn_local(connections::accept_loop(job_id, listener, registry, items_tx, limits, stop_rx));
    }

    // SAFETY: the pidfd is owned by the AsyncFd and closed only when it drops.
    let exit_fd = process::pidfd_open(child.id()).and_then(|fd| unsafe { AsyncFd::register(fd) }.ok());
    let kill_grace = Duration::from_millis(spec.kill_grace_ms);
    let timeout_at = spec.timeout_ms.map(|ms| started_at + Duration::from_millis(ms));
    let far_future = Instant::now() + Duration::from_secs(86400 * 365);
    let mut termination: Option<Termination> = None;
    let mut phase = Phase::Running;
    let mut got_bye = false;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let draining_deadline = match &phase {
            Phase::Draining { deadline, .. } => *deadline,
            _ => far_future,
        };
        let kill_at = match &termination {
            Some(t) if !t.killed => t.kill_at,
            _ => far_future,
        };
        // Once the job has exited, what it left in its sockets and pipes is
        // read at once, into the spool if need be: the drain limit would
        // otherwise drop it while a busy server takes its time.
        let job_running = matches!(phase, Phase::Running);
        let has_room = |shared: &session::Shared| {
            if job_running {
                shared.has_room(MAX_UNACKED_BYTES)
            } else {
                shared.pending_bytes() < MAX_UNACKED_BYTES
            }
        };
        let accepting_items = has_room(&handle.shared);

        tokio::select! {
            item = items_rx.recv(), if accepting_items => {
                if let Some(item) = item {
                    queue_item(&handle, &mut queued, item);
                    // Items that are already queued are taken in the same
                    // turn, so a busy job costs one pass of this loop, with
                    // its timers, per batch instead of per line.
                    for _ in 1..ITEM_QUEUE {
                        if !has_room(&handle.shared) {
                            break;
                        }
                        let Ok(item) = items_rx.try_recv() else { break };
                        queue_item(&handle, &mut queued, item);
                    }
                }
            }
            _ = handle.shared.room.notified(), if !accepting_items => {}
            command = handle.commands.recv() => match command {
                Some(Command::Kill(reason)) => {
                    if matches!(phase, Phase::Running) && termination.is_none() {
                        termination = Some(terminate(&job_id, pid, reason, kill_grace));
                    }
                }
                Some(Command::Send { conn, line }) => {
                    if let Some(writer) = registry.writers.borrow().get(&conn) {
                        let mut line = line;
                        line.push(b'\n');
                        let _ = writer.send(line);
                    }
                }
                Some(Command::Bye) => got_bye = true,
                Some(Command::Rejected) | None => {
                    // The server will not take this job's reports: stop the
                    // job rather than leave it running unsupervised.
                    if matches!(phase, Phase::Running) && termination.is_none() {
                        termination = Some(terminate(&job_id, pid, "rejected".into(), kill_grace));
                    }
                    got_bye = true;
                }
            },
            _ = wait_readable(exit_fd.as_ref()), if matches!(phase, Phase::Running) => {
                if let Some(ended) = poll_exit(&job_id, pid) {
                    phase = begin_drain(&job_id, pid, ended, &listener, &registry, &items_tx, limits, &stop_rx).await;
                }
            }
            _ = sleep_until(timeout_at.unwrap_or(far_future)), if timeout_at.is_some() && termination.is_none() && matches!(phase, Phase::Running) => {
                let limit = spec.timeout_ms.unwrap_or_default();
                crate::shim_log!(job_id, "timed out after {limit} ms; terminating");
                termination = Some(terminate(&job_id, pid, "timeout".into(), kill_grace));
            }
            _ = sleep_until(kill_at) => {
                if let Some(t) = termination.as_mut() {
                    t.killed = true;
                    if matches!(phase, Phase::Running | Phase::Draining { .. }) {
                        process::signal_group(pid, Signal::SIGKILL);
                    }
                    process::signal_orphans(Some(pid), Signal::SIGKILL);
                }
            }
            _ = sleep_until(draining_deadline) => {
                // Stop reading: whatever is still open after the drain limit
                // belongs to a descendant, not to the job's own report.
                let _ = stop_tx.send(true);
                if let Phase::Draining { ended, .. } = phase {
                    phase = Phase::Draining { ended, deadline: far_future };
                }
            }
            // With a pidfd, a running job needs no tick: its exit wakes the
            // loop. Thousands of sleeping jobs then cost no wakeups at all.
            _ = ticker.tick(), if exit_fd.is_none() || !matches!(phase, Phase::Running) => {
                if exit_fd.is_none() && matches!(phase, Phase::Running) {
                    if let Some(ended) = poll_exit(&job_id, pid) {
                        phase = begin_drain(&job_id, pid, ended, &listener, &registry, &items_tx, limits, &stop_rx).await;
                    }
                }
                if matches!(phase, Phase::Reported { .. }) {
                    process::reap_exited();
                }
            }
        }

        // Once every source is done and every item is queued, report the exit.
        if let Phase::Draining { ended, .. } = phase {
            if registry.active_sources.get() == 0 {
                let _ = stop_tx.send(true);
                while let Ok(item) = items_rx.try_recv() {
                    queue_item(&handle, &mut queued, item);
                }
                process::reap(&mut child);
                let mut report = ExitReport {
                    reason: termination.as_ref().map(|t| t.reason.clone()),
                    elapsed_ms: started_at.elapsed().as_millis() as u64,
                    ..Default::default()
                };
                process::describe_end(ended, &mut report);
                report.oversize = queued.first_oversize;
                queued.seq += 1;
                let seq = queued.seq;
                handle.send(seq, ShimFrame::Exit { seq, report }.encode());
                // Descendants got SIGTERM when the leader exited; the rest
                // get SIGKILL after the grace period.
                termination = Some(Termination {
                    reason: String::new(),
                    kill_at: Instant::now() + kill_grace,
                    killed: false,
                });
                phase = Phase::Reported { since: Instant::now() };
            }
        }

        if let Phase::Reported { since } = phase {
            process::reap_exited();
            let children_left = process::has_children();
            if children_left && termination.as_ref().is_some_and(|t| t.killed) {
                // Descendants reparented after the first sweep get SIGKILL too.
                process::signal_orphans(None, Signal::SIGKILL);
            }
            if got_bye && !children_left {
                break;
            }
            // The linger counts from the last sign of a live server, so a
            // server that is still working through a backlog is waited for.
            let quiet_since = since.max(handle.shared.last_contact.get());
            if quiet_since.elapsed() > Duration::from_millis(spec.linger_ms) {
                leave_exit_record(&spec, &job_id, &handle.shared);
                break;
            }
        }
    }

    remove_socket(&socket_file);
    Ok(())
}

/// Explains why the job's command could not be started, with the fix.
fn spawn_failure(spec: &ShimSpec, err: &std::io::Error) -> String {
    let command = &spec.command;
    let hint = match err.kind() {
        std::io::ErrorKind::NotFound if !command.contains('/') => {
            format!("no program {command:?} on PATH; give a path such as \"./{command}\" (relative to the configuration file) or install it")
        }
        std::io::ErrorKind::NotFound => match &spec.cwd {
            Some(cwd) => format!("check that {command:?} and the working directory {cwd:?} exist"),
            None => format!("check that {command:?} exists, relative to the server's working directory"),
        },
        std::io::ErrorKind::PermissionDenied => {
            format!("make it executable (chmod +x {command}) or run it through its interpreter, such as command = \"bash\" with args = [{command:?}]")
        }
        _ => String::from("check the job's command, args and cwd"),
    };
    format!("starting {command:?} failed: {err}; {hint}")
}

/// Returns the spool file of this attempt, beside the exit records.
fn spool_path(spec: &ShimSpec) -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(spec.exit_dir.as_deref()?);
    if let Err(err) = std::fs::create_dir_all(dir) {
        crate::shim_log!(spec.job_id, "creating {} failed: {err}; unacknowledged frames stay in memory", dir.display());
        return None;
    }
    Some(dir.join(format!("{}.{}.spool", spec.job_id, spec.attempt)))
}

fn hello_for(spec: &ShimSpec, address: String) -> Hello {
    Hello {
        version: CONTROL_VERSION,
        job_id: spec.job_id.clone(),
        token: spec.token.clone(),
        attempt: spec.attempt,
        shim_pid: std::process::id(),
        child_pid: None,
        child_start_ticks: None,
        address,
    }
}

/// Reports a job that could not be started, so the server records the
/// reason instead of a lost job.
async fn fail_before_start(spec: &ShimSpec, job_id: &Rc<str>, address: String, reason: String, started_at: Instant) -> Result<(), String> {
    crate::shim_log!(job_id, "{reason}");
    let mut handle = session::start(job_id.clone(), spec.control_socket.clone(), hello_for(spec, address), None);
    let report = ExitReport {
        spawn_error: Some(reason),
        elapsed_ms: started_at.elapsed().as_millis() as u64,
        ..Default::default()
    };
    handle.send(1, ShimFrame::Exit { seq: 1, report }.encode());
    if !wait_for_bye(&mut handle, Duration::from_millis(spec.linger_ms)).await {
        leave_exit_record(spec, job_id, &handle.shared);
    }
    Ok(())
}

/// Writes the unacknowledged frames, the exit frame among them, to an exit
/// record that the server applies at its next start. The file appears
/// atomically: it is written under a temporary name, synced, then renamed.
fn write_exit_record(spec: &ShimSpec, shared: &session::Shared) -> Result<std::path::PathBuf, String> {
    use std::io::Write;
    let dir = spec.exit_dir.as_deref().ok_or("the server gave no exit_dir")?;
    let dir = std::path::Path::new(dir);
    let header = ExitRecordHeader {
        version: CONTROL_VERSION,
        job_id: spec.job_id.clone(),
        token: spec.token.clone(),
        attempt: spec.attempt,
    };
    let mut contents = serde_json::to_vec(&header).map_err(|err| err.to_string())?;
    contents.push(b'\n');
    contents.extend_from_slice(&shared.all_unacked());
    let final_path = dir.join(exit_record_name(&spec.job_id));
    let temporary = dir.join(format!("{}.tmp.{}", exit_record_name(&spec.job_id), std::process::id()));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &final_path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|err| {
        let _ = std::fs::remove_file(&temporary);
        format!("writing the exit record {} failed: {err}", final_path.display())
    })?;
    Ok(final_path)
}

fn leave_exit_record(spec: &ShimSpec, job_id: &str, shared: &session::Shared) {
    match write_exit_record(spec, shared) {
        Ok(path) => crate::shim_log!(job_id, "the server did not return within {} ms; wrote the exit record {}", spec.linger_ms, path.display()),
        Err(err) => crate::shim_log!(job_id, "the server did not return within {} ms and {err}; the job's last messages are lost", spec.linger_ms),
    }
}

/// Numbering state of the frames the supervisor loop has queued.
#[derive(Default)]
struct Queued {
    /// Sequence number of the last frame queued.
    seq: u64,
    /// Length of the first message line over the size limit.
    first_oversize: Option<usize>,
}

/// Encodes `item` as frames numbered after `queued.seq` and queues them,
/// leaving `queued.seq` at the number of the last one. Message lines become
/// one `MSG` frame each, encoded into one buffer and queued together.
fn queue_item(handle: &session::SessionHandle, queued: &mut Queued, item: Item) {
    let frame = match item {
        Item::Messages { conn, lines } => {
            let first = queued.seq + 1;
            let mut conn_text = itoa::Buffer::new();
            let conn_text = conn_text.format(conn).as_bytes();
            let mut number = itoa::Buffer::new();
            // A frame adds about 14 bytes to its line (the keyword, two
            // numbers, three spaces). A quarter more than the lines covers
            // lines of 60 bytes or more, and the buffer grows for shorter ones.
            let mut frames = Vec::with_capacity(lines.len() + lines.len() / 4 + 64);
            for line in lines.split_inclusive(|&byte| byte == b'\n') {
                queued.seq += 1;
                frames.extend_from_slice(b"MSG ");
                frames.extend_from_slice(number.format(queued.seq).as_bytes());
                frames.push(b' ');
                frames.extend_from_slice(conn_text);
                frames.push(b' ');
                frames.extend_from_slice(line);
            }
            handle.send_frames(first, queued.seq, frames);
            return;
        }
        Item::Stdout(line) => ShimFrame::Stdout { seq: queued.seq + 1, line },
        Item::Stderr(line) => ShimFrame::Stderr { seq: queued.seq + 1, line },
        Item::Oversize { conn, len } => {
            queued.first_oversize.get_or_insert(len);
            ShimFrame::Oversize { seq: queued.seq + 1, conn, len }
        }
    };
    queued.seq += 1;
    handle.send(queued.seq, frame.encode());
}

#[allow(clippy::too_many_arguments)]
fn start_job_side(
    spec: &ShimSpec,
    job_id: &Rc<str>,
    child: &mut std::process::Child,
    message_reader: Option<OwnedFd>,
    address: &str,
    registry: &Rc<Registry>,
    items: &mpsc::Sender<Item>,
    stop: &watch::Receiver<bool>,
) -> Result<(), String> {
    let pipe_error = |what: &str, err: std::io::Error| format!("setting up the job's {what} failed: {err}");

    // The payload is written by its own task: a job that never reads its
    // standard input must not stall the shim, whatever the payload's size.
    let payload = Payload {
        job_id: &spec.job_id,
        name: &spec.job_name,
        data: &spec.data,
        socket_path: address,
    }
    .to_line();
    if let Some(stdin) = child.stdin.take() {
        let mut sender = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(stdin))
            .map_err(|err| pipe_error("standard input", err))?;
        tokio::task::spawn_local(async move {
            let _ = sender.write_all(&payload).await;
        });
    }
    let max_line = spec.max_log_line.max(1);
    if let Some(stdout) = child.stdout.take() {
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))
            .map_err(|err| pipe_error("standard output", err))?;
        connections::spawn_output(Stream::Stdout, receiver, registry, items, max_line, stop);
    }
    if let Some(stderr) = child.stderr.take() {
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))
            .map_err(|err| pipe_error("standard error", err))?;
        connections::spawn_output(Stream::Stderr, receiver, registry, items, max_line, stop);
    }
    if let Some(read) = message_reader {
        match tokio::net::unix::pipe::Receiver::from_owned_fd(read) {
            Ok(receiver) => connections::spawn_message_pipe(receiver, registry, items, spec.max_message_bytes, stop),
            Err(err) => crate::shim_log!(job_id, "{}", pipe_error("message pipe", err)),
        }
    }
    Ok(())
}

/// The job socket file and its inode, so the shim removes only the file it
/// created and never the socket of a later attempt bound at the same path.
struct SocketFile {
    path: String,
    inode: u64,
}

async fn bind_listener(spec: &ShimSpec) -> Result<(JobListener, String, Option<SocketFile>), String> {
    match &spec.transport {
        TransportSpec::Unix { path } => {
            // A socket file left by an earlier attempt of the same job would
            // make bind fail with EADDRINUSE.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                }
            }
            if let Some(identity) = spec.run_as {
                prepare_user_dir(path, identity)?;
            }
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|err| format!("binding the job socket {path} failed: {err}"))?;
            // bind applies the umask, so set the mode on the path afterwards.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|err| format!("setting mode 0600 on the job socket {path} failed: {err}"))?;
            if let Some(identity) = spec.run_as {
                std::os::unix::fs::chown(path, Some(identity.uid), Some(identity.gid))
                    .map_err(|err| format!("giving the job socket {path} to uid {} failed: {err}", identity.uid))?;
            }
            let inode = std::os::unix::fs::MetadataExt::ino(
                &std::fs::symlink_metadata(path).map_err(|err| format!("checking the job socket {path} failed: {err}"))?,
            );
            Ok((JobListener::Unix(listener), path.clone(), Some(SocketFile { path: path.clone(), inode })))
        }
        TransportSpec::Tcp { port_low, port_high } => {
            let (low, high) = (*port_low, (*port_high).max(*port_low));
            let span = u32::from(high - low) + 1;
            let start = std::process::id() % span;
            for offset in 0..span {
                let port = low + ((start + offset) % span) as u16;
                if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    return Ok((JobListener::Tcp(listener), format!("tcp://127.0.0.1:{port}"), None));
                }
            }
            Err(format!("no free TCP port on 127.0.0.1 in the range {low}-{high} (tcp_port_range)"))
        }
    }
}

/// Creates the per-job directory of a job that runs as another user: mode
/// 0700 and owned by that user, so only the job (and root) can reach its
/// socket. The parent directory is created by the server with mode 0711.
fn prepare_user_dir(path: &str, identity: burro_protocol::control::RunAs) -> Result<(), String> {
    let dir = std::path::Path::new(path).parent().ok_or_else(|| format!("the job socket path {path} has no directory"))?;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("creating the job directory {} failed: {err}", dir.display())),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| format!("setting mode 0700 on {} failed: {err}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(identity.uid), Some(identity.gid))
        .map_err(|err| format!("giving {} to uid {} failed: {err}", dir.display(), identity.uid))
}

fn remove_socket(socket_file: &Option<SocketFile>) {
    let Some(file) = socket_file else { return };
    let still_ours = std::fs::symlink_metadata(&file.path)
        .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta) == file.inode)
        .unwrap_or(false);
    if still_ours {
        let _ = std::fs::remove_file(&file.path);
        // The per-job directory of a job run as another user goes too. For
        // other jobs the parent is the shared socket directory, which stays.
        if let Some(dir) = std::path::Path::new(&file.path).parent() {
            if dir.file_name().is_some_and(|name| name.to_string_lossy().starts_with("job_")) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

async fn wait_readable(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => {
            if let Ok(mut guard) = fd.readable().await {
                // A pidfd stays readable once the process has exited.
                guard.retain_ready();
            }
        }
        None => std::future::pending().await,
    }
}

fn poll_exit(job_id: &str, pid: Pid) -> Option<Ended> {
    match process::peek_exit(pid) {
        Ok(ended) => ended,
        Err(err) => {
            crate::shim_log!(job_id, "checking the job process {pid} failed: {err}");
            None
        }
    }
}

fn terminate(job_id: &str, pid: Pid, reason: String, kill_grace: Duration) -> Termination {
    crate::shim_log!(job_id, "terminating process group {pid} ({reason})");
    process::signal_group(pid, Signal::SIGTERM);
    Termination {
        reason,
        kill_at: Instant::now() + kill_grace,
        killed: false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn begin_drain(
    job_id: &Rc<str>,
    pid: Pid,
    ended: Ended,
    listener: &Rc<JobListener>,
    registry: &Rc<Registry>,
    items: &mpsc::Sender<Item>,
    limits: ConnectionLimits,
    stop: &watch::Receiver<bool>,
) -> Phase {
    // The leader is still unreaped, so its process-group id cannot have been
    // reused: signal the group, then the descendants that left it.
    process::signal_group(pid, Signal::SIGTERM);
    process::signal_orphans(Some(pid), Signal::SIGTERM);
    connections::accept_backlog(job_id, listener, registry, items, limits, stop).await;
    Phase::Draining {
        ended,
        deadline: Instant::now() + DRAIN_LIMIT,
    }
}

/// Waits for `BYE`; returns false when the linger time ran out first.
async fn wait_for_bye(handle: &mut session::SessionHandle, linger: Duration) -> bool {
    loop {
        // The linger counts from the server's last acknowledgement.
        let deadline = handle.shared.last_contact.get() + linger;
        if deadline <= Instant::now() {
            return false;
        }
        tokio::select! {
            command = handle.commands.recv() => match command {
                Some(Command::Bye) | Some(Command::Rejected) | None => return true,
                Some(_) => {}
            },
            _ = sleep_until(deadline) => {}
        }
    }
}
