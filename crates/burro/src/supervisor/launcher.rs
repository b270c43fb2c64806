//! The supervisor's side of `burro-shim --launcher`, a warm process that
//! forks one shim per job instead of the server starting each shim with
//! `exec`. See the launcher's own documentation in `burro-shim` for why.
//!
//! The launcher is started on first use and restarted when it dies. Each
//! launch is one request and one reply on a sequenced-packet socket. The
//! reply carries a pidfd of the new shim, which becomes readable when the
//! shim exits. Any failure is returned to the caller, which then starts the
//! shim directly, so a broken launcher slows jobs down but never stops them.

use burro_protocol::control::{LaunchReply, LaunchRequest};
use nix::sys::socket::{recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How long a launch may take before the launcher is presumed stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A shim started by the launcher.
pub(crate) struct Launched {
    pub pid: u32,
    /// Readable once the shim has exited.
    pub exit: AsyncFd<OwnedFd>,
}

/// Failure of a launch, with whether the launcher may have started the
/// shim anyway.
pub(crate) struct LaunchFailure {
    pub message: String,
    /// The request reached the launcher, so a shim may have been forked and
    /// may have claimed the spec file.
    pub request_sent: bool,
}

/// Client of one `burro-shim --launcher` at a time, started on first use.
pub(crate) struct Launcher {
    shim_path: PathBuf,
    log_path: PathBuf,
    nofile: Option<String>,
    connection: tokio::sync::Mutex<Option<Connection>>,
    pid: AtomicU32,
}

struct Connection {
    socket: AsyncFd<OwnedFd>,
    child: tokio::process::Child,
}

impl Launcher {
    pub fn new(shim_path: PathBuf, log_path: PathBuf, nofile: Option<String>) -> Self {
        Launcher {
            shim_path,
            log_path,
            nofile,
            connection: tokio::sync::Mutex::new(None),
            pid: AtomicU32::new(0),
        }
    }

    /// Returns the pid of the running launcher, if one has been started.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Asks the launcher to start a shim for `spec_file`, starting the
    /// launcher first when none runs.
    pub async fn launch(&self, spec_file: &Path, log_file: &Path) -> Result<Launched, LaunchFailure> {
        let request = LaunchRequest {
            spec_file: spec_file.to_string_lossy().into_owned(),
            log_file: log_file.to_string_lossy().into_owned(),
        };
        let packet = serde_json::to_vec(&request).expect("a launch request serializes");
        let mut connection = self.connection.lock().await;
        // A launcher that died while idle is found out by the send; the
        // request then goes to a new launcher, once.
        let mut retry = connection.is_some();
        loop {
            let open = match connection.as_ref() {
                Some(open) => open,
                None => {
                    let started = self.start().map_err(|message| LaunchFailure { message, request_sent: false })?;
                    connection.insert(started)
                }
            };
            let result = open.exchange(&packet).await;
            if let Err(failure) = &result {
                // The launcher is killed as well, because a stuck one would
                // never read that our end was closed. The next launch starts
                // a new one.
                if let Some(mut old) = connection.take() {
                    let _ = old.child.start_kill();
                }
                self.pid.store(0, Ordering::Relaxed);
                if retry && !failure.request_sent {
                    retry = false;
                    continue;
                }
            }
            return result;
        }
    }

    fn start(&self) -> Result<Connection, String> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
            .map_err(|err| format!("creating the launcher socket failed: {err}"))?;
        // The launcher reads its socket with blocking calls.
        set_blocking(&theirs).map_err(|err| format!("configuring the launcher socket failed: {err}"))?;

        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|err| format!("opening the launcher log {} failed: {err}", self.log_path.display()))?;

        let mut command = tokio::process::Command::new(&self.shim_path);
        command
            .arg("--launcher")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(false)
            // Like a shim, the launcher stays out of the server's process
            // group, so signals aimed at the server's group miss it.
            .process_group(0);
        if let Some(limit) = &self.nofile {
            command.env(super::NOFILE_VARIABLE, limit);
        }

        let child = command
            .spawn()
            .map_err(|err| format!("starting the shim launcher {} failed: {err}", self.shim_path.display()))?;
        self.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        // SAFETY: the AsyncFd owns the socket and closes it only when it drops.
        let socket = unsafe { AsyncFd::register_with_interest(ours, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|err| format!("registering the launcher socket failed: {err}"))?;
        tracing::debug!(pid = ?child.id(), "shim launcher started");
        Ok(Connection { socket, child })
    }
}

impl Connection {
    async fn exchange(&self, packet: &[u8]) -> Result<Launched, LaunchFailure> {
        let not_sent = |message: String| LaunchFailure { message, request_sent: false };
        loop {
            let mut guard = self.socket.writable().await.map_err(|err| not_sent(format!("waiting on the launcher socket failed: {err}")))?;
            match guard.try_io(|fd| send(fd.as_raw_fd(), packet, MsgFlags::MSG_NOSIGNAL).map_err(std::io::Error::from)) {
                Ok(Ok(_)) => break,
                Ok(Err(err)) => return Err(not_sent(format!("sending to the shim launcher failed: {err}"))),
                Err(_would_block) => continue,
            }
        }
        let sent = |message: String| LaunchFailure { message, request_sent: true };
        let reply = tokio::time::timeout(REPLY_TIMEOUT, self.receive())
            .await
            .map_err(|_| sent(format!("the shim launcher did not reply within {} s", REPLY_TIMEOUT.as_secs())))?
            .map_err(sent)?;
        let (reply, pidfd) = reply;
        match (reply.pid, pidfd, reply.error) {
            (Some(pid), Some(pidfd), None) => {
                // SAFETY: the AsyncFd owns the pidfd and closes it only when it drops.
                let exit = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(|err| sent(format!("watching shim {pid} failed: {err}")))?;
                Ok(Launched { pid, exit })
            }
            (_, _, Some(error)) => Err(sent(format!("the shim launcher failed: {error}"))),
            (pid, _, None) => Err(sent(format!("the shim launcher replied without a pidfd (pid {pid:?})"))),
        }
    }

    async fn receive(&self) -> Result<(LaunchReply, Option<OwnedFd>), String> {
        let mut buffer = [0u8; 4096];
        loop {
            let mut guard = self.socket.readable().await.map_err(|err| format!("waiting on the launcher socket failed: {err}"))?;
            let received = guard.try_io(|fd| receive_packet(fd.as_raw_fd(), &mut buffer));
            match received {
                Ok(Ok((0, _))) => return Err("the shim launcher exited".into()),
                Ok(Ok((length, pidfd))) => {
                    let reply: LaunchReply = serde_json::from_slice(&buffer[..length]).map_err(|err| format!("the shim launcher sent an invalid reply: {err}"))?;
                    return Ok((reply, pidfd));
                }
                Ok(Err(err)) => return Err(format!("reading from the shim launcher failed: {err}")),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Reads one packet and the descriptor passed with it, if any.
fn receive_packet(fd: RawFd, buffer: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut pidfd = None;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed `raw` as a new descriptor of
                // this process; it is owned here from now on.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if pidfd.is_none() {
                    pidfd = Some(owned);
                }
            }
        }
    }
    Ok((message.bytes, pidfd))
}

/// Clears `O_NONBLOCK` on `fd`.
fn set_blocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}
