//! Hostile jobs: forged ids, foreign users, forged shims, connection
//! floods, output floods, huge lines, invalid UTF-8 and many short jobs.
//! Each test checks that the server and the other jobs are unaffected.

mod common;

use burro::config::ExternalJobConfig;
use burro::jobs::{EnqueueOptions, JobView};
use burro::store::{JobStatus, ListQuery};
use common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn once() -> EnqueueOptions {
    EnqueueOptions {
        max_attempts: Some(1),
        ..Default::default()
    }
}

/// Returns the configuration of a job that reports progress 10, then runs
/// until its release file exists.
fn waiting_job() -> ExternalJobConfig {
    external("python3", "wait_release.py")
}

/// Enqueues a `waiting_job` under `name` and waits for its progress report.
/// Returns the job id and its release file.
async fn start_waiting(server: &TestServer, name: &str) -> (String, PathBuf) {
    let release = server.dir.path().join(format!("{name}.release"));
    let id = server
        .core()
        .jobs
        .enqueue(name, json!({"releaseFile": release.display().to_string()}), once())
        .await
        .unwrap();
    server
        .wait_for(&id, "own progress and pid", |job| job.progress.percent == Some(10.0) && job.pid.is_some())
        .await;
    (id, release)
}

/// Releases a `waiting_job` and checks that it completes normally.
async fn release_and_expect_completion(server: &TestServer, id: &str, release: &Path) -> JobView {
    std::fs::write(release, b"go").unwrap();
    let job = server.wait_finished(id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"released": true})));
    job
}

fn socket_dir(server: &TestServer) -> PathBuf {
    server.socket_dir.path().join("s")
}

fn job_socket(server: &TestServer, id: &str) -> PathBuf {
    socket_dir(server).join(format!("job_{id}.sock"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Resident set size of a process in KiB, from /proc/<pid>/status.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Parent pid of a process, from /proc/<pid>/stat.
fn parent_pid(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Pids of the processes whose parent is this test process, with their
/// state letters.
fn children() -> Vec<(i64, char)> {
    children_of(i64::from(std::process::id()))
}

/// Returns the pid and state letter of every child of `process`.
fn children_of(process: i64) -> Vec<(i64, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i64>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else { continue };
        let mut fields = after.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let parent: Option<i64> = fields.next().and_then(|p| p.parse().ok());
        if parent == Some(process) {
            found.push((pid, state));
        }
    }
    found
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A Python interpreter that user `nobody` can run: one in a system
/// directory, not one under root's home.
fn system_python() -> Option<&'static str> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|path| std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

/// Runs Python as user `nobody` (uid and gid 65534, through `setpriv`) to
/// connect to a Unix socket; returns the exit status and standard error.
fn connect_as_nobody(python: &str, path: &Path) -> (bool, String) {
    let script = "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.connect(sys.argv[1])\n";
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", script])
        .arg(path)
        .output()
        .expect("setpriv runs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Counts the `job.external.log` events of one job: output lines sent as
/// events, and the sum of the `dropped` counts.
#[derive(Default)]
struct LogEventCount {
    output: AtomicU64,
    dropped: AtomicU64,
    dropped_events: AtomicU64,
}

fn count_log_events(server: &TestServer) -> Arc<LogEventCount> {
    let count = Arc::new(LogEventCount::default());
    let counter = count.clone();
    server.core().events.on("job.external.log", move |event| {
        let stream = event.data["stream"].as_str().unwrap_or_default();
        if stream == "stdout" || stream == "stderr" {
            counter.output.fetch_add(1, Ordering::Relaxed);
        } else if let Some(dropped) = event.data["data"]["dropped"].as_u64() {
            counter.dropped.fetch_add(dropped, Ordering::Relaxed);
            counter.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
        async { Ok(()) }
    });
    count
}

/// Counts the lines of a file without reading it into memory.
fn count_lines(path: &Path) -> u64 {
    let Ok(mut file) = std::fs::File::open(path) else { return 0 };
    let mut buffer = vec![0u8; 1 << 16];
    let mut lines = 0;
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            return lines;
        }
        lines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_job_id_is_isolated() {
    let server = start(vec![("victim", waiting_job()), ("spoof", external("python3", "spoof_id.py"))]).await;
    let mut victim_events = server.core().events.subscribe("job.*");
    let (victim, release) = start_waiting(&server, "victim").await;

    let spoofer = server.core().jobs.enqueue("spoof", json!({"target": victim}), once()).await.unwrap();
    let job = server.wait_finished(&spoofer).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"spoofed": true})));

    // The victim is untouched: still running, with its own progress only.
    let job = server.core().jobs.get(&victim).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.progress.percent, Some(10.0));
    assert_eq!(job.progress.message.as_deref(), Some("own progress"));
    assert_eq!(job.result, None);
    assert_eq!(job.error, None);
    while let Some(event) = victim_events.try_recv() {
        if event.data["jobId"] == json!(victim) {
            assert_ne!(event.data["percent"], json!(99), "spoofed progress reached the victim: {:?}", event.data);
            assert_ne!(event.data["message"], json!("spoofed log"), "spoofed log reached the victim");
            assert_ne!(event.name, "job.completed");
            assert_ne!(event.name, "job.failed");
        }
    }
    let logs = server.core().jobs.logs().read(&victim, None);
    assert!(logs.iter().all(|entry| !entry.message.contains("spoofed")), "{logs:?}");

    let job = release_and_expect_completion(&server, &victim, &release).await;
    assert_eq!(job.progress.percent, Some(10.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_cannot_connect() {
    let server = start(vec![("victim", waiting_job())]).await;
    let (id, release) = start_waiting(&server, "victim").await;
    let dir = socket_dir(&server);
    let job_sock = job_socket(&server, &id);
    let control_sock = dir.join("control.sock");

    assert_eq!(mode(&dir), 0o700, "socket directory mode");
    assert_eq!(mode(&job_sock), 0o600, "job socket mode");
    assert_eq!(mode(&control_sock), 0o600, "control socket mode");

    let setpriv = std::process::Command::new("setpriv").arg("--version").output().is_ok_and(|out| out.status.success());
    let python = system_python();
    let Some(python) = python.filter(|_| setpriv && nix::unistd::geteuid().is_root()) else {
        eprintln!("not root, or no setpriv or system python3: only the modes are checked");
        release_and_expect_completion(&server, &id, &release).await;
        return;
    };

    // Only burro's own modes protect the sockets: the temporary parent
    // directory is opened up for everyone.
    let parent = server.socket_dir.path();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Control case: nobody can connect to a socket that allows it, so a
    // refusal below comes from the modes and not from setpriv.
    let open_sock = parent.join("open.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&open_sock).unwrap();
    std::fs::set_permissions(&open_sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, stderr) = connect_as_nobody(python, &open_sock);
    assert!(ok, "nobody could not connect to an open socket: {stderr}");

    // The 0700 directory stops nobody.
    for path in [&job_sock, &control_sock] {
        let (ok, stderr) = connect_as_nobody(python, path);
        assert!(!ok, "nobody connected to {}", path.display());
        assert!(stderr.contains("Permission denied"), "{stderr}");
    }

    // With the directory opened up, the 0600 socket files stop nobody too.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let results: Vec<(bool, String)> = [&job_sock, &control_sock].iter().map(|path| connect_as_nobody(python, path)).collect();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (ok, stderr) in results {
        assert!(!ok, "nobody connected through a 0600 socket");
        assert!(stderr.contains("Permission denied"), "{stderr}");
    }

    release_and_expect_completion(&server, &id, &release).await;
}

/// Sends one control frame line and returns the first line of the reply,
/// or an empty string when the server closes the connection first.
async fn control_exchange(path: &Path, frame: &[u8]) -> String {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(frame).await.unwrap();
    let mut reader = BufReader::new(read);
    let mut reply = String::new();
    within(Duration::from_secs(10), reader.read_line(&mut reply)).await.unwrap();
    // After a rejection nothing else may follow; a forged EXIT written now
    // must change nothing.
    let _ = write.write_all(b"EXIT 1 {\"code\":0,\"signal\":null,\"reason\":null,\"spawnError\":null,\"elapsedMs\":1}\n").await;
    let mut rest = String::new();
    let _ = within(Duration::from_secs(10), reader.read_line(&mut rest)).await;
    assert!(rest.is_empty(), "the server kept talking after {reply:?}: {rest:?}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_shim_hello_is_rejected() {
    let server = start(vec![("victim", waiting_job())]).await;
    let (id, release) = start_waiting(&server, "victim").await;
    let control_sock = socket_dir(&server).join("control.sock");
    let pid = server.core().jobs.get(&id).await.unwrap().unwrap().pid.unwrap();

    let hello = |job_id: &str, token: &str, attempt: u32| {
        let body = json!({
            "version": 1,
            "jobId": job_id,
            "token": token,
            "attempt": attempt,
            "shimPid": std::process::id(),
            "childPid": std::process::id(),
            "address": "/nonexistent",
        });
        format!("HELLO {body}\n").into_bytes()
    };
    let forged = [
        // The right job and attempt with a made-up token.
        hello(&id, &"0".repeat(48), 1),
        // An empty token.
        hello(&id, "", 1),
        // A job that does not exist.
        hello("00000000-0000-0000-0000-000000000000", &"0".repeat(48), 1),
        // Another attempt number.
        hello(&id, &"f".repeat(48), 2),
    ];
    for frame in &forged {
        let reply = control_exchange(&control_sock, frame).await;
        assert!(reply.starts_with("REJECT"), "expected REJECT for {}, got {reply:?}", String::from_utf8_lossy(frame));
    }
    // Frames other than HELLO first, and garbage, get no WELCOME either.
    for frame in [&b"MSG 1 1 {\"type\":\"completed\"}\n"[..], b"\xff\xfe garbage\n", b"WELCOME {}\n"] {
        let reply = control_exchange(&control_sock, frame).await;
        assert!(!reply.starts_with("WELCOME"), "got {reply:?}");
    }

    // The real job is unaffected: same pid, same progress, still running.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = server.core().jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.pid, Some(pid));
    assert_eq!(job.progress.percent, Some(10.0));
    assert!(process_exists(pid as i32));
    release_and_expect_completion(&server, &id, &release).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_capped() {
    let server = start(vec![
        ("victim", waiting_job()),
        ("true", ExternalJobConfig { command: "true".into(), ..Default::default() }),
    ])
    .await;
    let (id, release) = start_waiting(&server, "victim").await;
    let path = job_socket(&server, &id);

    let streams = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|_| std::os::unix::net::UnixStream::connect(&path))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let streams: Vec<std::os::unix::net::UnixStream> = streams.into_iter().filter_map(Result::ok).collect();
    let refused = 1000 - streams.len();
    for stream in &streams {
        stream.set_nonblocking(true).unwrap();
    }

    // The shim closes what is over its limit of 64 open connections; the
    // job's own connection counts too.
    let (open, closed) = within(Duration::from_secs(30), async {
        loop {
            let mut open = 0;
            let mut closed = 0;
            for mut stream in &streams {
                let mut byte = [0u8; 1];
                match stream.read(&mut byte) {
                    Ok(0) => closed += 1,
                    Ok(_) => panic!("the shim wrote to a job connection"),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                    Err(_) => closed += 1,
                }
            }
            if open <= 64 && closed + refused >= 1000 - 64 {
                return (open, closed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    eprintln!("1000 connections: {open} open, {closed} closed by the shim, {refused} refused");
    assert!(open <= 64, "{open} connections stayed open");
    assert!(closed + refused >= 1000 - 64, "{closed} closed, {refused} refused");

    // The server stays responsive while the connections are held.
    let started = Instant::now();
    let client = reqwest::Client::new();
    let health = within(Duration::from_secs(5), client.get(format!("{}/health", server.url())).send()).await.unwrap();
    assert!(health.status().is_success());
    let fetched: Value = within(Duration::from_secs(5), async {
        client.get(format!("{}/api/jobs/{id}", server.url())).send().await.unwrap().json().await.unwrap()
    })
    .await;
    assert_eq!(fetched["status"], json!("running"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let other = server.core().jobs.enqueue("true", json!({}), once()).await.unwrap();
    assert_eq!(server.wait_finished(&other).await.status, JobStatus::Completed);

    release_and_expect_completion(&server, &id, &release).await;
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_flood_memory_stays_bounded() {
    const BYTES: u64 = 100_000_000;
    const WIDTH: u64 = 999;
    let server = start(vec![("flood", external("bash", "stdout_flood.sh"))]).await;
    let events = count_log_events(&server);
    let started = Instant::now();
    let id = server.core().jobs.enqueue("flood", json!({"bytes": BYTES, "width": WIDTH}), once()).await.unwrap();

    let me = std::process::id().to_string();
    let mut max_server = rss_kib(&me).unwrap();
    let mut max_shim = 0;
    let mut shim: Option<i64> = None;
    let job = within(Duration::from_secs(300), async {
        loop {
            let job = server.core().jobs.get(&id).await.unwrap().unwrap();
            if job.status.is_finished() {
                return job;
            }
            if shim.is_none() {
                shim = job.pid.and_then(parent_pid).filter(|&parent| parent != 1);
            }
            max_server = max_server.max(rss_kib(&me).unwrap());
            if let Some(kib) = shim.and_then(|pid| rss_kib(&pid.to_string())) {
                max_shim = max_shim.max(kib);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!("100 MB flood: {elapsed:?}, max RSS: test process {max_server} KiB, shim {max_shim} KiB");
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert!(shim.is_some(), "the shim was never seen");
    assert!(max_shim > 0, "the shim's memory was never sampled");
    assert!(max_server < 200 * 1024, "test process RSS reached {max_server} KiB");
    assert!(max_shim < 20 * 1024, "shim RSS reached {max_shim} KiB");

    // Every line reached the log: the file passed the 64 MiB cap once, so
    // it was rotated, and the two files together hold all the lines.
    let logs = server.core().jobs.logs();
    let lines = BYTES.div_ceil(WIDTH);
    let current = logs.path(&id);
    let rotated = logs.rotated_path(&id);
    assert!(rotated.exists(), "the log was not rotated");
    assert!(std::fs::metadata(&current).unwrap().len() <= logs.max_bytes());
    assert!(std::fs::metadata(&rotated).unwrap().len() <= logs.max_bytes());
    assert_eq!(count_lines(&rotated) + count_lines(&current), lines);
    let tail = logs.read(&id, Some(2));
    assert_eq!(tail.last().unwrap().message.len() as u64, BYTES - (lines - 1) * WIDTH);

    // Events were rate-limited, and the dropped counts add up.
    let output = events.output.load(Ordering::Relaxed);
    let dropped = events.dropped.load(Ordering::Relaxed);
    assert_eq!(output + dropped, lines, "output events {output}, dropped {dropped}");
    assert!(output <= 1000 * (elapsed.as_secs() + 2), "{output} output events in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_events_are_rate_limited() {
    let server = start(vec![("flood", external("bash", "stdout_flood.sh"))]).await;
    let events = count_log_events(&server);
    let started = Instant::now();
    // 20,000 lines of 9 bytes.
    let id = server.core().jobs.enqueue("flood", json!({"bytes": 180_000, "width": 9}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    let elapsed = started.elapsed();
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);

    let output = events.output.load(Ordering::Relaxed);
    let dropped = events.dropped.load(Ordering::Relaxed);
    let reports = events.dropped_events.load(Ordering::Relaxed);
    eprintln!("20,000 lines in {elapsed:?}: {output} events, {dropped} dropped in {reports} reports");
    assert!(dropped > 0, "nothing was dropped");
    assert_eq!(output + dropped, 20_000);
    assert!(output <= 1000 * (elapsed.as_secs() + 2), "{output} events in {elapsed:?}");
    assert!(reports <= elapsed.as_secs() + 2, "{reports} drop reports in {elapsed:?}");

    // The log file has every line, sent as an event or not.
    let entries = server.core().jobs.logs().read(&id, None);
    let stdout: Vec<_> = entries.iter().filter(|entry| entry.stream == "stdout").collect();
    assert_eq!(stdout.len(), 20_000);
    assert!(stdout.iter().all(|entry| entry.message == "xxxxxxxxx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_stdout_line_is_split() {
    let server = start(vec![("long", external("bash", "long_line.sh"))]).await;
    let max_line = burro::config::Config::default().external.max_log_line;
    let id = server.core().jobs.enqueue("long", json!({"bytes": 10_000_000, "target": "stdout"}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, None);

    let entries = server.core().jobs.logs().read(&id, None);
    let pieces: Vec<_> = entries.iter().filter(|entry| entry.stream == "stdout").collect();
    assert_eq!(pieces.len(), 10_000_000usize.div_ceil(max_line));
    assert!(pieces.iter().all(|entry| entry.message.len() <= max_line));
    assert!(pieces.iter().all(|entry| entry.message.bytes().all(|b| b == b'y')));
    assert_eq!(pieces.iter().map(|entry| entry.message.len()).sum::<usize>(), 10_000_000);
}

async fn oversize_server() -> TestServer {
    start_with(
        |config| {
            config.external.max_message_bytes = 4096;
            config.external_jobs.insert("long".into(), external("bash", "long_line.sh"));
            config.external_jobs.insert("big".into(), external("python3", "oversize.py"));
        },
        |_| {},
    )
    .await
}

fn assert_oversize_failure(job: &JobView) {
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.as_deref().unwrap_or_default();
    assert!(error.starts_with("message over the size limit ("), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pipe_message_fails_job() {
    let server = oversize_server().await;
    let id = server.core().jobs.enqueue("long", json!({"bytes": 10_000_000, "target": "pipe"}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_oversize_failure(&job);
    let entries = server.core().jobs.logs().read(&id, None);
    assert!(entries.iter().any(|entry| entry.level == "error" && entry.message.contains("size limit")), "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_socket_message_closes_connection() {
    let server = oversize_server().await;
    let failing = server.core().jobs.enqueue("big", json!({"bytes": 10_000_000, "complete": false}), once()).await.unwrap();
    let completing = server.core().jobs.enqueue("big", json!({"bytes": 10_000_000}), once()).await.unwrap();
    assert_oversize_failure(&server.wait_finished(&failing).await);
    let job = server.wait_finished(&completing).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"afterOversize": true})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_oversize_keep_flowing() {
    // About 1.5 MB of log messages after the oversize line: more than the
    // 512 KiB a shim keeps unacknowledged while the server is connected.
    let server = oversize_server().await;
    let after = 20_000;
    let id = server.core().jobs.enqueue("big", json!({"bytes": 10_000, "after": after}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"afterOversize": true})));

    let entries = server.core().jobs.logs().read(&id, None);
    let numbers: Vec<&str> = entries.iter().filter_map(|entry| entry.message.strip_prefix("after ")).collect();
    assert_eq!(numbers.len(), after, "log messages after the oversize line");
    assert_eq!(numbers.first(), Some(&"1"));
    assert_eq!(numbers.last(), Some(&"20000"));
    assert!(entries.iter().any(|entry| entry.level == "error" && entry.message.contains("size limit")), "no oversize entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_decoded_lossily() {
    let server = start(vec![("bad", external("bash", "bad_utf8.sh"))]).await;
    let id = server.core().jobs.enqueue("bad", json!({}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"survived": true})));

    let entries = server.core().jobs.logs().read(&id, None);
    let message = |stream: &str| {
        entries
            .iter()
            .find(|entry| entry.stream == stream)
            .map(|entry| entry.message.clone())
            .unwrap_or_else(|| panic!("no {stream} entry in {entries:?}"))
    };
    assert_eq!(message("stdout"), "\u{FFFD}\u{FFFD} bad \u{FFFD}( stdout");
    assert_eq!(message("stderr"), "stderr \u{FFFD}\u{FFFD}");
    // Message lines that are not valid UTF-8 JSON are rejected, not logged.
    assert!(entries.iter().all(|entry| entry.stream != "log" || !entry.message.contains("raw")), "{entries:?}");

    // The server still works.
    let again = server.core().jobs.enqueue("bad", json!({}), once()).await.unwrap();
    assert_eq!(server.wait_finished(&again).await.status, JobStatus::Completed);
}

/// Number of short jobs in the leak test. 5,000 jobs of `true` with
/// concurrency 20 took about 41 s in a debug build on two cores.
/// `BURRO_LEAK_JOBS` overrides the number.
const LEAK_JOBS: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_jobs_leak_nothing() {
    let jobs: usize = std::env::var("BURRO_LEAK_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(LEAK_JOBS);
    let server = start_with(
        |config| {
            config.jobs.concurrency = 20;
            config.external_jobs.insert("true".into(), ExternalJobConfig { command: "true".into(), ..Default::default() });
        },
        |_| {},
    )
    .await;
    let completed = || async {
        let query = ListQuery {
            status: Some(JobStatus::Completed),
            limit: 1,
            ..Default::default()
        };
        server.core().jobs.list(query).await.unwrap().total
    };

    // Warm up: the first job opens whatever the server keeps open for good.
    let first = server.core().jobs.enqueue("true", json!({}), once()).await.unwrap();
    assert_eq!(server.wait_finished(&first).await.status, JobStatus::Completed);
    wait_for_no_children(&server).await;
    let fds_before = open_fds();

    let started = Instant::now();
    for _ in 0..jobs {
        server.core().jobs.enqueue("true", json!({}), once()).await.unwrap();
    }
    within(Duration::from_secs(600), async {
        while completed().await < jobs as u64 + 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    eprintln!("{jobs} jobs completed in {:?}", started.elapsed());
    let failed = ListQuery {
        status: Some(JobStatus::Failed),
        limit: 5,
        ..Default::default()
    };
    let failed = server.core().jobs.list(failed).await.unwrap();
    assert_eq!(failed.total, 0, "failed jobs: {:?}", failed.jobs.iter().map(|job| &job.error).collect::<Vec<_>>());

    wait_for_no_children(&server).await;
    let fds_after = open_fds();
    eprintln!("open descriptors: {fds_before} before, {fds_after} after");
    assert!(fds_after <= fds_before + 5, "open descriptors grew from {fds_before} to {fds_after}");
}

/// Waits until every shim has exited and been reaped, zombies included:
/// no child of this process is left but the shim launcher, and the
/// launcher, which forks the shims, has no child left either but its one
/// spare, which waits for the next job.
async fn wait_for_no_children(server: &TestServer) {
    let left = || {
        let launcher = server.core().jobs.shim_launcher_pid().map(i64::from);
        let mut left: Vec<(i64, char)> = children().into_iter().filter(|(pid, _)| Some(*pid) != launcher).collect();
        if let Some(launcher) = launcher {
            let mut forked = children_of(launcher);
            let spare = forked.iter().position(|(pid, _)| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|line| line.split(|&b| b == 0).nth(1) == Some(b"--spare"))
            });
            if let Some(spare) = spare {
                forked.remove(spare);
            }
            left.extend(forked);
        }
        left
    };
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if left().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if result.is_err() {
        let left = left();
        let zombies: Vec<_> = left.iter().filter(|(_, state)| *state == 'Z').collect();
        panic!("children left after 30 s: {left:?}; zombies: {zombies:?}");
    }
}
