//! Several `burro serve` nodes on one PostgreSQL database: each job runs
//! once across three nodes, a killed node's jobs are rescued by the
//! others, a node that comes back after losing its lease stops the jobs it
//! lost, and a PostgreSQL restart loses nothing and rescues nothing.
//!
//! The shared server comes from `BURRO_TEST_POSTGRES_URL`, with a schema per
//! test. The restart test runs a private PostgreSQL server of its own, so
//! stopping it disturbs no other test.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(180);

/// Returns the test PostgreSQL URL with a fresh schema, or `None` (with a
/// message naming the test) when the variable is unset outside CI.
async fn schema_url(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("BURRO_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "{test}: BURRO_TEST_POSTGRES_URL is not set under CI; run ./scripts/test"
        );
        eprintln!("skipped {test}: BURRO_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("c_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// One node's directories and configuration; it can be started again on
/// the same data directory.
struct Node {
    _dir: tempfile::TempDir,
    _sockets: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    /// Writes the configuration of a node whose lease lasts `lease` seconds
    /// and whose jobs others rescue after as long again.
    fn new(database_url: &str, runs: &Path, concurrency: u32, lease: u32) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let sockets = tempfile::Builder::new()
            .prefix("bn")
            .tempdir_in("/tmp")
            .unwrap();
        let config = format!(
            r#"
[server]
bind = "127.0.0.1:0"
data_dir = "state"
database_url = "{database_url}"
database_pool_size = 4
lease_ttl = "{lease}s"
rescue_after = "{lease}s"
drain_timeout = "1s"
[jobs]
concurrency = {concurrency}
max_attempts = 3
poll_interval = "500ms"
retry_backoff = {{ base = "50ms", max = "200ms" }}
[external]
socket_dir = "{sockets}/s"
heartbeat_check_interval = "200ms"
default_heartbeat_timeout = "30s"
kill_grace = "500ms"
shim_linger = "60s"
[external_jobs.record]
command = "python3"
args = ["{worker}"]
env = {{ RUNS_FILE = "{runs}" }}
"#,
            sockets = sockets.path().display(),
            worker = common::workers().join("record_run.py").display(),
            runs = runs.display(),
        );
        let path = dir.path().join("burro.toml");
        std::fs::write(&path, config).unwrap();
        Node {
            _dir: dir,
            _sockets: sockets,
            config: path,
        }
    }

    fn serve(&self) -> Server {
        common::spawn(&self.config, true)
    }
}

async fn enqueue(server: &Server, data: Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/jobs", server.url))
        .json(&json!({"name": "record", "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn job(server: &Server, id: &str) -> Value {
    reqwest::get(format!("{}/api/jobs/{id}", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every job is finished, listing them page by page with the
/// keyset cursor; returns them by id.
async fn wait_all_finished(server: &Server, ids: &[String]) -> HashMap<String, Value> {
    let wanted: HashSet<&String> = ids.iter().collect();
    let mut finished = HashMap::new();
    wait_until("every job finished", async || {
        finished.clear();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/api/jobs?limit=500", server.url);
            if let Some(after) = &after {
                url.push_str(&format!("&after={after}"));
            }
            let page: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            for job in page["jobs"].as_array().unwrap() {
                let id = job["id"].as_str().unwrap().to_string();
                if wanted.contains(&id)
                    && matches!(
                        job["status"].as_str(),
                        Some("completed" | "failed" | "cancelled")
                    )
                {
                    finished.insert(id, job.clone());
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        finished.len() == ids.len()
    })
    .await;
    finished
}

fn runs_of(runs: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(runs).unwrap_or_default().lines() {
        *counts.entry(line.trim().to_string()).or_default() += 1;
    }
    counts
}

/// Reads `job:*` and `jobs` SSE events of a server in the background.
fn follow_events(server: &Server) -> std::sync::Arc<std::sync::Mutex<String>> {
    let body = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = body.clone();
    let url = format!("{}/api/events?channel=jobs", server.url);
    tokio::spawn(async move {
        let mut response = reqwest::get(url).await.unwrap();
        while let Ok(Some(chunk)) = response.chunk().await {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    body
}

/// Returns the data of the SSE events named `name` in a stream's text.
fn sse_events(body: &str, name: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|block| block.lines().any(|line| line == format!("event: {name}")))
        .filter_map(|block| block.lines().find_map(|line| line.strip_prefix("data: ")))
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect()
}

fn process_alive(pid: i32) -> bool {
    // A zombie is dead for this purpose: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Returns the pids of the live `record_run.py` workers whose environment
/// has `RUNS_FILE=<runs>`.
fn workers_of(runs: &Path) -> Vec<i32> {
    let marker = format!("RUNS_FILE={}", runs.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains("record_run.py") {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes())
            && process_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Ends the workers a test leaves behind (those of a killed node that has
/// not come back).
fn kill_workers(runs: &Path) {
    for pid in workers_of(runs) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_a_thousand_jobs_once_each() {
    let Some(url) = schema_url("three_nodes_run_a_thousand_jobs_once_each").await else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let runs = shared.path().join("runs");
    // Long leases: this test is about claims, and a loaded machine must not
    // turn a slow renewal into a rescue.
    let nodes: Vec<Node> = (0..3).map(|_| Node::new(&url, &runs, 8, 15)).collect();
    let servers: Vec<Server> = nodes.iter().map(Node::serve).collect();

    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(enqueue(&servers[i % 3], json!({"n": i})).await);
    }
    let finished = wait_all_finished(&servers[1], &ids).await;

    let counts = runs_of(&runs);
    let mut ran_on = HashMap::<String, usize>::new();
    let logs: Vec<String> = servers.iter().map(|server| server.stderr.lock().unwrap().join("\n")).collect();
    for id in &ids {
        let job = &finished[id];
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["attempts"], 1, "{job}\nnode logs:\n{}", logs.join("\n----\n"));
        assert_eq!(job["result"]["runs"], 1, "{job}");
        assert_eq!(counts.get(id), Some(&1), "job {id} ran exactly once");
        *ran_on
            .entry(job["nodeId"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 1000, "no other job ran");
    assert_eq!(ran_on.len(), 3, "every node ran jobs: {ran_on:?}");

    let nodes_view: Value = reqwest::get(format!("{}/api/nodes", servers[0].url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = nodes_view["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{nodes_view}");
    assert!(
        listed
            .iter()
            .all(|node| node["alive"] == true && node["fenced"] == false),
        "{nodes_view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_jobs_are_rescued_by_the_others() {
    let Some(url) = schema_url("a_killed_node_s_jobs_are_rescued_by_the_others").await else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let runs = shared.path().join("runs");
    let doomed = Node::new(&url, &runs, 10, 2);
    let victim = doomed.serve();
    // The first run of each job outlives the test's patience; the second
    // ends at once.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(enqueue(&victim, json!({"n": i, "first_seconds": 120})).await);
    }
    wait_until("the jobs run on the doomed node", async || {
        runs_of(&runs).len() == 10
    })
    .await;
    let victim_id = job(&victim, &ids[0]).await["nodeId"]
        .as_str()
        .unwrap()
        .to_string();

    let survivors: Vec<Node> = (0..2).map(|_| Node::new(&url, &runs, 10, 2)).collect();
    let servers: Vec<Server> = survivors.iter().map(Node::serve).collect();
    let events = follow_events(&servers[0]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first_runs = workers_of(&runs);
    assert_eq!(first_runs.len(), 10, "ten first runs are running");

    victim.kill9();
    let finished = wait_all_finished(&servers[0], &ids).await;
    for id in &ids {
        let job = &finished[id];
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["attempts"], 2, "rescued, then run again: {job}");
        assert_eq!(job["result"]["runs"], 2, "{job}");
        assert_ne!(job["nodeId"], victim_id, "{job}");
    }
    let body = events.lock().unwrap().clone();
    let lost = sse_events(&body, "lost");
    let lost_ids: HashSet<&str> = lost
        .iter()
        .map(|data| data["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(
        lost_ids.len(),
        10,
        "a lost event per job, seen on a surviving node: {body}"
    );
    assert!(
        lost.iter().all(|data| data["node"] == victim_id.as_str()),
        "{lost:?}"
    );

    // The doomed node comes back on its data directory. The first runs, still
    // going under their shims, are no longer owned by this node, so it stops them.
    let back = doomed.serve();
    wait_until("the first runs are stopped", async || {
        first_runs.iter().all(|pid| !process_alive(*pid))
    })
    .await;
    for id in &ids {
        assert_eq!(
            job(&back, id).await["attempts"],
            2,
            "the returning node recorded nothing"
        );
    }
    assert_eq!(runs_of(&runs).values().sum::<usize>(), 20);
    kill_workers(&runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_lease_stops_the_jobs_it_lost() {
    let Some(url) = schema_url("a_node_that_lost_its_lease_stops_the_jobs_it_lost").await else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let runs = shared.path().join("runs");
    let frozen = Node::new(&url, &runs, 10, 2);
    let stalled = frozen.serve();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(enqueue(&stalled, json!({"n": i, "first_seconds": 120})).await);
    }
    wait_until("the jobs run on the stalled node", async || {
        runs_of(&runs).len() == 5
    })
    .await;
    let rescuer_node = Node::new(&url, &runs, 10, 2);
    let rescuer = rescuer_node.serve();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first_runs = workers_of(&runs);
    assert_eq!(first_runs.len(), 5);

    // The stalled node stops renewing while its shims and jobs go on, as in
    // a long pause or a network partition from the database.
    let pid = nix::unistd::Pid::from_raw(stalled.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let finished = wait_all_finished(&rescuer, &ids).await;
    assert!(
        first_runs.iter().all(|pid| process_alive(*pid)),
        "the first runs still go on under their shims"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    wait_until("the resumed node stops the jobs it lost", async || {
        first_runs.iter().all(|pid| !process_alive(*pid))
    })
    .await;
    for id in &ids {
        assert_eq!(finished[id]["status"], "completed");
        assert_eq!(finished[id]["result"]["runs"], 2);
        let now = job(&stalled, id).await;
        assert_eq!(now["status"], "completed", "{now}");
        assert_eq!(
            now["attempts"], 2,
            "the resumed node recorded nothing: {now}"
        );
    }
    let stderr = stalled.stderr.lock().unwrap().join("\n");
    assert!(stderr.contains("lease was taken"), "{stderr}");

    // The resumed node holds a new lease and runs jobs again.
    let again = enqueue(&stalled, json!({"n": 99})).await;
    let done = wait_all_finished(&stalled, std::slice::from_ref(&again)).await;
    assert_eq!(done[&again]["status"], "completed");
}

/// A PostgreSQL server of the test's own, in a temporary directory, that
/// can be stopped and started again on the same port.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Runs the server's commands as this user when the test runs as root
    /// (PostgreSQL refuses to run as root).
    run_as: Option<String>,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Returns `None` when no PostgreSQL server binaries are installed and
    /// the test is not under CI.
    fn start(test: &str) -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .flatten()
                    .map(|v| v.path().join("bin"))
                    .find(|bin| bin.join("pg_ctl").exists())
            });
        let Some(bin) = bin else {
            assert!(
                std::env::var("CI").is_err(),
                "{test}: no PostgreSQL server binaries under /usr/lib/postgresql"
            );
            eprintln!("skipped {test}: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("bpg")
            .tempdir_in("/tmp")
            .unwrap();
        let run_as = nix::unistd::Uid::effective()
            .is_root()
            .then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown of the private PostgreSQL directory failed"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PrivatePostgres {
            bin,
            data: dir.path().join("data"),
            port,
            run_as,
            _dir: dir,
        };
        server.run(
            "initdb",
            &[
                "-D",
                server.data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "burro",
                "--no-sync",
            ],
        );
        server.pg_ctl_start();
        Some(server)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(self.bin.join(program));
                command
            }
            None => Command::new(self.bin.join(program)),
        };
        let output = command.args(args).current_dir("/tmp").output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.parent().unwrap().display()
        );
        let log = self.data.parent().unwrap().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://burro@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        if let Some(user) = &self.run_as {
            let _ = Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing_and_rescues_nothing() {
    let Some(postgres) =
        PrivatePostgres::start("a_postgres_restart_loses_nothing_and_rescues_nothing")
    else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let runs = shared.path().join("runs");
    let nodes: Vec<Node> = (0..2)
        .map(|_| Node::new(&postgres.url(), &runs, 20, 2))
        .collect();
    let servers: Vec<Server> = nodes.iter().map(Node::serve).collect();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(enqueue(&servers[i % 2], json!({"n": i, "first_seconds": 3})).await);
    }
    wait_until("every job runs", async || runs_of(&runs).len() == 30).await;

    // Down for longer than a lease lasts: every lease expires meanwhile,
    // and jobs end while the database is away.
    postgres.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    postgres.pg_ctl_start();

    let finished = wait_all_finished(&servers[0], &ids).await;
    for id in &ids {
        let job = &finished[id];
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["attempts"], 1, "no job was rescued: {job}");
        assert_eq!(job["result"]["runs"], 1, "{job}");
    }
    // Claims resume on both nodes.
    let mut later = Vec::new();
    for i in 0..10 {
        later.push(enqueue(&servers[i % 2], json!({"n": 100 + i})).await);
    }
    let finished = wait_all_finished(&servers[1], &later).await;
    assert!(finished.values().all(|job| job["status"] == "completed"));
    for server in &servers {
        let stderr = server.stderr.lock().unwrap().join("\n");
        assert!(!stderr.contains("job lost"), "{stderr}");
        let lease_failures = stderr.matches("renewing the node lease failed").count();
        assert!(
            (1..=2).contains(&lease_failures),
            "the outage is logged once per state change, not per attempt: {stderr}"
        );
    }
}
