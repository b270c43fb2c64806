//! The heartbeat monitor: `job.stale` after one heartbeat timeout without a
//! message, termination after two, and a lost attempt when a shim stays
//! disconnected for the reconnect window.

use super::run::Liveness;
use super::Inner;
use crate::jobs::KillReason;
use serde_json::json;
use std::sync::Weak;

pub(crate) async fn heartbeat_monitor(inner: Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(inner) => inner.settings.heartbeat_check_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let runs: Vec<_> = inner.runs.lock().expect("runs lock").values().cloned().collect();
        for run in runs {
            match run.check_liveness() {
                Liveness::Healthy => {}
                Liveness::Stale { since_ms } => {
                    tracing::warn!(job_id = %run.job_id, job_name = %run.name, elapsed_ms = since_ms, "job is stale: no message within its heartbeat timeout");
                    // The emit waits while a subscriber's queue is full; on a
                    // task of its own it cannot hold up the checks of the
                    // other jobs. A run reports stale once until it is heard
                    // from again, so these tasks stay few.
                    let events = inner.events.clone();
                    let data = json!({"jobId": run.job_id, "name": run.name, "timeSinceHeartbeat": since_ms});
                    tokio::spawn(async move { events.emit("job.stale", data).await });
                }
                Liveness::Dead { since_ms } => {
                    tracing::warn!(job_id = %run.job_id, job_name = %run.name, elapsed_ms = since_ms, "no message for twice the heartbeat timeout; terminating the job");
                    run.request_kill(KillReason::HeartbeatTimeout, false);
                }
                Liveness::Lost { since_ms, connected } => {
                    let reason = if connected {
                        format!("job lost: its shim disconnected {since_ms} ms ago and has not reconnected")
                    } else {
                        format!("job lost: its shim was started {since_ms} ms ago and has not connected")
                    };
                    tracing::warn!(job_id = %run.job_id, job_name = %run.name, attempt = run.attempt, "{reason}");
                    run.note("error", reason.clone());
                    run.terminate_orphan("the job's shim is presumed gone");
                    run.deliver_lost_reason(reason);
                }
            }
        }
    }
}
