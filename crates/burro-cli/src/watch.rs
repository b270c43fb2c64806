//! Following a job's event stream with a live progress bar.

use crate::client::Client;
use crate::sse::EventReader;
use crate::{EXIT_JOB_FAILED, EXIT_USAGE};
use anyhow::anyhow;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// Reconnect attempts after the stream breaks before giving up.
const MAX_RECONNECTS: u32 = 10;

/// End of a watched job.
#[derive(Debug, Clone)]
pub struct Ending {
    /// `completed`, `failed` or `cancelled`.
    pub status: String,
    pub data: Value,
}

impl Ending {
    pub fn exit_code(&self) -> ExitCode {
        if self.status == "completed" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_JOB_FAILED)
        }
    }

    /// Describes the end in one line: the result or the error.
    pub fn describe(&self) -> String {
        match self.status.as_str() {
            "completed" => format!("completed: {}", self.data.get("result").cloned().unwrap_or(Value::Null)),
            "failed" => format!("failed: {}", self.data.get("error").and_then(Value::as_str).unwrap_or("unknown error")),
            other => other.to_string(),
        }
    }
}

/// Where a watcher prints lines above the bars: a bar of its own, or the
/// [`MultiProgress`] that contains several bars (lines printed through one of
/// its bars would break its drawing).
#[derive(Clone)]
pub enum Printer {
    Bar(ProgressBar),
    Multi(MultiProgress),
}

impl Printer {
    fn println(&self, line: String) {
        match self {
            Printer::Bar(bar) => bar.println(line),
            Printer::Multi(multi) => {
                let _ = multi.println(line);
            }
        }
    }
}

pub fn new_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(100);
    let style = ProgressStyle::with_template("{prefix:>18} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// `burro watch ID`.
pub async fn watch(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let bar = new_bar(&short_id(id));
    match follow(client, id, &bar, &Printer::Bar(bar.clone())).await {
        Ok(ending) => {
            bar.finish_and_clear();
            println!("job {id} {}", ending.describe());
            if ending.status != "completed" {
                println!("its log: burro logs {id}");
            }
            Ok(ending.exit_code())
        }
        Err(err) => {
            bar.abandon();
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

pub fn short_id(id: &str) -> String {
    id.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect()
}

/// Follows `/api/jobs/{id}/events` until the job ends, updating `bar`.
/// Reconnects with `Last-Event-ID` when the stream breaks.
pub async fn follow(client: &Client, id: &str, bar: &ProgressBar, printer: &Printer) -> anyhow::Result<Ending> {
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let mut request = client.http().get(client.url(&format!("/api/jobs/{id}/events")));
        if let Some(last) = &last_id {
            request = request.header("Last-Event-ID", last);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(client.unreachable(err));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if response.status().as_u16() == 404 {
            return Err(anyhow!("job {id} not found"));
        }
        if response.status().as_u16() == 204 {
            // The final event was already delivered; read the stored state.
            let job = client.get(&format!("/api/jobs/{id}")).await?;
            let status = job["status"].as_str().unwrap_or("failed").to_string();
            return Ok(Ending { status, data: job });
        }
        if !response.status().is_success() {
            return Err(anyhow!("the server returned HTTP {} for the events of job {id}", response.status().as_u16()));
        }
        let mut reader = EventReader::new(response);
        loop {
            let event = match reader.next().await {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => break,
            };
            failures = 0;
            if event.id.is_some() {
                last_id = event.id.clone();
            }
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            if let Some(ending) = apply(bar, printer, &event.event, data) {
                return Ok(ending);
            }
        }
        failures += 1;
        if failures > MAX_RECONNECTS {
            return Err(anyhow!("the event stream of job {id} kept breaking; is the server still running at {}?", client.url("")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies one event to the bar; returns the ending for a terminal event.
fn apply(bar: &ProgressBar, printer: &Printer, event: &str, data: Value) -> Option<Ending> {
    match event {
        "job" => {
            if let Some(percent) = data.pointer("/progress/percent").and_then(Value::as_f64) {
                bar.set_position(percent.round() as u64);
            }
            if let Some(message) = data.pointer("/progress/message").and_then(Value::as_str) {
                bar.set_message(message.to_string());
            } else if let Some(status) = data.get("status").and_then(Value::as_str) {
                bar.set_message(status.to_string());
            }
        }
        "spawned" => bar.set_message("started"),
        "progress" => {
            if let Some(percent) = data.get("percent").and_then(Value::as_f64) {
                bar.set_position(percent.round() as u64);
            }
            if let Some(message) = data.get("message").and_then(Value::as_str) {
                bar.set_message(message.to_string());
            }
        }
        "log" => {
            let level = data.get("level").and_then(Value::as_str).unwrap_or("info");
            let message = data.get("message").and_then(Value::as_str).unwrap_or("");
            printer.println(format!("[{}] {level:>5} {message}", bar.prefix().trim()));
        }
        "retrying" => {
            let error = data.get("error").and_then(Value::as_str).unwrap_or("unknown error");
            let attempt = data.get("attempt").and_then(Value::as_u64).unwrap_or(0);
            let run_at = data.get("runAt").and_then(Value::as_str).unwrap_or("soon");
            printer.println(format!("[{}] attempt {attempt} failed: {error}; retrying at {run_at}", bar.prefix().trim()));
            bar.set_position(0);
            bar.set_message("waiting to retry");
        }
        "stale" => {
            let since = data.get("timeSinceHeartbeat").and_then(Value::as_u64).unwrap_or(0);
            printer.println(format!("[{}] no heartbeat for {since} ms", bar.prefix().trim()));
        }
        "completed" => {
            bar.set_position(100);
            return Some(Ending { status: "completed".into(), data });
        }
        "failed" | "cancelled" => return Some(Ending { status: event.to_string(), data }),
        _ => {}
    }
    None
}
