//! The SQLite store's writer: concurrent writes share transactions, a
//! failed write fails alone, URL options reach it, and it refuses writes
//! once closed.

use burro::store::{JobStatus, ListQuery, NewJob, SqliteStore, Store};
use serde_json::json;
use std::sync::Arc;

fn new_job(id: &str) -> NewJob {
    NewJob {
        id: id.to_string(),
        name: "work".to_string(),
        data: json!({"id": id}),
        max_attempts: 1,
        created_at: 1000,
        run_at: 1000,
        status: JobStatus::Pending,
        external: false,
        timeout_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = Arc::new(SqliteStore::open(&url).await.unwrap());
    store.job_insert(&new_job("existing")).await.unwrap();

    // The duplicate fails inside a group transaction that the other inserts
    // share, and it must not take them down with it.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        let id = if i == 32 { "existing".to_string() } else { format!("job-{i}") };
        tasks.push(tokio::spawn(async move { (i, store.job_insert(&new_job(&id)).await) }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i == 32 {
            assert!(result.is_err(), "inserting a duplicate id succeeded");
        } else {
            assert_eq!(result.unwrap().id, format!("job-{i}"));
        }
    }
    store.close().await;
    drop(store);

    let reopened = SqliteStore::open(&url).await.unwrap();
    let page = reopened
        .job_list(&ListQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 64, "63 new jobs and the existing one");
    assert!(page.jobs.iter().all(|job| job.status == JobStatus::Pending));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_after_failed_write_commits() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.job_insert(&new_job("a")).await.unwrap();
    assert!(store.job_insert(&new_job("a")).await.is_err());
    store.job_insert(&new_job("b")).await.unwrap();
    store.close().await;
    drop(store);

    let reopened = SqliteStore::open(&url).await.unwrap();
    assert!(reopened.job_get("a").await.unwrap().is_some());
    assert!(reopened.job_get("b").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_options_and_odd_paths_reach_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    // `%` and `#` are escaped in the writer's URI filename.
    let path = dir.path().join("100% #1.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.job_insert(&new_job("a")).await.unwrap();
    store.close().await;
    drop(store);
    assert!(path.exists(), "the writer wrote another file than {}", path.display());

    let reopened = SqliteStore::open(&format!("sqlite://{}", path.display())).await.unwrap();
    assert!(reopened.job_get("a").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_close_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    // A write sent right after `close` returns must fail with "closed",
    // even while the writer thread is still ending. Several rounds make
    // that gap likely.
    for round in 0..10 {
        let store = SqliteStore::open(&url).await.unwrap();
        store.close().await;
        let error = store.job_insert(&new_job(&format!("late-{round}"))).await.unwrap_err().to_string();
        assert!(error.contains("the SQLite writer is closed"), "unexpected error in round {round}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_escapes_name_one_file() {
    let dir = tempfile::tempdir().unwrap();
    // The driver decodes `%41` to `A`: every connection must use `pA/jobs.db`.
    let url = format!("sqlite://{}/p%41/jobs.db", dir.path().display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.job_insert(&new_job("a")).await.unwrap();
    assert!(store.job_get("a").await.unwrap().is_some(), "the readers see another file than the writer");
    store.close().await;
    assert!(dir.path().join("pA/jobs.db").exists());
    assert!(!dir.path().join("p%41").exists(), "a directory was created under the encoded name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_database_is_shared() {
    let store = SqliteStore::open("sqlite://:memory:").await.unwrap();
    store.job_insert(&new_job("a")).await.unwrap();
    let job = store.job_get("a").await.unwrap();
    assert!(job.is_some(), "the readers do not see the writer's in-memory database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_with_percent_sign() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = burro::config::Config::default();
    config.server.data_dir = dir.path().join("100% #1");
    let url = config.database_url();
    let store = SqliteStore::open(&url).await.unwrap();
    store.job_insert(&new_job("a")).await.unwrap();
    store.close().await;
    assert!(dir.path().join("100% #1/jobs.db").exists(), "URL {url} named another file");
}
