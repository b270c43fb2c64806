//! The server on PostgreSQL: external jobs run and finish with the same
//! results as on SQLite. Needs `BURRO_TEST_POSTGRES_URL` (set by the test
//! script); each test uses a schema of its own.

mod common;

use burro::jobs::EnqueueOptions;
use burro::store::JobStatus;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_jobs_run_on_postgres() {
    let Some(url) = schema_url("external_jobs_run_on_postgres").await else { return };
    let server = start_with(
        |config| {
            config.server.database_url = Some(url);
            config.external_jobs.insert("py".into(), external("python3", "complete.py"));
            config.external_jobs.insert("fail".into(), external("python3", "fail_always.py"));
        },
        |_| {},
    )
    .await;
    let once = EnqueueOptions {
        max_attempts: Some(2),
        ..Default::default()
    };
    let ok = server.core().jobs.enqueue("py", json!({"db": "pg"}), once.clone()).await.unwrap();
    let bad = server.core().jobs.enqueue("fail", json!({}), once).await.unwrap();

    let job = server.wait_finished(&ok).await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(job.result, Some(json!({"echo": {"db": "pg"}})));
    assert_eq!(job.progress.percent, Some(50.0));

    let job = server.wait_finished(&bad).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempts, 2, "retried once");
    assert!(job.error.unwrap().contains("boom attempt"));

    let stats = server.core().jobs.stats().await.unwrap();
    assert_eq!(stats.by_status["completed"], 1);
    assert_eq!(stats.by_status["failed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_jobs_and_events() {
    let Some(url) = schema_url("nodes_share_jobs_and_events").await else { return };
    let configure = |url: String| {
        move |config: &mut burro::Config| {
            config.server.database_url = Some(url);
            // Only a notification can wake the other node this fast.
            config.jobs.poll_interval = std::time::Duration::from_secs(60);
            config.jobs.concurrency = 1;
            config.external_jobs.insert("flood".into(), external("python3", "flood_progress.py"));
        }
    };
    let block = |app: &burro::AppServer| {
        app.core()
            .jobs
            .register("block", |ctx| async move {
                ctx.cancel.cancelled().await;
                Ok(json!(null))
            })
            .unwrap();
    };
    let node_a = start_with(configure(url.clone()), block).await;
    let node_b = start_with(configure(url), block).await;

    // Node A's only slot is taken, so the next job can only run on node B.
    let blocker = node_a.core().jobs.enqueue("block", json!({}), EnqueueOptions::default()).await.unwrap();
    node_a.wait_for(&blocker, "running on node A", |job| job.status == JobStatus::Running).await;

    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{}/api/jobs", node_a.url()))
        .json(&json!({"name": "flood", "data": {"count": 200}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    // An SSE client on node A follows the job running on node B.
    let started = std::time::Instant::now();
    let body = within(WAIT, async {
        client.get(format!("{}/api/jobs/{id}/events", node_a.url())).send().await.unwrap().text().await.unwrap()
    })
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "node B was woken by the enqueue, not by its poll");
    let events = parse_sse(&body);
    let progress = events.iter().filter(|(_, name, _)| name == "progress").count();
    assert!(progress >= 1, "progress from node B reached node A: {body}");
    let last = events.last().unwrap();
    assert_eq!(last.1, "completed", "{body}");
    assert_eq!(last.2["result"], json!({"sent": 200}));

    let job = node_b.core().jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    let blocker_job = node_a.core().jobs.get(&blocker).await.unwrap().unwrap();
    assert_eq!(blocker_job.status, JobStatus::Running, "node A's slot stayed busy");
    node_a.core().jobs.cancel(&blocker).await.unwrap();
}
