//! `burro-shim --launcher`: a warm parent that forks one shim per job.
//!
//! Starting a shim with `exec` pays for the dynamic loader, the C library's
//! CPU feature probes and Rust's start-up in every job. On a virtual machine,
//! where each CPUID instruction traps to the hypervisor, that is most of a
//! millisecond. A fork of this small, single-threaded process skips all of
//! it, and the new shim shares the launcher's pages until it writes to them.
//!
//! The server starts one launcher with a sequenced-packet socket as its
//! standard input and sends one [`LaunchRequest`] per job. The launcher
//! forks, and the child takes a process group of its own and runs exactly
//! the code an exec'd shim runs. The launcher replies with the shim's pid and
//! a pidfd for it, so the server can watch the shim's exit without being
//! its parent, and reaps its children as they exit. The launcher exits when
//! the server's end of the socket closes. The shims it started keep running
//! then, as shims started by `exec` do when the server goes away.
//!
//! Forking and detaching a child after the request arrives would delay
//! every job's start. So the launcher keeps one spare child forked ahead,
//! already in a process group of its own, blocked on a pipe. A request goes
//! down that pipe, the reply names the spare, and the next spare is forked
//! after the reply. A spare whose pipe closes before a request came (the
//! launcher exited) exits without a word.

use crate::{run_shim, SpecSource};
use burro_protocol::control::{LaunchReply, LaunchRequest};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags, UnixAddr};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::ExitCode;

/// Largest request accepted; a request contains two paths.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The descriptor the server passes the launcher's socket on.
const SOCKET_FD: RawFd = 0;

pub fn run() -> ExitCode {
    // SAFETY: descriptor 0 is the socket the server passed; nothing else in
    // this process uses standard input.
    let socket = unsafe { BorrowedFd::borrow_raw(SOCKET_FD) };
    if crate::process::pidfd_open(std::process::id()).is_none() {
        eprintln!("burro-shim: launcher: this kernel has no pidfd_open (Linux 5.3 or later needs it); the server starts shims directly");
        return ExitCode::from(2);
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if let Err(err) = mask.thread_block() {
        eprintln!("burro-shim: launcher: blocking SIGCHLD failed: {err}");
        return ExitCode::from(2);
    }
    let children = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(err) => {
            eprintln!("burro-shim: launcher: creating a signalfd for SIGCHLD failed: {err}");
            return ExitCode::from(2);
        }
    };
    // memchr probes the CPU's features with CPUID at its first call, and on
    // a virtual machine each CPUID traps to the hypervisor. One call here,
    // before any fork, lets every forked shim inherit the result.
    std::hint::black_box(memchr::memchr(b'\n', std::hint::black_box(b"probe\n")));
    let mut buffer = vec![0u8; MAX_REQUEST_BYTES];
    // A spare is forked at the start and after each request, not at every
    // wakeup, so a fork that keeps failing is tried once per request.
    let mut spare = match fork_spare(&mask, &children) {
        SpareFork::Launcher(forked) => forked,
        SpareFork::Shim(code) => std::process::exit(i32::from(code)),
    };
    loop {
        let (socket_ready, child_exited) = {
            let mut fds = [PollFd::new(socket, PollFlags::POLLIN), PollFd::new(children.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    eprintln!("burro-shim: launcher: poll failed: {err}");
                    break;
                }
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if child_exited {
            while let Ok(Some(_)) = children.read_signal() {}
            reap_exited();
        }
        if socket_ready {
            match recv(SOCKET_FD, &mut buffer, MsgFlags::empty()) {
                // The server closed its end: it exited or stopped using us.
                Ok(0) => break,
                Ok(length) => {
                    if let Some(code) = launch(socket, &buffer[..length], &mask, &children, &mut spare) {
                        // Only the forked child gets here, once its shim ended.
                        std::process::exit(i32::from(code));
                    }
                    if spare.is_none() {
                        match fork_spare(&mask, &children) {
                            SpareFork::Launcher(forked) => spare = forked,
                            SpareFork::Shim(code) => std::process::exit(i32::from(code)),
                        }
                    }
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(err) => {
                    eprintln!("burro-shim: launcher: reading a request failed: {err}");
                    break;
                }
            }
        }
    }
    // Closing the spare's pipe makes it exit.
    drop(spare);
    reap_exited();
    ExitCode::SUCCESS
}

/// A child forked ahead of the next request.
struct Spare {
    pid: Pid,
    pidfd: OwnedFd,
    /// The write end of the pipe the spare reads its request from.
    request: std::fs::File,
}

enum SpareFork {
    /// In the launcher: the new spare, or `None` when forking failed and the
    /// next request forks its shim itself.
    Launcher(Option<Spare>),
    /// In the spare, once its shim ended: the exit status.
    Shim(u8),
}

fn fork_spare(mask: &SigSet, children: &SignalFd) -> SpareFork {
    let (read, write) = match pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(err) => {
            eprintln!("burro-shim: launcher: creating a spare's pipe failed: {err}");
            return SpareFork::Launcher(None);
        }
    };
    // SAFETY: the launcher is single-threaded, as in `launch`.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(write);
            SpareFork::Shim(wait_as_spare(read, mask, children))
        }
        Ok(ForkResult::Parent { child }) => {
            drop(read);
            // The child is not reaped before this call, as in `launch`.
            match crate::process::pidfd_open(child.as_raw() as u32) {
                Some(pidfd) => SpareFork::Launcher(Some(Spare { pid: child, pidfd, request: write.into() })),
                None => {
                    // Dropping the pipe makes the spare exit, and the
                    // launcher reaps it with the other children.
                    eprintln!("burro-shim: launcher: opening a pidfd for spare {child} failed: {}", Errno::last());
                    SpareFork::Launcher(None)
                }
            }
        }
        Err(err) => {
            eprintln!("burro-shim: launcher: forking a spare failed: {err}");
            SpareFork::Launcher(None)
        }
    }
}

/// Runs in a spare: takes a process group of its own, waits for its
/// request and runs the shim it names.
fn wait_as_spare(read: OwnedFd, mask: &SigSet, children: &SignalFd) -> u8 {
    detach_from_launcher(mask, children, SPARE_TITLE);
    let mut packet = Vec::new();
    let received = std::fs::File::from(read).take(MAX_REQUEST_BYTES as u64).read_to_end(&mut packet);
    if received.is_err() || packet.is_empty() {
        return 0;
    }
    retitle(SPARE_TITLE, FORKED_TITLE);
    // The launcher parsed the request before it passed it on.
    match serde_json::from_slice::<LaunchRequest>(&packet) {
        Ok(request) => run_shim(SpecSource::File(request.spec_file.into()), Some(request.log_file.into())),
        Err(err) => {
            eprintln!("burro-shim: spare: invalid launch request: {err}");
            2
        }
    }
}

/// Reaps every child that has exited, without waiting for the others.
fn reap_exited() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Handles one request. Returns `Some(status)` in the forked child once its
/// shim has ended, and `None` in the launcher.
fn launch(socket: BorrowedFd<'_>, packet: &[u8], mask: &SigSet, children: &SignalFd, spare: &mut Option<Spare>) -> Option<u8> {
    let request: LaunchRequest = match serde_json::from_slice(packet) {
        Ok(request) => request,
        Err(err) => {
            let error = format!("invalid launch request: {err}");
            reply(socket, &LaunchReply { pid: None, error: Some(error) }, None);
            return None;
        }
    };
    if let Some(Spare { pid, pidfd, mut request }) = spare.take() {
        // The write to a spare that died meanwhile fails with EPIPE, because
        // Rust ignores SIGPIPE, and the request gets a fork of its own below.
        if request.write_all(packet).is_ok() {
            drop(request);
            reply(socket, &LaunchReply { pid: Some(pid.as_raw() as u32), error: None }, Some(&pidfd));
            return None;
        }
    }
    // SAFETY: the launcher is single-threaded, so the child starts with no
    // lock held by another thread and may run ordinary Rust code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => Some(become_shim(&request, mask, children)),
        Ok(ForkResult::Parent { child }) => {
            // The child cannot be reaped before this call, because SIGCHLD
            // is handled only by this loop, so its pid is still its own.
            let pidfd = crate::process::pidfd_open(child.as_raw() as u32);
            match pidfd {
                Some(pidfd) => reply(socket, &LaunchReply { pid: Some(child.as_raw() as u32), error: None }, Some(&pidfd)),
                None => {
                    // Without a pidfd the server could not see the shim exit.
                    // The shim is left to run; the server's control socket
                    // still reaches it.
                    let error = format!("opening a pidfd for shim {} failed: {}", child, Errno::last());
                    reply(socket, &LaunchReply { pid: Some(child.as_raw() as u32), error: Some(error) }, None);
                }
            }
            None
        }
        Err(err) => {
            let error = format!("fork failed: {err}");
            reply(socket, &LaunchReply { pid: None, error: Some(error) }, None);
            None
        }
    }
}

/// Turns the forked child into a shim: it drops the launcher's descriptors
/// and signal mask, takes a process group of its own and runs the shim.
fn become_shim(request: &LaunchRequest, mask: &SigSet, children: &SignalFd) -> u8 {
    detach_from_launcher(mask, children, FORKED_TITLE);
    // Standard error stays the launcher's log, for panics. Diagnostics go
    // to the job's shim log, created at its first line.
    run_shim(SpecSource::File(request.spec_file.clone().into()), Some(request.log_file.clone().into()))
}

/// Drops the launcher's descriptors and signal mask in a forked child and
/// gives it a process group of its own.
fn detach_from_launcher(mask: &SigSet, children: &SignalFd, title: &[u8; 11]) {
    // SAFETY: these calls replace or close descriptors this child inherited
    // and no longer uses; the launcher's own copies are unaffected.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, SOCKET_FD);
            libc::close(null);
        } else {
            libc::close(SOCKET_FD);
        }
        libc::close(children.as_raw_fd());
    }
    let _ = mask.thread_unblock();
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    retitle(LAUNCHER_TITLE, title);
}

/// The second argument of the launcher's command line, and what a forked
/// child shows in its place, padded to the same length.
const LAUNCHER_TITLE: &[u8; 11] = b"--launcher\0";
const SPARE_TITLE: &[u8; 11] = b"--spare\0\0\0\0";
const FORKED_TITLE: &[u8; 11] = b"--forked\0\0\0";

/// Rewrites the command line that `ps` shows for this forked child, from
/// `burro-shim --launcher` to `burro-shim --spare` or `burro-shim --forked`,
/// so operators can tell the launcher, its waiting spare and its shims
/// apart. `program_invocation_name` is glibc's pointer to `argv[0]`, and the
/// kernel stores the arguments one after the other, so `argv[1]` starts
/// after `argv[0]`'s terminating NUL.
fn retitle(from: &[u8; 11], to: &[u8; 11]) {
    extern "C" {
        static program_invocation_name: *mut libc::c_char;
    }
    // SAFETY: the pointer is glibc's, set at start-up to argv[0]. The write
    // stays within argv[1], which is checked to contain `from`, and `to` has
    // its length. The argument strings are writable memory of this process.
    unsafe {
        let name = program_invocation_name;
        if name.is_null() {
            return;
        }
        let argument = name.add(libc::strlen(name) + 1).cast::<u8>();
        if std::slice::from_raw_parts(argument, from.len()) == from {
            std::ptr::copy_nonoverlapping(to.as_ptr(), argument, to.len());
        }
    }
}

/// Sends one reply, with `pidfd` as ancillary data when given. A failed send
/// means the server is gone; the next read returns end of file.
fn reply(socket: BorrowedFd<'_>, reply: &LaunchReply, pidfd: Option<&OwnedFd>) {
    let bytes = serde_json::to_vec(reply).unwrap_or_default();
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let control: Vec<ControlMessage<'_>> = match pidfd {
        Some(fd) => {
            fds = [fd.as_raw_fd()];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    if let Err(err) = sendmsg::<UnixAddr>(socket.as_raw_fd(), &iov, &control, MsgFlags::MSG_NOSIGNAL, None) {
        eprintln!("burro-shim: launcher: sending a reply failed: {err}");
    }
}
