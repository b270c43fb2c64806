//! Reads of a job while an attempt's end is written, and claims on SQLite
//! while enqueues and job ends race for the slots.

mod common;

use burro::config::RetryBackoff;
use burro::store::JobStatus;
use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Many enqueues from many tasks while slots free up, with jobs that end
/// and claim the next: every job runs exactly once and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_every_job_runs_once() {
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let names = ["q0", "q1", "q2"];
    let server = start_with(
        |config| {
            config.jobs.concurrency = 5;
            config.jobs.poll_interval = Duration::from_secs(30);
        },
        |app| {
            for name in names {
                let runs = runs.clone();
                app.core()
                    .jobs
                    .register(name, move |ctx| {
                        let runs = runs.clone();
                        async move {
                            *runs.lock().unwrap().entry(ctx.job_id.clone()).or_default() += 1;
                            if ctx.data["i"].as_u64().unwrap() % 7 == 0 {
                                tokio::time::sleep(Duration::from_millis(3)).await;
                            }
                            Ok(Value::Null)
                        }
                    })
                    .unwrap();
            }
        },
    )
    .await;

    let total = 3000u64;
    let mut tasks = Vec::new();
    for t in 0..12u64 {
        let jobs = server.core().jobs.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (t..total).step_by(12) {
                let options = if i % 11 == 0 {
                    burro::jobs::EnqueueOptions { run_at_ms: Some(burro::clock::now_ms() + 50), ..Default::default() }
                } else {
                    Default::default()
                };
                let job = jobs.enqueue(names[(i % 3) as usize], json!({ "i": i }), options).await.unwrap();
                ids.push(job);
                if i % 13 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            ids
        }));
    }

    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), total as usize);

    within(Duration::from_secs(120), async {
        for id in &ids {
            let job = server.wait_finished(id).await;
            assert_eq!(job.status, JobStatus::Completed, "{id}");
            assert_eq!(job.attempts, 1, "{id}");
        }
    })
    .await;

    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), total as usize);
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
}

/// One slot, so the end of attempt 1 claims attempt 2 of the same job in
/// its own write. Attempt 2 reports nothing for 40 ms; a read meanwhile
/// must not show attempt 1's progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_write_retry_shows_no_old_progress() {
    same_write_retry(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_write_retry_shows_no_old_progress_postgres() {
    let Some(url) = schema_url("same_write_retry_shows_no_old_progress_postgres").await else { return };
    same_write_retry(Some(url)).await;
}

/// Runs 150 jobs that fail once and are retried in the write that ends
/// their first attempt, polling each, on SQLite or on `database_url`.
async fn same_write_retry(database_url: Option<String>) {
    let rounds = 150;
    let server = start_with(
        |config| {
            config.jobs.concurrency = 1;
            config.jobs.retry_backoff = RetryBackoff::Disabled;
            config.jobs.max_attempts = 2;
            config.server.database_url = database_url;
        },
        |app| {
            app.core()
                .jobs
                .register("flaky", |ctx| async move {
                    if ctx.attempt == 1 {
                        ctx.progress(90.0, Some("attempt 1")).await;
                        anyhow::bail!("first attempt fails");
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    Ok(Value::Null)
                })
                .unwrap();
        },
    )
    .await;

    let mut seen = Vec::new();
    let mut reads = 0u64;
    for i in 0..rounds {
        let id = server.core().jobs.enqueue("flaky", json!({ "i": i }), Default::default()).await.unwrap();
        let jobs = server.core().jobs.clone();
        let poll_id = id.clone();
        let poller = tokio::spawn(async move {
            let mut found = Vec::new();
            let mut polls = 0u64;
            loop {
                let view = jobs.get(&poll_id).await.unwrap().unwrap();
                polls += 1;
                if view.status.is_finished() {
                    return (found, polls);
                }
                if view.attempts == 2 && view.status == JobStatus::Running && view.progress.message.is_some() {
                    found.push(format!("{poll_id} attempt 2 shows {:?} {:?}", view.progress.percent, view.progress.message));
                }
            }
        });
        let (found, polls) = poller.await.unwrap();
        reads += polls;
        seen.extend(found);
        let job = server.wait_finished(&id).await;
        assert_eq!(job.attempts, 2);
    }
    assert!(reads > rounds as u64, "the poller read each job at least once");
    assert!(seen.is_empty(), "{} of {reads} reads showed the failed attempt's progress: {:?}", seen.len(), &seen[..seen.len().min(10)]);
}
