//! The smallest job process the benchmarks run: it reads the payload line
//! from standard input, connects to the socket path it names, sends
//! `started`, `data.progress` progress messages (0 when absent) and
//! `completed`, and exits.
//!
//! With `data.logs` set, it sends that many `log` messages instead of the
//! progress messages, numbered from 1, one every `data.intervalMs`
//! milliseconds, so a reader can tell which ones arrived.
//!
//! With `data.perSecond` set as well as `data.progress`, it paces the
//! progress messages at that many per second, flushed every 10 ms, instead
//! of sending them as fast as it can.
//!
//! With `data.stopFile` set, it sends a `heartbeat` every
//! `data.heartbeatMs` milliseconds instead, and completes once that file
//! exists (checked at each heartbeat, so thousands of these jobs stay
//! asleep): a sleeping job that lives as long as the benchmark needs.

use std::io::{BufRead, BufWriter, Write};
use std::os::unix::net::UnixStream;

fn main() {
    if let Err(error) = run() {
        eprintln!("tiny_worker: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the payload: {e}"))?;
    let payload: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("parsing the payload: {e}"))?;
    let job_id = payload["jobId"]
        .as_str()
        .ok_or("the payload has no jobId")?;
    let socket = payload["socketPath"]
        .as_str()
        .ok_or("the payload has no socketPath")?;
    let progress = payload["data"]["progress"].as_u64().unwrap_or(0);
    let logs = payload["data"]["logs"].as_u64().unwrap_or(0);
    let interval = std::time::Duration::from_millis(payload["data"]["intervalMs"].as_u64().unwrap_or(0));

    let stream = UnixStream::connect(socket).map_err(|e| format!("connecting to {socket}: {e}"))?;
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    // The job id is a UUID or a plain token, so it needs no JSON escaping.
    writeln!(out, r#"{{"type":"started","jobId":"{job_id}"}}"#).map_err(|e| e.to_string())?;
    if logs > 0 {
        return send_numbered_logs(out, job_id, logs, interval);
    }
    if let Some(stop_file) = payload["data"]["stopFile"].as_str() {
        let heartbeat = std::time::Duration::from_millis(payload["data"]["heartbeatMs"].as_u64().unwrap_or(5000));
        return heartbeat_until(out, job_id, std::path::Path::new(stop_file), heartbeat);
    }
    if let Some(per_second) = payload["data"]["perSecond"].as_u64().filter(|rate| *rate > 0) {
        return send_paced_progress(out, job_id, progress, per_second);
    }
    if progress == 0 {
        // The first message goes out at once: its arrival is what S1 measures.
        out.flush().map_err(|e| e.to_string())?;
    }
    for i in 0..progress {
        let percent = i * 100 / progress;
        writeln!(
            out,
            r#"{{"type":"progress","jobId":"{job_id}","percent":{percent}}}"#
        )
        .map_err(|e| e.to_string())?;
    }
    complete(out, job_id)
}

/// Sends `count` progress messages at `per_second` a second, flushing every
/// 10 ms the ones that are due by then, then `completed`.
fn send_paced_progress(mut out: BufWriter<UnixStream>, job_id: &str, count: u64, per_second: u64) -> Result<(), String> {
    out.flush().map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < count {
        let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
        while sent < due.min(count) {
            sent += 1;
            writeln!(out, r#"{{"type":"progress","jobId":"{job_id}","percent":{},"message":"{sent}"}}"#, sent * 100 / count)
                .map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    complete(out, job_id)
}

/// Sends a `heartbeat` every `interval` until `stop_file` exists, then
/// `completed`.
fn heartbeat_until(
    mut out: BufWriter<UnixStream>,
    job_id: &str,
    stop_file: &std::path::Path,
    interval: std::time::Duration,
) -> Result<(), String> {
    out.flush().map_err(|e| e.to_string())?;
    while !stop_file.exists() {
        std::thread::sleep(interval);
        writeln!(out, r#"{{"type":"heartbeat","jobId":"{job_id}"}}"#).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    complete(out, job_id)
}

/// Sends `count` numbered `log` messages, each flushed at once, `interval`
/// apart, then `completed`.
fn send_numbered_logs(
    mut out: BufWriter<UnixStream>,
    job_id: &str,
    count: u64,
    interval: std::time::Duration,
) -> Result<(), String> {
    out.flush().map_err(|e| e.to_string())?;
    for number in 1..=count {
        std::thread::sleep(interval);
        writeln!(
            out,
            r#"{{"type":"log","jobId":"{job_id}","level":"info","message":"{number}"}}"#
        )
        .map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    complete(out, job_id)
}

/// Sends `completed` and flushes everything still buffered.
fn complete(mut out: BufWriter<UnixStream>, job_id: &str) -> Result<(), String> {
    writeln!(out, r#"{{"type":"completed","jobId":"{job_id}","result":null}}"#).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}
