//! `burro-shim --launcher` driven directly over its socket, as the server
//! drives it: one request, one reply with a pidfd, and a forked shim.

use burro_protocol::control::{LaunchReply, LaunchRequest};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sends one request and returns the reply and the descriptor passed with it.
fn request(socket: &OwnedFd, request: &LaunchRequest) -> (LaunchReply, Option<OwnedFd>) {
    let packet = serde_json::to_vec(request).unwrap();
    send(socket.as_raw_fd(), &packet, MsgFlags::empty()).expect("the launcher takes the request");
    let mut buffer = [0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buffer)];
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).expect("a reply");
    let mut pidfd = None;
    for control in message.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = control {
            // SAFETY: SCM_RIGHTS installed these descriptors in this process.
            pidfd = fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).next();
        }
    }
    let length = message.bytes;
    (serde_json::from_slice(&buffer[..length]).expect("the reply is JSON"), pidfd)
}

/// Waits until `pidfd` reports that its process exited.
fn wait_exit(pidfd: &OwnedFd) {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll on the pidfd");
    assert_eq!(ready, 1, "the shim exited within 10 s");
}

#[test]
fn launcher_forks_shim_with_pidfd() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
    let launcher_log = dir.path().join("launcher.log");
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_burro-shim"))
        .arg("--launcher")
        .stdin(Stdio::from(theirs))
        .stderr(Stdio::from(std::fs::File::create(&launcher_log).unwrap()))
        .spawn()
        .expect("the launcher starts");

    // A spec file that does not exist: the shim reports it in its own log
    // and exits with status 2.
    let shim_log = dir.path().join("job.log");
    let missing = dir.path().join("missing.spec");
    let (reply, pidfd) = request(
        &ours,
        &LaunchRequest {
            spec_file: missing.to_string_lossy().into_owned(),
            log_file: shim_log.to_string_lossy().into_owned(),
        },
    );
    assert_eq!(reply.error, None);
    let pid = reply.pid.expect("the reply names the shim");
    let pidfd = pidfd.expect("the reply carries a pidfd");
    wait_exit(&pidfd);
    let log = std::fs::read_to_string(&shim_log).expect("the shim created its log at its first line");
    assert!(log.starts_with("burro-shim: claiming the job spec file"), "{log}");
    assert!(log.contains(&missing.display().to_string()), "{log}");

    // The launcher, not this test, is the shim's parent, and it reaps it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the launcher reaped shim {pid} within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }

    // An invalid request gets an error reply and no descriptor.
    send(ours.as_raw_fd(), b"not json", MsgFlags::empty()).unwrap();
    let mut buffer = [0u8; 4096];
    let length = nix::sys::socket::recv(ours.as_raw_fd(), &mut buffer, MsgFlags::empty()).unwrap();
    let reply: LaunchReply = serde_json::from_slice(&buffer[..length]).unwrap();
    assert_eq!(reply.pid, None);
    assert!(reply.error.as_deref().unwrap_or_default().starts_with("invalid launch request"), "{reply:?}");

    // Closing our end makes the launcher exit.
    drop(ours);
    let status = launcher.wait().unwrap();
    assert!(status.success(), "launcher exit: {status}; log: {}", std::fs::read_to_string(&launcher_log).unwrap_or_default());
}

/// Returns the pids of `pid`'s children.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|child| child.parse().unwrap())
        .collect()
}

/// Waits until `pid` has a child other than those in `except`, and returns it.
fn new_child(pid: u32, except: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(child) = children_of(pid).into_iter().find(|child| !except.contains(child)) {
            return child;
        }
        assert!(Instant::now() < deadline, "the launcher forked a spare within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pid` is gone or a zombie.
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = state.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()).unwrap_or_default();
        if state.is_none() || state == Some('Z') {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} exited within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn requests_go_to_the_spare_forked_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_burro-shim"))
        .arg("--launcher")
        .stdin(Stdio::from(theirs))
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("launcher.log")).unwrap()))
        .spawn()
        .expect("the launcher starts");
    let missing = |name: &str| LaunchRequest {
        spec_file: dir.path().join(format!("{name}.spec")).to_string_lossy().into_owned(),
        log_file: dir.path().join(format!("{name}.log")).to_string_lossy().into_owned(),
    };
    let shim_log = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default();

    // Before any request, one child waits: the request goes to it.
    let spare = new_child(launcher.id(), &[]);
    // The forked child renames itself right after the fork.
    let deadline = Instant::now() + Duration::from_secs(10);
    let title = loop {
        let line = std::fs::read(format!("/proc/{spare}/cmdline")).unwrap();
        let title = line.split(|&b| b == 0).nth(1).map(<[u8]>::to_vec);
        if title.as_deref() == Some(b"--spare") || Instant::now() > deadline {
            break title;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(title.as_deref(), Some(&b"--spare"[..]), "ps shows the waiting spare as such");
    let (reply, pidfd) = request(&ours, &missing("first"));
    assert_eq!(reply.pid, Some(spare), "the spare took the request");
    wait_exit(&pidfd.expect("the reply carries the spare's pidfd"));
    assert!(shim_log("first").starts_with("burro-shim: claiming the job spec file"), "{}", shim_log("first"));

    // A spare that dies before its request is replaced by a fork at the request.
    let next = new_child(launcher.id(), &[spare]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(next as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(next);
    let (reply, pidfd) = request(&ours, &missing("second"));
    let forked = reply.pid.expect("the reply names a shim");
    assert_ne!(forked, next, "the dead spare did not get the request");
    wait_exit(&pidfd.expect("the reply carries a pidfd"));
    assert!(shim_log("second").starts_with("burro-shim: claiming the job spec file"), "{}", shim_log("second"));

    // The launcher exits when our end closes, and its unused spare with it.
    let last = new_child(launcher.id(), &[spare, next, forked]);
    drop(ours);
    assert!(launcher.wait().unwrap().success());
    wait_gone(last);
}

#[test]
fn unknown_arguments_are_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_burro-shim")).args(["--bogus", "x"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(r#"invalid arguments ["--bogus", "x"]"#), "{stderr}");
    assert!(stderr.contains("usage: burro-shim [--spec-file PATH | --launcher]"), "{stderr}");
}
