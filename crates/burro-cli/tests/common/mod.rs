//! Shared harness of the binary tests: `burro serve` as a real process on a
//! free port, found through the address it prints.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BURRO: &str = env!("CARGO_BIN_EXE_burro");

/// Returns the repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Returns the worker scripts of the server's integration tests.
pub fn workers() -> PathBuf {
    repo_root().join("crates/burro/tests/workers")
}

/// A running `burro serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// Every line the server wrote to standard error.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Data and socket directories owned by this server, if any.
    _dirs: Option<(tempfile::TempDir, tempfile::TempDir)>,
}

impl Server {
    /// Kills the server with SIGKILL and waits for it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` to the server's process group.
    pub fn signal_group(&self, signal: i32) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let signal = nix::sys::signal::Signal::try_from(signal).expect("a valid signal number");
        nix::sys::signal::kill(group, signal).expect("signalling the server's process group");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `burro serve` with a configuration written by `config`, which
/// receives a short socket root (socket paths must stay under 107 bytes).
/// The data directory is the configuration file's directory.
pub fn start(config: impl FnOnce(&Path) -> String) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::Builder::new().prefix("bc").tempdir_in("/tmp").unwrap();
    let config_path = dir.path().join("burro.toml");
    std::fs::write(&config_path, config(sockets.path())).unwrap();
    let mut server = spawn(&config_path, false);
    server._dirs = Some((dir, sockets));
    server
}

/// Starts `burro serve --config <config>`, in a process group of its own
/// when `own_group` is set, and waits until it prints its address.
pub fn spawn(config: &Path, own_group: bool) -> Server {
    let mut command = Command::new(BURRO);
    command.args(["serve", "--config"]).arg(config).env("BURRO_LOG", "warn").stderr(Stdio::piped());
    if own_group {
        command.process_group(0);
    }
    let mut child = command.spawn().unwrap();

    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("burro is serving on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("burro serve printed its address");
    Server {
        child,
        url,
        stderr: lines,
        _dirs: None,
    }
}
