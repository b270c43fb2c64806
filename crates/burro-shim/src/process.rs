//! Starting, signalling and reaping the job process and its descendants.

use burro_protocol::control::{ExitReport, ResourceLimits, RunAs, ShimSpec};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// Name of the variable that names the inherited pipe a job may write
/// message lines to.
pub const MESSAGE_FD_VAR: &str = "BURRO_MESSAGE_FD";

/// Builds the job's command: its own process group, the exact environment
/// from the spec, and piped standard streams. Pure apart from the pipe fd.
pub fn build_command(spec: &ShimSpec, message_fd: Option<RawFd>) -> Command {
    let mut command = if spec.shell {
        // Only when configured: the command line is interpreted by sh.
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(&spec.command);
        command
    } else {
        Command::new(&spec.command)
    };
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let limits = spec.limits;
    let run_as = spec.run_as;
    if limits != ResourceLimits::default() || run_as.is_some() {
        // SAFETY: setrlimit, setgroups, setgid and setuid are
        // async-signal-safe system calls on values copied into the closure.
        unsafe {
            command.pre_exec(move || {
                apply_limits(limits)?;
                if let Some(identity) = run_as {
                    drop_privileges(identity)?;
                }
                Ok(())
            });
        }
    }
    // The pipe's write end is created inheritable (see `message_pipe`), so
    // no pre_exec hook is needed for it. Without hooks, std starts the job
    // with posix_spawn, which does not copy the shim's page tables as fork does.
    if let Some(fd) = message_fd {
        command.env(MESSAGE_FD_VAR, fd.to_string());
    }
    command
}

fn apply_limits(limits: ResourceLimits) -> io::Result<()> {
    let set = |resource, value: Option<u64>| -> io::Result<()> {
        let Some(value) = value else { return Ok(()) };
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct, which lives for the call.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::RLIMIT_AS, limits.address_space)?;
    set(libc::RLIMIT_NOFILE, limits.open_files)?;
    set(libc::RLIMIT_CPU, limits.cpu_seconds)
}

/// Switches the process to `identity`: supplementary groups first, then the
/// group, then the user, because after setuid the others are not permitted.
fn drop_privileges(identity: RunAs) -> io::Result<()> {
    let groups = [identity.gid as libc::gid_t];
    // SAFETY: plain system calls with values owned by this frame.
    unsafe {
        if libc::setgroups(1, groups.as_ptr()) != 0 || libc::setgid(identity.gid) != 0 || libc::setuid(identity.uid) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Creates the job's message pipe: a read end closed on exec and a write
/// end the job inherits. The shim starts one process, from one thread, and
/// closes its copy of the write end right after, so only the job has it open.
pub fn message_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = pipe_cloexec()?;
    // SAFETY: F_GETFD and F_SETFD on a descriptor this function owns.
    unsafe {
        let flags = libc::fcntl(write.as_raw_fd(), libc::F_GETFD);
        if flags < 0 || libc::fcntl(write.as_raw_fd(), libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((read, write))
}

/// Creates a pipe whose both ends are close-on-exec.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes this process a child subreaper, so descendants that leave the
/// job's process group are reparented to the shim when their parent dies.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pidfd for `pid`, which becomes readable when the process exits.
/// Returns `None` on kernels without `pidfd_open` (before Linux 5.3).
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall succeeded, so `fd` is a new descriptor we own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// End of the leader process, observed without reaping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

/// Checks whether the leader has exited, leaving it unreaped (`WNOWAIT`) so
/// its process-group id cannot be reused while the group is signalled.
pub fn peek_exit(pid: Pid) -> io::Result<Option<Ended>> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(Ended::Code(code))),
        Ok(WaitStatus::Signaled(_, signal, _)) => Ok(Some(Ended::Signal(signal as i32))),
        Ok(_) => Ok(None),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// Reaps the leader after [`peek_exit`] reported its end.
pub fn reap(child: &mut Child) {
    let _ = child.wait();
}

/// Sends `signal` to the job's process group. The caller guarantees the
/// leader is not reaped yet, so the group id still names this job.
pub fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => crate::diag!("signalling process group {pgid} with {signal} failed: {err}"),
    }
}

/// Lists this process's children as the kernel reports them.
pub fn list_children() -> Vec<Pid> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return children;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        children.extend(
            text.split_whitespace()
                .filter_map(|word| word.parse::<i32>().ok())
                .map(Pid::from_raw),
        );
    }
    children
}

/// Signals every child of the shim except `leader`. These are descendants
/// that were reparented to the shim; they are unreaped children of ours, so
/// their pids cannot have been reused.
pub fn signal_orphans(leader: Option<Pid>, signal: Signal) -> usize {
    let mut count = 0;
    for pid in list_children() {
        if Some(pid) == leader {
            continue;
        }
        if nix::sys::signal::kill(pid, signal).is_ok() {
            count += 1;
        }
        // An orphan may have its own process group; signal it too.
        if let Ok(pgid) = nix::unistd::getpgid(Some(pid)) {
            if pgid == pid {
                let _ = killpg(pgid, signal);
            }
        }
    }
    count
}

/// Returns the start time of process `pid` after boot, in clock ticks:
/// field 22 of `/proc/PID/stat`, counted after the parenthesized name,
/// which may contain spaces.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Returns true while the shim has a child process, without reaping it:
/// `waitid` reports `ECHILD` only when there is none. Cheaper than listing
/// the children through `/proc`.
pub fn has_children() -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(waitid(Id::All, flags), Err(Errno::ECHILD))
}

/// Reaps every exited child without blocking; returns how many were reaped.
pub fn reap_exited() -> usize {
    let mut reaped = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => reaped += 1,
        }
    }
}

/// Fills the code or signal of an exit report.
pub fn describe_end(ended: Ended, report: &mut ExitReport) {
    match ended {
        Ended::Code(code) => report.code = Some(code),
        Ended::Signal(signal) => report.signal = Some(signal),
    }
}

/// Returns the raw descriptor number, for the job's environment.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}
