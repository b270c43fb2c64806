//! Schema-based testing of the HTTP API: `burro serve` as a real process, and
//! schemathesis generating requests from the server's OpenAPI document.
//! `scripts/schemathesis` fails the run on any 5xx response and on any
//! response that the document does not describe.

mod common;

use common::{repo_root, start, Server};
use std::process::Command;

/// Starts `burro serve` on a free port with one external job, `trivial`,
/// which completes at once.
fn serve() -> Server {
    let worker = repo_root().join("crates/burro/tests/workers/trivial.py");
    start(|sockets| {
        format!(
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
            sockets = sockets.display(),
            worker = worker.display(),
        )
    })
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
