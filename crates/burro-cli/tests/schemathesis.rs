//! Schema-based testing of the HTTP API: `burro serve` as a real process, and
//! schemathesis generating requests from the server's OpenAPI document.
//! `scripts/schemathesis` fails the run on any 5xx response and on any
//! response that the document does not describe.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BURRO: &str = env!("CARGO_BIN_EXE_burro");

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Server {
    child: Child,
    url: String,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    _sockets: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `burro serve` on a free port with one external job, `trivial`,
/// which completes at once.
fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    // Socket paths must stay under 107 bytes, so use a short directory.
    let sockets = tempfile::Builder::new().prefix("bs").tempdir_in("/tmp").unwrap();
    let worker = repo_root().join("crates/burro/tests/workers/trivial.py");
    let config = format!(
        r#"
[server]
bind = "127.0.0.1:0"
data_dir = "state"
[external]
socket_dir = "{sockets}/s"
[external_jobs.trivial]
command = "python3"
args = ["{worker}"]
max_attempts = 1
"#,
        sockets = sockets.path().display(),
        worker = worker.display(),
    );
    let config_path = dir.path().join("burro.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(BURRO)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("BURRO_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = lines.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("burro is serving on ") {
                let url = rest.split_whitespace().next().unwrap_or_default().to_string();
                let _ = tx.send(url);
            }
            kept.lock().unwrap().push(line);
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("burro serve printed its address");
    Server {
        child,
        url,
        stderr: lines,
        _dir: dir,
        _sockets: sockets,
    }
}

#[test]
fn schemathesis_run_finds_no_failures() {
    let root = repo_root();
    let venv = root.join("target/schemathesis-venv/bin/schemathesis");
    assert!(
        venv.exists(),
        "schemathesis is not installed at {}: run the README's test command (./scripts/test), \
         or `scripts/schemathesis --install`, which creates it",
        venv.display()
    );
    let server = serve();
    let output = Command::new(root.join("scripts/schemathesis"))
        .arg(&server.url)
        .output()
        .expect("scripts/schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let server_log = server.stderr.lock().unwrap().join("\n");
    assert!(
        output.status.success(),
        "scripts/schemathesis exited with {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server stderr\n{server_log}",
        output.status.code()
    );
    assert!(!server_log.contains("panicked"), "the server panicked:\n{server_log}");
}
