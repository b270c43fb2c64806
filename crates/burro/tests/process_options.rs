//! Job process options: a shell only when configured, resource limits, and
//! running the job as another user.

mod common;

use burro::config::ExternalJobConfig;
use burro::jobs::EnqueueOptions;
use burro::store::JobStatus;
use common::*;
use serde_json::json;

fn once() -> EnqueueOptions {
    EnqueueOptions {
        max_attempts: Some(1),
        ..Default::default()
    }
}

fn stdout_lines(server: &TestServer, id: &str) -> Vec<String> {
    server
        .core()
        .jobs
        .logs()
        .read(id, None)
        .into_iter()
        .filter(|entry| entry.stream == "stdout")
        .map(|entry| entry.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_runs_without_shell_by_default() {
    let job = ExternalJobConfig {
        command: "echo".into(),
        args: vec!["$HOME".into(), "a b;c".into()],
        ..Default::default()
    };
    let server = start(vec![("plain", job)]).await;
    let id = server.core().jobs.enqueue("plain", json!({}), once()).await.unwrap();
    let finished = server.wait_finished(&id).await;
    assert_eq!(finished.status, JobStatus::Completed);
    assert_eq!(stdout_lines(&server, &id), vec!["$HOME a b;c".to_string()], "arguments reach the job as given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_command_when_configured() {
    let job = ExternalJobConfig {
        command: "echo $((6 * 7)) $0; exit 5".into(),
        args: vec!["first".into()],
        shell: true,
        ..Default::default()
    };
    let server = start(vec![("shell", job)]).await;
    let id = server.core().jobs.enqueue("shell", json!({}), once()).await.unwrap();
    let finished = server.wait_finished(&id).await;
    assert_eq!(finished.status, JobStatus::Failed);
    assert_eq!(finished.error.as_deref(), Some("process exited with code 5"));
    assert_eq!(stdout_lines(&server, &id), vec!["42 first".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_apply_to_job() {
    let job = ExternalJobConfig {
        command: "ulimit -n; ulimit -t; ulimit -v".into(),
        shell: true,
        limit_open_files: Some(40),
        limit_cpu_seconds: Some(100),
        limit_address_space: Some(2 * 1024 * 1024 * 1024),
        ..Default::default()
    };
    let server = start(vec![("limited", job)]).await;
    let id = server.core().jobs.enqueue("limited", json!({}), once()).await.unwrap();
    let finished = server.wait_finished(&id).await;
    assert_eq!(finished.status, JobStatus::Completed, "{:?}", finished.error);
    // `ulimit -v` reports kibibytes.
    assert_eq!(stdout_lines(&server, &id), vec!["40".to_string(), "100".to_string(), "2097152".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_as_configured_user() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root, as CI and the test script run it");
    let mut identity = ExternalJobConfig {
        command: "id -u; id -g".into(),
        shell: true,
        user: Some("nobody".into()),
        ..Default::default()
    };
    identity.group = Some("nogroup".into());
    let mut python = external("python3", "complete.py");
    python.user = Some("nobody".into());
    let server = start(vec![("identity", identity), ("python", python)]).await;

    let id = server.core().jobs.enqueue("identity", json!({}), once()).await.unwrap();
    let finished = server.wait_finished(&id).await;
    assert_eq!(finished.status, JobStatus::Completed, "{:?}", finished.error);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(stdout_lines(&server, &id), vec![nobody.uid.to_string(), nogroup.gid.to_string()]);

    // The job reaches its socket, which lives in a directory of its own.
    let id = server.core().jobs.enqueue("python", json!({"as": "nobody"}), once()).await.unwrap();
    let finished = server.wait_finished(&id).await;
    assert_eq!(finished.status, JobStatus::Completed, "{:?}", finished.error);
    assert_eq!(finished.result, Some(json!({"echo": {"as": "nobody"}})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_rejected_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::Builder::new().prefix("bt").tempdir_in("/tmp").unwrap();
    let mut config = test_config(dir.path(), &sockets.path().join("s"));
    let mut job = external("python3", "complete.py");
    job.user = Some("no-such-user-here".into());
    config.external_jobs.insert("job".into(), job);
    let error = match burro::AppServer::from_config(config).await {
        Ok(_) => panic!("an unknown user must be rejected"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("user \"no-such-user-here\" not found"), "{error}");
}
