//! End-to-end tests of the Node.js job library in clients/node: real shims
//! running `node` on the worker scripts under tests/workers.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_job_completes_with_result() {
    let server = start(vec![("node", external("node", "complete.mjs"))]).await;
    let id = server.core().jobs.enqueue("node", json!({"x": 1, "text": "é ✓"}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"echo": {"x": 1, "text": "é ✓"}})));
    assert_eq!(job.attempts, 1);
    assert!(job.external);
    assert_eq!(job.progress.percent, Some(50.0));
    assert_eq!(job.progress.message.as_deref(), Some("half"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_job_receives_cancel_message() {
    let server = start(vec![("aware", external("node", "cancel_aware.mjs"))]).await;
    let marker = server.dir.path().join("cancel.marker");
    let id = server
        .core()
        .jobs
        .enqueue("aware", json!({"markerFile": marker.display().to_string()}), once())
        .await
        .unwrap();
    server.wait_for(&id, "progress reported", |job| job.progress.percent == Some(1.0)).await;
    server.core().jobs.cancel(&id).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    // The marker exists only when job.signal was aborted by the cancel
    // message. A SIGTERM would have ended the process before writing it.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "cancel seen");
}
