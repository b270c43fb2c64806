//! The HTTP API and in-process handlers, through a real HTTP client.

mod common;

use burro::jobs::EnqueueOptions;
use burro::store::JobStatus;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn in_process_server() -> TestServer {
    start_with(
        |_| {},
        |app| {
            let jobs = &app.core().jobs;
            jobs.register("double", |ctx| async move {
                ctx.progress(50.0, Some("halfway")).await;
                ctx.info("doubling").await;
                let n = ctx.data["n"].as_i64().unwrap_or(0);
                Ok(json!({"n": n * 2}))
            })
            .unwrap();
            jobs.register("wait-cancel", |ctx| async move {
                ctx.cancel.cancelled().await;
                Ok(json!("stopped"))
            })
            .unwrap();
            jobs.register("flaky", |ctx| async move {
                if ctx.attempt < 2 {
                    anyhow::bail!("attempt {} failed", ctx.attempt);
                }
                Ok(json!({"attempt": ctx.attempt}))
            })
            .unwrap();
        },
    )
    .await
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_get_and_finish_over_http() {
    let server = in_process_server().await;
    let (status, body) = post(&format!("{}/api/jobs", server.url()), json!({"name": "double", "data": {"n": 21}})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    server.wait_finished(&id).await;

    let (status, job) = get(&format!("{}/api/jobs/{id}", server.url())).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], json!("completed"));
    assert_eq!(job["result"], json!({"n": 42}));
    assert_eq!(job["progress"], json!({"percent": 50.0, "message": "halfway"}));
    assert_eq!(job["maxAttempts"], json!(3));
    assert_eq!(job["external"], json!(false));
    for field in ["createdAt", "runAt", "startedAt", "completedAt"] {
        let text = job[field].as_str().unwrap_or_else(|| panic!("{field} missing"));
        assert!(text.ends_with('Z'), "{field} is UTC RFC 3339: {text}");
    }

    let (status, logs) = get(&format!("{}/api/jobs/{id}/logs", server.url())).await;
    assert_eq!(status, 200);
    assert_eq!(logs["entries"][0]["message"], json!("doubling"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let server = in_process_server().await;
    let jobs_url = format!("{}/api/jobs", server.url());
    let client = reqwest::Client::new();

    let (status, body) = post(&jobs_url, json!({"name": "nope"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!("unknown_job"));
    assert!(body["error"]["message"].as_str().unwrap().contains("\"nope\""));

    let response = client.post(&jobs_url).header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("invalid_json"));

    let (status, body) = post(&jobs_url, json!({"name": "double", "runAt": "tomorrow"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!("invalid_run_at"));
    assert!(body["error"]["message"].as_str().unwrap().contains("runAt"));

    // A delay that ends after the year 9999 could not be shown as a date.
    let (status, body) = post(&jobs_url, json!({"name": "double", "runAt": "+9000000d"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!("invalid_run_at"));
    assert!(body["error"]["message"].as_str().unwrap().contains("year 9999"), "{body}");

    let (status, body) = post(&jobs_url, json!({"name": "double", "maxAttempts": 0})).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("maxAttempts"));

    let (status, body) = post(&jobs_url, json!({"name": "double", "maxAttemps": 2})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!("unknown_field"));

    let (status, body) = post(&jobs_url, json!(["name"])).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!("invalid_body"));

    let (status, body) = get(&format!("{}/api/jobs/does-not-exist", server.url())).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], json!("job_not_found"));

    let (status, body) = get(&format!("{jobs_url}?status=sleeping")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!("invalid_status"));

    let big = "x".repeat(11 * 1024 * 1024);
    let response = client
        .post(&jobs_url)
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"double\",\"data\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("payload_too_large"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages() {
    let server = in_process_server().await;
    let future = EnqueueOptions {
        run_at_ms: Some(burro::clock::now_ms() + 3_600_000),
        ..Default::default()
    };
    for i in 0..5 {
        server.core().jobs.enqueue("double", json!({"n": i}), future.clone()).await.unwrap();
    }
    let (status, page) = get(&format!("{}/api/jobs?status=scheduled&name=double&limit=2&offset=1", server.url())).await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], json!(5));
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert!(page["jobs"].as_array().unwrap().iter().all(|j| j["status"] == json!("scheduled")));

    let (_, page) = get(&format!("{}/api/jobs?limit=5000", server.url())).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_waiting_running_and_finished() {
    let server = in_process_server().await;
    let url = server.url();

    let later = EnqueueOptions {
        run_at_ms: Some(burro::clock::now_ms() + 3_600_000),
        ..Default::default()
    };
    let waiting = server.core().jobs.enqueue("double", json!({}), later).await.unwrap();
    let (status, job) = post(&format!("{url}/api/jobs/{waiting}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], json!("cancelled"));

    let running = server.core().jobs.enqueue("wait-cancel", json!({}), EnqueueOptions::default()).await.unwrap();
    server.wait_for(&running, "running", |job| job.status == JobStatus::Running).await;
    let (status, job) = post(&format!("{url}/api/jobs/{running}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(job["id"], json!(running));
    let job = server.wait_finished(&running).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.attempts, 1, "a cancel is never retried");

    let (status, body) = post(&format!("{url}/api/jobs/{running}/cancel"), json!({})).await;
    assert_eq!(status, 409);
    assert_eq!(body["status"], json!("cancelled"));
    assert_eq!(body["error"]["code"], json!("already_finished"));

    let (status, _) = post(&format!("{url}/api/jobs/unknown/cancel"), json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_failure_is_retried() {
    let server = in_process_server().await;
    let id = server.core().jobs.enqueue("flaky", json!({}), EnqueueOptions::default()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.result, Some(json!({"attempt": 2})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_job_runs_when_due() {
    let server = in_process_server().await;
    let (status, body) = post(&format!("{}/api/jobs", server.url()), json!({"name": "double", "data": {"n": 1}, "runAt": "+300ms"})).await;
    assert_eq!(status, 201);
    let id = body["id"].as_str().unwrap();
    let job = server.core().jobs.get(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Scheduled);
    let job = server.wait_finished(id).await;
    assert_eq!(job.status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_stream_ends_after_final_event() {
    let server = start(vec![("py", external("python3", "complete.py"))]).await;
    let later = EnqueueOptions {
        run_at_ms: Some(burro::clock::now_ms() + 500),
        max_attempts: Some(1),
        ..Default::default()
    };
    let id = server.core().jobs.enqueue("py", json!({"v": 1}), later).await.unwrap();
    let url = format!("{}/api/jobs/{id}/events", server.url());

    // The stream ends by itself after the terminal event.
    let body = within(WAIT, async { reqwest::get(&url).await.unwrap().text().await.unwrap() }).await;
    assert!(body.starts_with("retry:"), "{body}");
    let events = parse_sse(&body);
    let names: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"job"), "{names:?}");
    assert!(names.contains(&"spawned"), "{names:?}");
    let progress = names.iter().position(|n| *n == "progress").expect("progress event");
    let last = events.last().unwrap();
    assert_eq!(last.1, "completed");
    assert_eq!(last.0.as_deref(), Some("final"));
    assert_eq!(last.2["result"], json!({"echo": {"v": 1}}));
    assert!(progress < events.len() - 1);

    // Reconnecting after the final event gets 204; without an id, the final event again.
    let response = reqwest::Client::new().get(&url).header("Last-Event-ID", "final").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let events = parse_sse(&body);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_channel_streams_progress_in_order() {
    let server = start(vec![("flood", external("python3", "flood_progress.py"))]).await;
    let url = format!("{}/api/events?channel=jobs", server.url());
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let id = server.core().jobs.enqueue("flood", json!({"count": 50}), EnqueueOptions::default()).await.unwrap();

    let mut stream = response.bytes_stream();
    let mut text = String::new();
    use futures::StreamExt;
    within(WAIT, async {
        while !text.contains("event: completed") {
            let chunk = stream.next().await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    let events = parse_sse(&text);
    let percents: Vec<f64> = events
        .iter()
        .filter(|(_, name, data)| name == "progress" && data["jobId"] == json!(id))
        .map(|(_, _, data)| data["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(percents.len(), 50);
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "progress in order: {percents:?}");
    assert!(events.iter().all(|(id, _, _)| id.as_deref().is_some_and(|v| v.contains('-'))));
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_components() {
    let server = in_process_server().await;
    let (status, body) = get(&format!("{}/health", server.url())).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], json!("ok"));
    assert_eq!(body["store"], json!("ok"));
    assert_eq!(body["controlSocket"], json!("ok"));
    assert_eq!(body["dispatcher"], json!("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_stats_purge_and_metrics() {
    let server = start_with(
        |config| {
            config.external_jobs.insert("exit".into(), external("bash", "exit_code.sh"));
        },
        |_| {},
    )
    .await;
    let url = server.url();
    let options = EnqueueOptions {
        max_attempts: Some(1),
        ..Default::default()
    };
    let id = server.core().jobs.enqueue("exit", json!({"code": 4}), options).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);

    let (status, stats) = get(&format!("{url}/api/stats")).await;
    assert_eq!(status, 200);
    assert_eq!(stats["byStatus"]["failed"], json!(1));
    assert_eq!(stats["byStatus"]["pending"], json!(0));
    assert_eq!(stats["byName"]["exit"]["failed"], json!(1));

    let (status, retried) = post(&format!("{url}/api/jobs/{id}/retry"), json!({})).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["maxAttempts"], json!(2));
    let job = server.wait_for(&id, "second attempt ends", |job| job.attempts == 2 && job.status.is_finished()).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("process exited with code 4"));

    let later = EnqueueOptions {
        run_at_ms: Some(burro::clock::now_ms() + 3_600_000),
        ..Default::default()
    };
    let running = server.core().jobs.enqueue("exit", json!({"code": 0}), later).await.unwrap();
    let (status, body) = post(&format!("{url}/api/jobs/{running}/retry"), json!({})).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], json!("not_retryable"));

    let response = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("burro_jobs_failed_total{name=\"exit\"} 2"), "{text}");
    assert!(text.contains("burro_jobs_started_total{name=\"exit\"} 2"), "{text}");
    assert!(text.contains("burro_jobs{status=\"scheduled\"} 1"), "{text}");
    assert!(text.contains("burro_job_duration_seconds_count{name=\"exit\"} 2"), "{text}");

    let (status, body) = post(&format!("{url}/api/purge"), json!({"olderThan": "1h"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["deleted"], json!(0), "the failed job is newer than an hour");
    let (status, body) = post(&format!("{url}/api/purge"), json!({"olderThan": "0s", "status": "running"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], json!("invalid_status"));
    let (status, body) = post(&format!("{url}/api/purge"), json!({"olderThan": "0s", "status": "failed"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["deleted"], json!(1));
    let (status, _) = get(&format!("{url}/api/jobs/{id}")).await;
    assert_eq!(status, 404);
    assert!(!server.dir.path().join(format!("logs/{id}.log")).exists(), "the log file is deleted with the job");
    let (_, waiting) = get(&format!("{url}/api/jobs/{running}")).await;
    assert_eq!(waiting["status"], json!("scheduled"), "waiting jobs are never purged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_guards_api_routes() {
    let server = start_with(|config| config.server.api_token = Some("s3cret token".into()), |_| {}).await;
    let url = server.url();
    let client = reqwest::Client::new();

    let response = client.get(format!("{url}/api/jobs")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("unauthorized"));
    let response = client.get(format!("{url}/api/jobs")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let response = client.get(format!("{url}/api/jobs")).bearer_auth("s3cret token").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // The dashboard page and the health check stay public.
    assert_eq!(client.get(format!("{url}/")).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(client.get(format!("{url}/health")).send().await.unwrap().status().as_u16(), 200);

    // A browser trades the token for a cookie.
    let response = client.post(format!("{url}/api/session")).json(&json!({"token": "nope"})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = client.post(format!("{url}/api/session")).json(&json!({"token": "s3cret token"})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let response = client.get(format!("{url}/api/stats")).header("cookie", pair).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // EventSource cannot send headers, so SSE routes also take ?token=.
    let response = client.get(format!("{url}/api/events?channel=jobs&token=s3cret%20token")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = client.get(format!("{url}/api/jobs?token=s3cret%20token")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "only SSE routes take the token from the URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_bind_without_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::Builder::new().prefix("bt").tempdir_in("/tmp").unwrap();
    let mut config = test_config(dir.path(), &sockets.path().join("s"));
    config.server.bind = "0.0.0.0:0".parse().unwrap();
    let error = match burro::AppServer::from_config(config).await {
        Ok(_) => panic!("a public bind without a token must be refused"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("api_token"), "{error}");
    assert!(error.contains("BURRO_API_TOKEN"), "{error}");
}
