//! The shim launcher: shims forked by `burro-shim --launcher`, the server
//! watching them through pidfds, and the fallbacks when the launcher dies
//! or is switched off.

mod common;

use burro::jobs::{EnqueueOptions, JobView};
use burro::store::JobStatus;
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn once() -> EnqueueOptions {
    EnqueueOptions {
        max_attempts: Some(1),
        ..Default::default()
    }
}

/// Returns the parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|err| panic!("reading /proc/{pid}/stat failed: {err}"));
    let after = stat.rsplit_once(')').expect("stat has a command name").1;
    after.split_whitespace().nth(1).expect("stat has a parent pid").parse().expect("the parent pid is a number")
}

/// Returns the command line of `pid` as `ps` shows it: the program's file
/// name and its arguments, separated by spaces.
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_else(|err| panic!("reading /proc/{pid}/cmdline failed: {err}"));
    let words: Vec<String> = raw
        .split(|byte| *byte == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    let program = words.first().map(|path| path.rsplit('/').next().unwrap_or(path).to_string()).unwrap_or_default();
    std::iter::once(program).chain(words.into_iter().skip(1)).collect::<Vec<_>>().join(" ")
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill only sends a signal to the process the test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill({pid}, {signal}) failed");
}

/// Asserts that the server terminated a job process whose shim died, and
/// wrote that in the job's log.
async fn assert_orphan_terminated(server: &TestServer, id: &str, pid: u32) {
    wait_exited(pid).await;
    within(Duration::from_secs(10), async {
        loop {
            let entries = server.core().jobs.logs().read(id, None);
            let noted = |text: &str| entries.iter().any(|entry| entry.message.contains(text));
            if noted(&format!("terminating the job process {pid}")) && noted(&format!("sent SIGTERM to the job process {pid}")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Kills the shim of a job whose process is `worker`, checking first that
/// the shim is a child of the launcher, and returns the job once it ended.
async fn kill_shim(server: &TestServer, id: &str, worker: u32) -> JobView {
    let shim = parent_of(worker);
    assert_eq!(Some(parent_of(shim)), server.core().jobs.shim_launcher_pid(), "the shim is a child of the launcher");
    kill(shim, libc::SIGKILL);
    let job = server.wait_finished(id).await;
    assert_eq!(job.status, JobStatus::Failed);
    job
}

/// Returns the pids whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)) == Some(pid.to_string().as_str())))
        .collect()
}

/// Enqueues a `wait` job that runs until `release` exists.
async fn enqueue_wait(server: &TestServer, release: &Path) -> String {
    server
        .core()
        .jobs
        .enqueue("wait", json!({"releaseFile": release}), once())
        .await
        .unwrap()
}

/// Enqueues a job that runs until `release` exists and returns its id, the
/// pid of its shim and the pid of its process, once that process runs.
async fn running_job(server: &TestServer, release: &Path) -> (String, u32, u32) {
    let id = enqueue_wait(server, release).await;
    let pid = server.wait_pid(&id).await;
    (id, parent_of(pid), pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launcher_shims_outlive_killed_launcher() {
    let server = start(vec![("wait", external("python3", "wait_release.py"))]).await;
    let release = server.dir.path().join("release");

    let (first, first_shim, _) = running_job(&server, &release).await;
    let launcher = server.core().jobs.shim_launcher_pid().expect("a launcher runs after the first job started");
    assert_eq!(parent_of(first_shim), launcher, "the first job's shim is a child of the launcher");
    // ps shows the launcher and the shims it forked with different arguments.
    assert_eq!(command_line(launcher), "burro-shim --launcher");
    assert_eq!(command_line(first_shim), "burro-shim --forked");

    kill(launcher, libc::SIGKILL);
    wait_exited(launcher).await;

    // The next job starts a new launcher.
    let (second, second_shim, _) = running_job(&server, &release).await;
    let relaunched = server.core().jobs.shim_launcher_pid().expect("a new launcher");
    assert_ne!(relaunched, launcher, "a new launcher replaced the killed one");
    assert_eq!(parent_of(second_shim), relaunched, "the second job's shim is a child of the new launcher");

    // The first job's shim lost its parent but still runs its job to the end.
    std::fs::write(&release, b"").unwrap();
    for id in [first, second] {
        let job = server.wait_finished(&id).await;
        assert_eq!(job.status, JobStatus::Completed, "job {id}: {:?}", job.error);
        assert_eq!(job.result, Some(json!({"released": true})));
        let shim_log = server.dir.path().join("shims").join(format!("{id}.log"));
        assert!(!shim_log.exists(), "a shim with nothing to report leaves no log file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shim_fails_job_as_lost() {
    let server = start(vec![("wait", external("python3", "wait_release.py"))]).await;
    let release = server.dir.path().join("release");
    let (id, _, worker) = running_job(&server, &release).await;

    let job = kill_shim(&server, &id, worker).await;
    let error = job.error.unwrap_or_default();
    assert!(error.starts_with("job lost: its shim exited"), "{error}");
    assert_eq!(server.core().jobs.supervised_count(), 0, "the run was released");
    assert_orphan_terminated(&server, &id, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_job_of_a_killed_shim_is_terminated() {
    // The job sends `started` and then sleeps without writing, so a broken
    // connection would never stop it.
    let server = start(vec![("hang", external("bash", "hang.sh"))]).await;
    let id = server.core().jobs.enqueue("hang", json!({}), once()).await.unwrap();
    let worker = server.wait_pid(&id).await;

    kill_shim(&server, &id, worker).await;
    assert_orphan_terminated(&server, &id, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_ignoring_sigterm_is_killed() {
    let server = start(vec![("stubborn", external("bash", "group_ignores_term.sh"))]).await;
    let id = server.core().jobs.enqueue("stubborn", json!({}), once()).await.unwrap();
    let worker = server.wait_pid(&id).await;
    // The worker's other child is the heartbeat loop of the shell library,
    // which does not ignore SIGTERM.
    let child = within(Duration::from_secs(10), async {
        loop {
            let is_sleep = |child: &u32| std::fs::read(format!("/proc/{child}/cmdline")).is_ok_and(|line| line == b"sleep\x003600\x00");
            if let Some(child) = children_of(worker).into_iter().find(is_sleep) {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    kill_shim(&server, &id, worker).await;
    assert_orphan_terminated(&server, &id, worker).await;
    // The child outlives SIGTERM and ends only with the SIGKILL that
    // follows the kill grace.
    wait_exited(child).await;
    let entries = server.core().jobs.logs().read(&id, None);
    assert!(entries.iter().any(|entry| entry.message.contains("got SIGKILL")), "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launcher_off_server_spawns_shims() {
    let server = start_with(
        |config| {
            config.server.shim_launcher = false;
            config.external_jobs.insert("wait".into(), external("python3", "wait_release.py"));
        },
        |_| {},
    )
    .await;
    let release = server.dir.path().join("release");
    let (id, shim, _) = running_job(&server, &release).await;
    assert_eq!(parent_of(shim), std::process::id(), "the shim is a child of the server");
    assert_eq!(server.core().jobs.shim_launcher_pid(), None);

    std::fs::write(&release, b"").unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    let shim_log = server.dir.path().join("shims").join(format!("{id}.log"));
    within(Duration::from_secs(10), async {
        while shim_log.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_shim_path_fails_job() {
    let server = start_with(
        |config| {
            config.server.shim_path = Some("/nonexistent/burro-shim".into());
            config.external_jobs.insert("wait".into(), external("python3", "wait_release.py"));
        },
        |_| {},
    )
    .await;
    let release = server.dir.path().join("release");
    let id = enqueue_wait(&server, &release).await;
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap_or_default();
    assert!(error.contains("/nonexistent/burro-shim"), "the error names the shim path: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_launcher_falls_back_to_exec() {
    let server = start(vec![("wait", external("python3", "wait_release.py"))]).await;
    let release = server.dir.path().join("release");
    std::fs::write(&release, b"").unwrap();
    let (first, _, _) = running_job(&server, &release).await;
    server.wait_finished(&first).await;
    let launcher = server.core().jobs.shim_launcher_pid().expect("a launcher runs");

    // A stopped launcher takes the request and never replies. After the
    // reply timeout the server takes the spec back and starts the shim.
    kill(launcher, libc::SIGSTOP);
    let id = enqueue_wait(&server, &release).await;
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    // The claimed spec goes once the end is written, just after the job
    // reads as completed.
    let exits = server.dir.path().join("exits");
    let spec_files = || -> Vec<_> { std::fs::read_dir(&exits).unwrap().flatten().map(|entry| entry.file_name()).collect() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spec_files().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spec_files().is_empty(), "no spec file is left behind: {:?}", spec_files());
    assert_eq!(server.core().jobs.shim_launcher_pid(), None, "the stuck launcher was dropped");
    // The server killed the stopped launcher; it is gone or a zombie.
    wait_exited(launcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_spare_cannot_start_ended_attempt() {
    // A stopped spare still takes a request, because its pipe accepts the
    // write. Its attempt is lost when no shim connects. When the spare goes
    // on afterwards, it must find no spec to start the job with.
    let mut wait = external("python3", "wait_release.py");
    wait.heartbeat_timeout = Some(Duration::from_millis(500));
    let server = start(vec![("wait", wait)]).await;
    let release = server.dir.path().join("release");
    std::fs::write(&release, b"").unwrap();
    let (first, _, _) = running_job(&server, &release).await;
    server.wait_finished(&first).await;
    let launcher = server.core().jobs.shim_launcher_pid().expect("a launcher runs");
    let is_spare = |pid: &u32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|line| line.split(|&b| b == 0).nth(1) == Some(b"--spare"));
    let spare = within(Duration::from_secs(10), async {
        loop {
            if let Some(spare) = children_of(launcher).into_iter().find(is_spare) {
                return spare;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    kill(spare, libc::SIGSTOP);

    let id = enqueue_wait(&server, &release).await;
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error.as_deref().unwrap_or_default().starts_with("job lost"), "{:?}", job.error);
    kill(spare, libc::SIGCONT);
    wait_exited(spare).await;
    let shim_log = std::fs::read_to_string(server.dir.path().join("shims").join(format!("{id}.log"))).unwrap_or_default();
    assert!(shim_log.starts_with("burro-shim: claiming the job spec file"), "the late shim found no spec: {shim_log}");
    let left: Vec<_> = std::fs::read_dir(server.dir.path().join("exits"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&id))
        .collect();
    assert!(left.is_empty(), "no file of the ended attempt is left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_dead_shim_fails_job_as_lost() {
    // A stand-in launcher starts the real shim from the request and never
    // replies, like a launcher that forked and then hung. After the reply
    // timeout the server finds the spec claimed, so it has no pidfd for
    // this shim and learns of its death only from the lost connection.
    let dir = tempfile::tempdir().unwrap();
    let real_shim = burro::supervisor::default_shim_path();
    let stand_in = dir.path().join("burro-shim");
    let script = r#"#!/usr/bin/env python3
import json, os, socket, subprocess, sys
REAL = "REAL_SHIM"
if sys.argv[1:] == ["--launcher"]:
    requests = socket.socket(fileno=0)
    while True:
        packet = requests.recv(65536)
        if not packet:
            sys.exit(0)
        spec = json.loads(packet)["specFile"]
        subprocess.Popen([REAL, "--spec-file", spec], start_new_session=True, stdin=subprocess.DEVNULL)
os.execv(REAL, [REAL] + sys.argv[1:])
"#;
    std::fs::write(&stand_in, script.replace("REAL_SHIM", &real_shim.display().to_string())).unwrap();
    std::fs::set_permissions(&stand_in, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let server = start_with(
        |config| {
            config.server.shim_path = Some(stand_in.clone());
            config.external.reconnect_window = Some(Duration::from_secs(1));
            config.external_jobs.insert("wait".into(), external("python3", "wait_release.py"));
        },
        |_| {},
    )
    .await;
    let release = server.dir.path().join("release");
    let (id, shim, worker) = running_job(&server, &release).await;
    // The reply timeout passes, and the server gives up on the launcher.
    within(Duration::from_secs(15), async {
        while server.core().jobs.shim_launcher_pid().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    kill(shim, libc::SIGKILL);
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap_or_default();
    assert!(error.starts_with("job lost: its shim disconnected "), "{error}");
    assert!(error.ends_with(" ms ago and has not reconnected"), "{error}");
    assert_orphan_terminated(&server, &id, worker).await;
}
