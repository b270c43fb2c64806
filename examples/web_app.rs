//! A web application that embeds burro as a library.
//!
//! It registers an external Python job, forwards that job's progress to the
//! SSE channel `job:<id>` by hand, and adds its own routes: one that starts
//! a job and one that streams a single job's progress to a browser.
//!
//! Run from the repository root:
//!
//! ```sh
//! cargo run -p burro --example web_app
//! curl -X POST 'http://127.0.0.1:3001/videos/abc123/process'
//! curl -N 'http://127.0.0.1:3001/jobs/<id>/progress'
//! ```

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burro::config::ExternalJobConfig;
use burro::jobs::EnqueueOptions;
use burro::{AppServer, Core};
use serde_json::json;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let server = AppServer::builder()
        .bind("127.0.0.1:3001".parse()?)
        .data_dir(root.join(".burro-web-app"))
        .build()
        .await?;

    let core = server.core().clone();
    core.jobs.register_external(
        "process-video",
        ExternalJobConfig {
            command: "python3".into(),
            args: vec![root.join("examples/workers/progress_demo.py").display().to_string()],
            heartbeat_timeout: Some(Duration::from_secs(60)),
            timeout: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    )?;

    // Forward the job's progress to its own SSE channel.
    let sse = core.sse.clone();
    core.events.on("job.external.progress", move |event| {
        let sse = sse.clone();
        async move {
            let id = event.data["jobId"].as_str().unwrap_or_default();
            let progress = json!({"percent": event.data["percent"], "message": event.data["message"]});
            sse.broadcast(&format!("job:{id}"), "progress", &progress);
            Ok(())
        }
    });
    // Tell subscribers when it ends, so the page can close its stream.
    for name in ["job.completed", "job.failed"] {
        let sse = core.sse.clone();
        core.events.on(name, move |event| {
            let sse = sse.clone();
            async move {
                let id = event.data["jobId"].as_str().unwrap_or_default();
                let short = event.name.trim_start_matches("job.");
                sse.broadcast(&format!("job:{id}"), short, &event.data);
                Ok(())
            }
        });
    }

    let routes = Router::new()
        .route("/videos/{video}/process", post(process_video))
        .route("/jobs/{id}/progress", get(subscribe_job))
        .with_state(core);
    let running = server.route(routes).start().await?;
    println!("web app on {}", running.url());
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}

async fn process_video(State(core): State<Core>, Path(video): Path<String>) -> Response {
    let data = json!({"videoId": video, "steps": 5, "delay": 0.5});
    match core.jobs.enqueue("process-video", data, EnqueueOptions::default()).await {
        Ok(id) => Json(json!({"jobId": id})).into_response(),
        Err(err) => (axum::http::StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    }
}

async fn subscribe_job(State(core): State<Core>, Path(id): Path<String>) -> Response {
    let (client, stream) = core.sse.add_client(&[], None);
    core.sse.subscribe(client, &format!("job:{id}"));
    core.sse.response(stream)
}
