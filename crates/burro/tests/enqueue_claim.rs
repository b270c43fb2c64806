//! An enqueue that finds a free slot claims a job in its own transaction.
//! These tests check that the claimed job always runs.

mod common;

use burro::store::{JobStatus, ListQuery};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Counts the jobs in `status`.
async fn count(server: &TestServer, status: JobStatus) -> u64 {
    let query = ListQuery {
        status: Some(status),
        limit: 1,
        ..Default::default()
    };
    server.core().jobs.list(query).await.unwrap().total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_enqueues_leave_no_job_unstarted() {
    let server = start_with(
        |config| config.jobs.concurrency = 2,
        |app| {
            app.core().jobs.register("quick", |_| async { Ok(Value::Null) }).unwrap();
        },
    )
    .await;

    // Each enqueue is dropped after a few hundred microseconds, like a
    // request whose client disconnects: some before their write, some
    // after it, some after the commit.
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let jobs = server.core().jobs.clone();
        tasks.push(tokio::spawn(async move {
            let limit = Duration::from_micros(50 + (i * 37) % 900);
            let _ = tokio::time::timeout(limit, jobs.enqueue("quick", json!({"i": i}), Default::default())).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Every stored job completes; none stays claimed without running. The
    // claims of dropped enqueues may still be on their way, so the counts
    // must hold still for a moment, with at least the first job, which
    // found a free slot, completed.
    let mut last_completed = 0;
    within(Duration::from_secs(20), async {
        loop {
            let running = count(&server, JobStatus::Running).await;
            let pending = count(&server, JobStatus::Pending).await;
            let completed = count(&server, JobStatus::Completed).await;
            if running == 0 && pending == 0 && completed > 0 && completed == last_completed {
                break;
            }
            last_completed = completed;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}
