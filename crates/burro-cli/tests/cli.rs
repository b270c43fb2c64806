//! The `burro` binary end to end: `serve` as a real process, client
//! commands against it, and their exit statuses.

mod common;

use common::{start, workers, Server, BURRO};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Starts `burro serve` on a free port with the test workers registered.
fn serve() -> Server {
    let workers = workers();
    start(|sockets| {
        format!(
            r#"
[server]
bind = "127.0.0.1:0"
data_dir = "state"
[jobs]
retry_backoff = false
[external]
socket_dir = "{sockets}/s"
[external_jobs.py]
command = "python3"
args = ["{py}"]
max_attempts = 1
[external_jobs.exit]
command = "bash"
args = ["{sh}"]
max_attempts = 1
"#,
            sockets = sockets.display(),
            py = workers.join("complete.py").display(),
            sh = workers.join("exit_code.sh").display(),
        )
    })
}

fn burro(server: &str, args: &[&str]) -> Output {
    Command::new(BURRO).arg("--server").arg(server).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn enqueue_wait_exits_zero_on_completion() {
    let server = serve();
    let output = burro(&server.url, &["enqueue", "py", "--data", r#"{"x": 1}"#, "--wait"]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(stdout.contains(r#"{"echo":{"x":1}}"#), "{stdout}");
}

#[test]
fn enqueue_wait_exits_one_on_failure() {
    let server = serve();
    let output = burro(&server.url, &["enqueue", "exit", "--data", r#"{"code": 3}"#, "--wait"]);
    assert_eq!(output.status.code(), Some(1), "stderr: {}", text(&output.stderr));
    assert!(text(&output.stdout).contains("process exited with code 3"));
}

#[test]
fn status_list_and_cancel_report_the_job() {
    let server = serve();
    let output = burro(&server.url, &["enqueue", "py", "--data", "7"]);
    assert_eq!(output.status.code(), Some(0));
    let id = text(&output.stdout).trim().to_string();
    let output = burro(&server.url, &["watch", &id]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));

    let output = burro(&server.url, &["status", &id, "--json"]);
    let job: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"], serde_json::json!({"echo": 7}));

    let output = burro(&server.url, &["list", "--status", "completed", "--json"]);
    let page: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(page["total"], 1);

    let second = text(&burro(&server.url, &["enqueue", "py", "--data", "8"]).stdout).trim().to_string();
    let output = burro(&server.url, &["list", "--limit", "1"]);
    let listing = text(&output.stdout);
    assert!(listing.contains(&second), "{listing}");
    assert!(listing.contains(&format!("next page: burro list --after {second}")), "{listing}");
    let output = burro(&server.url, &["list", "--limit", "1", "--after", &second, "--json"]);
    let page: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(page["jobs"][0]["id"], id.as_str(), "the page after the newest job holds the first one");
    let output = burro(&server.url, &["list", "--after", "no-such-job"]);
    assert_eq!(output.status.code(), Some(2), "an unknown cursor is bad input: {}", text(&output.stderr));
    assert!(text(&output.stderr).contains("not a job id"), "{}", text(&output.stderr));

    let output = burro(&server.url, &["cancel", &id]);
    assert_eq!(output.status.code(), Some(1), "a finished job cannot be cancelled");
    assert!(text(&output.stderr).contains("already finished"));

    let output = burro(&server.url, &["logs", &id]);
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn bad_input_exits_two_with_a_reason() {
    let server = serve();
    let output = burro(&server.url, &["enqueue", "py", "--data", "{not json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("invalid JSON in --data"), "{}", text(&output.stderr));

    let output = burro(&server.url, &["enqueue", "nope"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("unknown job name \"nope\""), "{stderr}");
    assert!(stderr.contains("exit, py"), "{stderr}");

    let output = burro(&server.url, &["status", "missing-id"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("not found"));
}

#[test]
fn unreachable_server_exits_two() {
    let output = burro("http://127.0.0.1:9", &["status", "x"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot reach the server at http://127.0.0.1:9"), "{stderr}");
    assert!(stderr.contains("burro serve"), "{stderr}");
}

#[test]
fn config_typo_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("burro.toml");
    std::fs::write(&config, "[jobs]\nconcurency = 2\n").unwrap();
    let started = Instant::now();
    let output = Command::new(BURRO).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("concurency"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
