//! End-to-end tests of external jobs written with the `burro-job` crate: the
//! server runs its example binaries through real shims and sockets.
//!
//! The examples must be built first: `cargo build -p burro-job --examples`.

mod common;

use burro::config::ExternalJobConfig;
use burro::jobs::EnqueueOptions;
use burro::store::JobStatus;
use common::*;
use serde_json::json;
use std::path::PathBuf;

fn once() -> EnqueueOptions {
    EnqueueOptions {
        max_attempts: Some(1),
        ..Default::default()
    }
}

/// Builds the configuration of an external job that runs a compiled
/// `burro-job` example.
fn rust_example(name: &str) -> ExternalJobConfig {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug/examples").join(name);
    assert!(
        path.exists(),
        "missing example binary {}: build it with `cargo build -p burro-job --examples`",
        path.display()
    );
    ExternalJobConfig {
        command: path.display().to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_job_completes_with_result_and_progress() {
    let server = start(vec![("rust", rust_example("progress_demo"))]).await;
    let mut logs = server.core().events.subscribe("job.external.log");
    let id = server
        .core()
        .jobs
        .enqueue("rust", json!({"steps": 4, "delay": 0.01}), once())
        .await
        .unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"steps": 4, "language": "rust"})));
    assert!(job.external);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.progress.percent, Some(100.0));
    assert_eq!(job.progress.message.as_deref(), Some("step 4 of 4"));

    let mut messages = Vec::new();
    while let Some(event) = logs.try_recv() {
        if event.data["stream"] == json!("log") {
            assert_eq!(event.data["level"], json!("info"));
            messages.push(event.data["message"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        messages,
        [
            "finished step 1",
            "finished step 2",
            "finished step 3",
            "finished step 4"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_job_failure_is_recorded() {
    let server = start(vec![("aware", rust_example("cancel_aware"))]).await;
    let id = server.core().jobs.enqueue("aware", json!({}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.error.as_deref(),
        Some("the job data does not have the expected shape: missing field `markerFile`")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_job_sees_cancel_message() {
    let server = start(vec![("aware", rust_example("cancel_aware"))]).await;
    let marker = server.dir.path().join("cancel.marker");
    let id = server
        .core()
        .jobs
        .enqueue("aware", json!({"markerFile": marker.display().to_string()}), once())
        .await
        .unwrap();
    server
        .wait_for(&id, "progress reported", |job| job.progress.percent == Some(1.0))
        .await;
    server.core().jobs.cancel(&id).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "cancel seen");
}
