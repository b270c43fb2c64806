//! Client commands: enqueue, status, list, cancel, logs.

use crate::client::{ApiFailure, Client};
use crate::sse::EventReader;
use crate::{watch, EXIT_JOB_FAILED};
use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

pub struct EnqueueRequest {
    pub name: String,
    pub data: Option<String>,
    pub data_file: Option<PathBuf>,
    pub max_attempts: Option<u32>,
    pub at: Option<String>,
    pub timeout: Option<String>,
}

fn read_data(request: &EnqueueRequest) -> anyhow::Result<Value> {
    let (text, source) = match (&request.data, &request.data_file) {
        (Some(text), _) => (text.clone(), "--data".to_string()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading job data from standard input failed")?;
            (text, "standard input".to_string())
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the data file {} failed", path.display()))?;
            (text, path.display().to_string())
        }
        (None, None) => return Ok(Value::Null),
    };
    serde_json::from_str(&text).map_err(|e| anyhow!("invalid JSON in {source}: {e}; a string must be quoted, for example --data '\"hello\"'"))
}

/// `burro enqueue`.
pub async fn enqueue(client: &Client, request: EnqueueRequest, wait: bool) -> anyhow::Result<ExitCode> {
    let data = read_data(&request)?;
    let mut body = json!({"name": request.name, "data": data});
    if let Some(n) = request.max_attempts {
        body["maxAttempts"] = json!(n);
    }
    if let Some(at) = &request.at {
        body["runAt"] = json!(at);
    }
    if let Some(timeout) = &request.timeout {
        body["timeout"] = json!(timeout);
    }
    let created = client.post("/api/jobs", &body).await?;
    let id = created["id"].as_str().ok_or_else(|| anyhow!("the server returned no job id: {created}"))?.to_string();
    if !wait {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("enqueued job {id}");
    watch::watch(client, &id).await
}

/// `burro status ID`.
pub async fn status(client: &Client, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let job = client.get(&format!("/api/jobs/{id}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(ExitCode::SUCCESS);
    }
    let field = |name: &str| match &job[name] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("id:          {}", field("id"));
    println!("name:        {}", field("name"));
    println!("status:      {}", field("status"));
    println!("attempts:    {} of {}", field("attempts"), field("maxAttempts"));
    let percent = job.pointer("/progress/percent").and_then(Value::as_f64);
    let message = job.pointer("/progress/message").and_then(Value::as_str).unwrap_or("");
    match percent {
        Some(p) => println!("progress:    {p:.0}% {message}"),
        None => println!("progress:    -"),
    }
    println!("created:     {}", field("createdAt"));
    println!("started:     {}", field("startedAt"));
    println!("finished:    {}", field("completedAt"));
    if job["external"].as_bool() == Some(true) {
        println!("process:     {} (pid {})", field("processState"), field("pid"));
        println!("heartbeat:   {}", field("lastHeartbeat"));
    }
    if !job["result"].is_null() {
        println!("result:      {}", job["result"]);
    }
    if !job["error"].is_null() {
        println!("error:       {}", field("error"));
    }
    Ok(ExitCode::SUCCESS)
}

/// `burro list`.
/// Filters and paging of `burro list`.
pub struct ListArgs {
    pub status: Option<String>,
    pub name: Option<String>,
    pub limit: u32,
    pub offset: u32,
    pub after: Option<String>,
}

pub async fn list(client: &Client, args: ListArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut request = client.http().get(client.url("/api/jobs")).query(&[("limit", args.limit)]);
    match &args.after {
        Some(after) => request = request.query(&[("after", after)]),
        None => request = request.query(&[("offset", args.offset)]),
    }
    if let Some(status) = &args.status {
        request = request.query(&[("status", status)]);
    }
    if let Some(name) = &args.name {
        request = request.query(&[("name", name)]);
    }
    let page = client.send(request).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
    println!("{:<36}  {:<20}  {:<9}  {:>8}  {:>5}  CREATED", "ID", "NAME", "STATUS", "ATTEMPTS", "PROG");
    for job in &jobs {
        let percent = job.pointer("/progress/percent").and_then(Value::as_f64).map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into());
        println!(
            "{:<36}  {:<20}  {:<9}  {:>8}  {:>5}  {}",
            job["id"].as_str().unwrap_or(""),
            job["name"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or(""),
            format!("{}/{}", job["attempts"], job["maxAttempts"]),
            percent,
            job["createdAt"].as_str().unwrap_or("")
        );
    }
    println!("{} of {} jobs", jobs.len(), page["total"]);
    if let Some(next) = page["next"].as_str() {
        println!("next page: burro list --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `burro cancel ID`: exit 0 when cancelled or requested, 1 when the job
/// had already finished.
pub async fn cancel(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    match client.post(&format!("/api/jobs/{id}/cancel"), &json!({})).await {
        Ok(job) => {
            let status = job["status"].as_str().unwrap_or("");
            if status == "cancelled" {
                println!("job {id} cancelled");
            } else {
                println!("job {id} is {status}: cancel requested, it stops shortly");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => match err.downcast::<ApiFailure>() {
            Ok(failure) if failure.status.as_u16() == 409 => {
                eprintln!("job {id} already finished with status {}; nothing to cancel", failure.body["status"].as_str().unwrap_or("unknown"));
                Ok(ExitCode::from(EXIT_JOB_FAILED))
            }
            Ok(failure) => Err(failure.into()),
            Err(err) => Err(err),
        },
    }
}

/// `burro retry ID`.
pub async fn retry(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    match client.post(&format!("/api/jobs/{id}/retry"), &json!({})).await {
        Ok(job) => {
            println!("job {id} is pending again (attempt {} of {})", job["attempts"].as_u64().unwrap_or(0) + 1, job["maxAttempts"]);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => match err.downcast::<ApiFailure>() {
            Ok(failure) if failure.status.as_u16() == 409 => {
                eprintln!("{}", failure.message);
                Ok(ExitCode::from(EXIT_JOB_FAILED))
            }
            Ok(failure) => Err(failure.into()),
            Err(err) => Err(err),
        },
    }
}

/// `burro purge --older-than AGE [--status S]`.
pub async fn purge(client: &Client, older_than: &str, status: Option<String>) -> anyhow::Result<ExitCode> {
    let mut body = json!({"olderThan": older_than});
    if let Some(status) = status {
        body["status"] = json!(status);
    }
    let result = client.post("/api/purge", &body).await?;
    println!("deleted {} finished jobs", result["deleted"]);
    Ok(ExitCode::SUCCESS)
}

fn print_entry(entry: &Value) {
    let ts = entry["ts"].as_i64().unwrap_or(0);
    let time = burro::clock::to_rfc3339(ts);
    println!(
        "{time} #{} {:<6} {:<5} {}",
        entry["attempt"],
        entry["stream"].as_str().unwrap_or(""),
        entry["level"].as_str().unwrap_or(""),
        entry["message"].as_str().unwrap_or("")
    );
}

/// `burro logs ID [--follow]`.
pub async fn logs(client: &Client, id: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let logs = client.get(&format!("/api/jobs/{id}/logs")).await?;
    for entry in logs["entries"].as_array().into_iter().flatten() {
        print_entry(entry);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let response = client
        .http()
        .get(client.url(&format!("/api/jobs/{id}/events")))
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if response.status().as_u16() != 200 {
        return Ok(ExitCode::SUCCESS);
    }
    let mut reader = EventReader::new(response);
    while let Some(event) = reader.next().await.map_err(|e| client.unreachable(e))? {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.event.as_str() {
            "log" => print_entry(&json!({
                "ts": burro::clock::now_ms(),
                "attempt": data["attempt"],
                "stream": data["stream"],
                "level": data["level"],
                "message": data["message"],
            })),
            "completed" => return Ok(ExitCode::SUCCESS),
            "failed" | "cancelled" => return Ok(ExitCode::from(EXIT_JOB_FAILED)),
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}
