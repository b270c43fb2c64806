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

use crate::{run_shim, SpecSource};
use burro_protocol::control::{LaunchReply, LaunchRequest};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags, UnixAddr};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::io::IoSlice;
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
                    if let Some(code) = launch(socket, &buffer[..length], &mask, &children) {
                        // Only the forked child gets here, once its shim ended.
                        std::process::exit(i32::from(code));
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
    reap_exited();
    ExitCode::SUCCESS
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
fn launch(socket: BorrowedFd<'_>, packet: &[u8], mask: &SigSet, children: &SignalFd) -> Option<u8> {
    let request: LaunchRequest = match serde_json::from_slice(packet) {
        Ok(request) => request,
        Err(err) => {
            let error = format!("invalid launch request: {err}");
            reply(socket, &LaunchReply { pid: None, error: Some(error) }, None);
            return None;
        }
    };
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
    retitle_as_forked();
    // Standard error stays the launcher's log, for panics; diagnostics go
    // to the job's shim log, created at the first line.
    run_shim(SpecSource::File(request.spec_file.clone().into()), Some(request.log_file.clone().into()))
}

/// Rewrites the command line that `ps` shows for this forked child from
/// `burro-shim --launcher` to `burro-shim --forked`, so operators can tell
/// the launcher from its shims. `program_invocation_name` is glibc's
/// pointer to `argv[0]`, and the kernel stores the arguments one after the
/// other, so `argv[1]` starts after `argv[0]`'s terminating NUL.
fn retitle_as_forked() {
    extern "C" {
        static program_invocation_name: *mut libc::c_char;
    }
    const FROM: &[u8] = b"--launcher\0";
    const TO: &[u8] = b"--forked\0\0\0";
    // SAFETY: the pointer is glibc's, set at start-up to argv[0]. The write
    // stays within argv[1], which is checked to be FROM, and TO has FROM's
    // length. The argument strings are writable memory of this process.
    unsafe {
        let name = program_invocation_name;
        if name.is_null() {
            return;
        }
        let argument = name.add(libc::strlen(name) + 1).cast::<u8>();
        if std::slice::from_raw_parts(argument, FROM.len()) == FROM {
            std::ptr::copy_nonoverlapping(TO.as_ptr(), argument, TO.len());
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
