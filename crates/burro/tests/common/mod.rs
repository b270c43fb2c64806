//! Shared harness of the integration tests: a real server on a temporary
//! data directory, a real SQLite file, real shims and real worker scripts.

#![allow(dead_code)]

use burro::config::{Config, ExternalJobConfig, RetryBackoff};
use burro::events::Subscription;
use burro::jobs::JobView;
use burro::{AppServer, RunningServer};
use serde_json::Value;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Upper bound of any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct TestServer {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
    pub socket_dir: tempfile::TempDir,
}

impl TestServer {
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn core(&self) -> &burro::Core {
        self.server.core()
    }

    /// Waits until the job is finished and returns it.
    pub async fn wait_finished(&self, id: &str) -> JobView {
        let mut events = self.core().events.subscribe("job.*");
        within(WAIT, async {
            loop {
                let job = self.core().jobs.get(id).await.unwrap().expect("job exists");
                if job.status.is_finished() {
                    return job;
                }
                drain_until_event(&mut events, Duration::from_millis(200)).await;
            }
        })
        .await
    }

    /// Waits until the job's process has reported its pid and returns it.
    pub async fn wait_pid(&self, id: &str) -> u32 {
        let job = self.wait_for(id, "the job's pid", |job| job.pid.is_some()).await;
        job.pid.expect("a pid") as u32
    }

    /// Waits until `check` holds for the job.
    pub async fn wait_for(&self, id: &str, what: &str, check: impl Fn(&JobView) -> bool) -> JobView {
        let mut events = self.core().events.subscribe("*");
        let result = tokio::time::timeout(WAIT, async {
            loop {
                let job = self.core().jobs.get(id).await.unwrap().expect("job exists");
                if check(&job) {
                    return job;
                }
                drain_until_event(&mut events, Duration::from_millis(100)).await;
            }
        })
        .await;
        result.unwrap_or_else(|_| panic!("timed out waiting for job {id}: {what}"))
    }
}

/// Waits for the next event or `limit`, whichever comes first, and drains
/// whatever else is queued so the subscription never holds up the emitter.
async fn drain_until_event(events: &mut Subscription, limit: Duration) {
    let _ = tokio::time::timeout(limit, events.recv()).await;
    while events.try_recv().is_some() {}
}

/// Runs `future` with a time limit, panicking with a clear message.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}"))
}

/// Path of a worker script under tests/workers.
pub fn worker(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name);
    assert!(path.exists(), "missing worker script {}", path.display());
    path.display().to_string()
}

/// Returns an external job that runs `interpreter worker`.
pub fn external(interpreter: &str, script: &str) -> ExternalJobConfig {
    ExternalJobConfig {
        command: interpreter.into(),
        args: vec![worker(script)],
        ..Default::default()
    }
}

/// Test defaults: short heartbeats and backoff, fast checks.
pub fn test_config(dir: &std::path::Path, socket_dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = dir.to_path_buf();
    config.external.socket_dir = Some(socket_dir.to_path_buf());
    config.external.default_heartbeat_timeout = Duration::from_secs(10);
    config.external.heartbeat_check_interval = Duration::from_millis(100);
    config.external.kill_grace = Duration::from_millis(500);
    config.external.shim_linger = Duration::from_secs(30);
    config.jobs.retry_backoff = RetryBackoff::Exponential {
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    config.jobs.poll_interval = Duration::from_millis(200);
    config
}

/// Starts a server; `setup` may change the configuration and register jobs.
pub async fn start_with(configure: impl FnOnce(&mut Config), register: impl FnOnce(&AppServer)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    // Socket paths must stay under 107 bytes, so use a short directory.
    let socket_dir = tempfile::Builder::new().prefix("bt").tempdir_in("/tmp").unwrap();
    let sockets = socket_dir.path().join("s");
    let mut config = test_config(dir.path(), &sockets);
    configure(&mut config);
    let app = AppServer::from_config(config)
        .await
        .expect("server starts")
        .broadcast_job_events(true);
    register(&app);
    let server = app.start().await.expect("server listens");
    TestServer {
        server,
        dir,
        socket_dir,
    }
}

/// Starts a server with the given external jobs.
pub async fn start(jobs: Vec<(&str, ExternalJobConfig)>) -> TestServer {
    start_with(
        |config| {
            for (name, job) in jobs {
                config.external_jobs.insert(name.to_string(), job);
            }
        },
        |_| {},
    )
    .await
}

/// Waits until `pid` has exited: gone, or a zombie its parent has not
/// reaped yet.
pub async fn wait_exited(pid: u32) {
    within(WAIT, async {
        while !matches!(process_state(pid as i32), None | Some('Z')) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Returns true when a process with `pid` exists (zombies included).
pub fn process_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Returns the state letter of a process from /proc (Z for a zombie).
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Reads a whole SSE response body into (event, data) pairs.
pub fn parse_sse(body: &str) -> Vec<(Option<String>, String, Value)> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut id = None;
        let mut event = String::from("message");
        let mut data = String::new();
        let mut has_data = false;
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                id = Some(value.to_string());
            } else if let Some(value) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                event = value.to_string();
            } else if let Some(value) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            }
        }
        if has_data {
            events.push((id, event, serde_json::from_str(&data).unwrap_or(Value::String(data))));
        }
    }
    events
}

/// Returns a URL of the test PostgreSQL server whose search path is a
/// fresh schema, or `None` with a message naming `test` when
/// `BURRO_TEST_POSTGRES_URL` is unset. Under CI an unset variable fails the
/// test, so PostgreSQL tests never pass there without running.
pub async fn schema_url(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("BURRO_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "{test}: BURRO_TEST_POSTGRES_URL is not set under CI; run ./scripts/test"
        );
        eprintln!("skipped {test}: BURRO_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
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
