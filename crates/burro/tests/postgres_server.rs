//! The server on PostgreSQL: external jobs run and finish with the same
//! results as on SQLite. Needs `BURRO_TEST_POSTGRES_URL` (set by the test
//! script); each test uses a schema of its own.

mod common;

use burro::jobs::EnqueueOptions;
use burro::store::JobStatus;
use common::*;
use serde_json::json;

/// Returns a database URL whose search path is a fresh schema.
async fn schema_url(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("BURRO_TEST_POSTGRES_URL") else {
        assert!(std::env::var("CI").is_err(), "{test}: BURRO_TEST_POSTGRES_URL is not set under CI; run ./scripts/test");
        eprintln!("skipped {test}: BURRO_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    admin.close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{separator}options=-c%20search_path%3D{schema}"))
}

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
