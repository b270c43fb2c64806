//! Server restarts with real kills: jobs keep running under their shims,
//! reconnect to the next server, and nothing they report is lost.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

fn worker(name: &str) -> String {
    common::workers().join(name).display().to_string()
}

/// A data directory, a socket directory and a configuration shared by the
/// servers of one test.
struct Site {
    dir: tempfile::TempDir,
    _sockets: tempfile::TempDir,
    config: PathBuf,
}

impl Site {
    fn new(extra_external: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let sockets = tempfile::Builder::new().prefix("br").tempdir_in("/tmp").unwrap();
        let config = format!(
            r#"
[server]
bind = "127.0.0.1:0"
data_dir = "state"
drain_timeout = "1s"
[jobs]
concurrency = 200
max_attempts = 1
[external]
socket_dir = "{sockets}/s"
heartbeat_check_interval = "200ms"
{extra_external}
[external_jobs.numbered]
command = "python3"
args = ["{numbered}"]
heartbeat_timeout = "5s"
"#,
            sockets = sockets.path().display(),
            numbered = worker("numbered.py"),
        );
        let path = dir.path().join("burro.toml");
        std::fs::write(&path, config).unwrap();
        Site { dir, _sockets: sockets, config: path }
    }

    fn exit_dir(&self) -> PathBuf {
        self.dir.path().join("state/exits")
    }

    /// Starts `burro serve` in a process group of its own.
    fn serve(&self) -> Server {
        common::spawn(&self.config, true)
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

async fn enqueue(server: &Server, data: Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/jobs", server.url))
        .json(&json!({"name": "numbered", "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

async fn job(server: &Server, id: &str) -> Value {
    reqwest::get(format!("{}/api/jobs/{id}", server.url)).await.unwrap().json().await.unwrap()
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_finished(server: &Server, ids: &[String]) -> HashMap<String, Value> {
    let mut finished = HashMap::new();
    wait_until("every job finished", async || {
        for id in ids {
            if finished.contains_key(id) {
                continue;
            }
            let job = job(server, id).await;
            if matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
                finished.insert(id.clone(), job);
            }
        }
        finished.len() == ids.len()
    })
    .await;
    finished
}

async fn log_messages(server: &Server, id: &str) -> Vec<String> {
    let logs: Value = reqwest::get(format!("{}/api/jobs/{id}/logs", server.url)).await.unwrap().json().await.unwrap();
    logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["stream"] == "log")
        .map(|entry| entry["message"].as_str().unwrap().to_string())
        .collect()
}

/// Checks that the numbers 1..=count all arrived, in order, where a number
/// may repeat (replayed after a crash) but never skip ahead.
fn assert_numbers_complete(id: &str, messages: &[String], count: u64) {
    let numbers: Vec<u64> = messages
        .iter()
        .filter_map(|m| m.split(' ').next().and_then(|word| word.parse().ok()))
        .collect();
    let mut highest = 0;
    for number in &numbers {
        assert!(*number <= highest + 1, "job {id}: {number} arrived after {highest}, so a message was lost: {numbers:?}");
        highest = highest.max(*number);
    }
    assert_eq!(highest, count, "job {id}: the last number is missing: {numbers:?}");
}

/// Returns true once every job has reported progress. Under load a short
/// job may already have finished by then, which the callers allow.
async fn running_with_progress(server: &Server, ids: &[String]) -> bool {
    for id in ids {
        let job = job(server, id).await;
        if job["progress"]["percent"].is_null() {
            return false;
        }
    }
    true
}

/// Starts a server, enqueues a `numbered` job with `data` and returns the
/// server and the job's id once the job runs and reports progress.
async fn serve_running_job(site: &Site, data: Value) -> (Server, String) {
    let server = site.serve();
    let id = enqueue(&server, data).await;
    let ids = [id.clone()];
    wait_until("the job runs", async || running_with_progress(&server, &ids).await).await;
    (server, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_restart_loses_no_message() {
    let site = Site::new("");
    let first = site.serve();
    let count = 60;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(enqueue(&first, json!({"count": count, "delay": 0.05})).await);
    }
    wait_until("every job runs and reports", async || running_with_progress(&first, &ids).await).await;
    let killed_at = burro::clock::now_ms();
    first.kill9();
    // The jobs keep sending while no server is up.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    for id in &ids {
        let job = &finished[id];
        assert_eq!(job["status"], "completed", "job {id}: {job}");
        assert_eq!(job["result"], json!({"count": count}));
        assert_eq!(job["attempts"], 1, "job {id} must not run twice");
        let messages = log_messages(&second, id).await;
        assert_numbers_complete(id, &messages, count);
        // Under load a job may have ended before the kill; every other one
        // was taken over by the second server.
        let ended_before_kill = job["completedAt"]
            .as_str()
            .and_then(|text| burro::clock::parse_time(text, 0).ok())
            .is_some_and(|ms| ms < killed_at);
        if !ended_before_kill {
            assert!(
                messages.iter().any(|m| m.contains("shim reconnected")),
                "job {id}: no reconnect note in {messages:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_ending_while_server_is_down_keep_their_results() {
    let site = Site::new("");
    let first = site.serve();
    let completes = enqueue(&first, json!({"count": 10, "delay": 0.05})).await;
    let fails = enqueue(&first, json!({"count": 10, "delay": 0.05, "fail": true})).await;
    let ids = vec![completes.clone(), fails.clone()];
    wait_until("both jobs run", async || running_with_progress(&first, &ids).await).await;
    first.kill9();
    // Both jobs end while no server is up; their shims wait for the next one.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    assert_eq!(finished[&completes]["status"], "completed");
    assert_eq!(finished[&completes]["result"], json!({"count": 10}));
    assert_eq!(finished[&fails]["status"], "failed");
    assert!(finished[&fails]["error"].as_str().unwrap().contains("failed on purpose"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_record_finishes_job_after_restart() {
    let site = Site::new("shim_linger = \"1s\"");
    let first = site.serve();
    let completes = enqueue(&first, json!({"count": 5, "delay": 0.05})).await;
    let fails = enqueue(&first, json!({"count": 5, "delay": 0.05, "fail": true})).await;
    let ids = vec![completes.clone(), fails.clone()];
    wait_until("both jobs run", async || running_with_progress(&first, &ids).await).await;
    first.kill9();
    let exit_dir = site.exit_dir();
    wait_until("both shims wrote exit records", async || {
        ids.iter().all(|id| exit_dir.join(format!("{id}.exit")).exists())
    })
    .await;

    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    assert_eq!(finished[&completes]["status"], "completed");
    assert_eq!(finished[&completes]["result"], json!({"count": 5}));
    assert_eq!(finished[&fails]["status"], "failed");
    assert!(finished[&fails]["error"].as_str().unwrap().contains("failed on purpose"));
    assert_numbers_complete(&completes, &log_messages(&second, &completes).await, 5);
    wait_until("applied exit records are removed", async || {
        ids.iter().all(|id| !exit_dir.join(format!("{id}.exit")).exists())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reads_token_from_claimed_spec() {
    let site = Site::new("");
    let (first, id) = serve_running_job(&site, json!({"count": 20, "delay": 0.05})).await;
    let ids = vec![id.clone()];
    let claimed = site.exit_dir().join(format!("{id}.1.spec.claimed"));
    let spec: Value = serde_json::from_slice(&std::fs::read(&claimed).unwrap()).unwrap();
    assert_eq!(spec["jobId"], id.as_str(), "{spec}");
    assert_eq!(spec["token"].as_str().unwrap().len(), 48, "{spec}");
    first.kill9();

    // The store contains no token. The second server reads it from the spec
    // the shim claimed, accepts the shim and lets the attempt finish.
    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    assert_eq!(finished[&id]["status"], "completed", "{}", finished[&id]);
    assert_eq!(finished[&id]["attempts"], 1, "the attempt went on; it was not requeued");
    assert_numbers_complete(&id, &log_messages(&second, &id).await, 20);
    wait_until("the claimed spec of the ended job is removed", async || !claimed.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_line_counts_after_restart() {
    // The job sends a line over the limit, which the first server
    // acknowledges, then exits 0 without a terminal message under the
    // second server. The shim's exit report carries the oversize length.
    let site = Site::new(&format!(
        "max_message_bytes = 4096\n[external_jobs.big]\ncommand = \"python3\"\nargs = [\"{}\"]",
        worker("oversize.py")
    ));
    let first = site.serve();
    let response = reqwest::Client::new()
        .post(format!("{}/api/jobs", first.url))
        .json(&json!({"name": "big", "data": {"bytes": 10000, "complete": false, "sleep": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    wait_until("the oversize line is logged", async || {
        log_messages(&first, &id).await.iter().any(|message| message.contains("size limit"))
    })
    .await;
    first.kill9();

    let second = site.serve();
    let finished = wait_finished(&second, std::slice::from_ref(&id)).await;
    assert_eq!(finished[&id]["status"], "failed");
    assert_eq!(finished[&id]["error"], "message over the size limit (10000 bytes)");
}

fn parent_pid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_without_shim_or_record_is_lost() {
    let site = Site::new("reconnect_window = \"1s\"");
    let (first, id) = serve_running_job(&site, json!({"count": 1000, "delay": 0.05})).await;
    let ids = vec![id.clone()];
    let pid = job(&first, &id).await["pid"].as_i64().unwrap() as i32;
    let shim = parent_pid(pid);
    first.kill9();
    // SAFETY: both processes belong to this test's job.
    unsafe {
        libc_kill(shim, 9);
        libc_kill(pid, 9);
    }

    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    assert_eq!(finished[&id]["status"], "failed");
    let error = finished[&id]["error"].as_str().unwrap();
    assert!(error.starts_with("job lost"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_claimed_spec_loses_job() {
    let site = Site::new("reconnect_window = \"1s\"");
    let (first, id) = serve_running_job(&site, json!({"count": 100, "delay": 0.05})).await;
    let ids = vec![id.clone()];
    first.kill9();
    std::fs::write(site.exit_dir().join(format!("{id}.1.spec.claimed")), b"not json").unwrap();

    // A shim took the spec, so the job is not requeued beside it: its shim
    // cannot authenticate, and the job is lost after the reconnect window.
    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    assert_eq!(finished[&id]["status"], "failed", "{}", finished[&id]);
    let error = finished[&id]["error"].as_str().unwrap();
    assert!(error.starts_with("job lost"), "{error}");
}

/// Runs a job under a stand-in for burro-shim that never reads its spec
/// file, as when the server dies between writing the spec and the shim's
/// start. Then kills the server, calls `while_down` with the spec's path
/// and restarts the real server. Returns the spec's path and the job's
/// finished state.
async fn restart_with_an_unread_spec(while_down: impl FnOnce(&Path)) -> (PathBuf, Value) {
    let site = Site::new("reconnect_window = \"60s\"");
    let stub = site.dir.path().join("stub-shim");
    std::fs::write(&stub, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = std::fs::read_to_string(&site.config).unwrap();
    let stub_config = site.dir.path().join("burro-stub.toml");
    std::fs::write(&stub_config, config.replace("[server]\n", &format!("[server]\nshim_path = \"{}\"\n", stub.display()))).unwrap();

    let first = common::spawn(&stub_config, true);
    let id = enqueue(&first, json!({"count": 3, "delay": 0.01})).await;
    let spec = site.exit_dir().join(format!("{id}.1.spec"));
    wait_until("the spec file is written", async || spec.exists()).await;
    first.kill9();
    while_down(&spec);

    // The real shim path: the restarted server requeues the job instead of
    // waiting 60 s for a shim.
    let second = site.serve();
    let mut finished = wait_finished(&second, std::slice::from_ref(&id)).await;
    (spec, finished.remove(&id).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_spec_is_taken_back_and_requeued() {
    let (spec, job) = restart_with_an_unread_spec(|_| {}).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 1, "the attempt was given back");
    assert!(!spec.exists(), "the spec file was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_without_spec_is_requeued() {
    // No spec and no claimed spec: the server stopped before it wrote the
    // spec, so no shim can have started.
    let (_, job) = restart_with_an_unread_spec(|spec| std::fs::remove_file(spec).unwrap()).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 1, "the attempt was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_to_server_group_leaves_jobs_running() {
    let site = Site::new("");
    let mut first = site.serve();
    let id = enqueue(&first, json!({"count": 60, "delay": 0.05})).await;
    let ids = vec![id.clone()];
    wait_until("the job runs", async || running_with_progress(&first, &ids).await).await;
    let pid = job(&first, &id).await["pid"].as_i64().unwrap() as i32;

    // Ctrl-C in a terminal signals the whole foreground process group.
    first.signal_group(2);
    let status = first.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGINT stops the server cleanly");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the job survived the server's SIGINT");

    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    assert_eq!(finished[&id]["status"], "completed");
    assert_numbers_complete(&id, &log_messages(&second, &id).await, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loop_keeps_one_terminal_state_per_job() {
    let site = Site::new("");
    let mut server = site.serve();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(enqueue(&server, json!({"count": 30, "delay": 0.1})).await);
    }
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.kill9();
        server = site.serve();
    }
    let finished = wait_finished(&server, &ids).await;
    for id in &ids {
        let job = &finished[id];
        assert_eq!(job["status"], "completed", "job {id}: {job}");
        assert_eq!(job["attempts"], 1, "job {id} ran more than once");
        assert_eq!(job["result"], json!({"count": 30}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_spools_messages_while_server_is_down() {
    let site = Site::new("");
    let first = site.serve();
    // About 2 MB of log lines, most of them sent while no server is up:
    // more than the shim keeps in memory, so the rest goes to its spool file.
    let count = 8000;
    let id = enqueue(&first, json!({"count": count, "delay": 0.0003, "pad": 250})).await;
    let ids = vec![id.clone()];
    wait_until("the job runs", async || running_with_progress(&first, &ids).await).await;
    first.kill9();
    let exit_dir = site.exit_dir();
    wait_until("the shim spools frames to a file", async || {
        std::fs::read_dir(&exit_dir)
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".spool")))
            .unwrap_or(false)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let second = site.serve();
    let finished = wait_finished(&second, &ids).await;
    assert_eq!(finished[&id]["status"], "completed", "{}", finished[&id]);
    assert_numbers_complete(&id, &log_messages(&second, &id).await, count);
    wait_until("the spool file is removed", async || {
        std::fs::read_dir(&exit_dir).map(|entries| entries.count() == 0).unwrap_or(true)
    })
    .await;
}
