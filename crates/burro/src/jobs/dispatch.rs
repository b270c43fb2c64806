//! Claiming due jobs, running them, and recording how they ended.

use super::handler::JobContext;
use super::live::{LiveValues, FLUSH_INTERVAL};
use super::outcome::{external_outcome, retry_decision, Outcome, RetryDecision};
use super::service::{Registration, RunningEntry, Shared};
use crate::clock::{now_ms, to_rfc3339};
use crate::metrics::JobCounter;
use crate::store::{ClaimRequest, Job, JobFinish, JobStatus};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// Delay before claiming again after a store error.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Claims due jobs while slots are free, then sleeps until woken by an
/// enqueue or a finished job, the next scheduled job, or the safety-net poll.
pub(crate) async fn dispatcher(shared: Arc<Shared>) {
    let mut failing = false;
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let names = registered_names(&shared);
        let mut sleep = shared.settings.poll_interval;
        if !names.is_empty() && shared.slots.available_permits() > 0 {
            // A read comes first. The claim is a write, and it keeps the
            // free slots taken, so an enqueue cannot claim a job into them.
            let claimed = match shared.store.job_next_run_at(&names).await {
                Ok(Some(next)) if next <= now_ms() => claim_due(&shared, names).await,
                Ok(next) => {
                    if let Some(next) = next {
                        let until = Duration::from_millis((next - now_ms()).max(0) as u64);
                        sleep = sleep.min(until.max(Duration::from_millis(5)));
                    }
                    Ok(Claimed::NothingDue)
                }
                Err(err) => Err(err),
            };
            match claimed {
                Ok(claimed) => {
                    if failing {
                        tracing::info!("claiming jobs works again");
                        failing = false;
                    }
                    // Slots are left and more jobs may be due: look again.
                    if claimed == Claimed::SomeSlotsLeft {
                        continue;
                    }
                }
                Err(err) => {
                    shared.metrics.store_error();
                    if !failing {
                        tracing::error!(error = %err, "claiming jobs failed; retrying every second");
                        failing = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                        _ = shared.shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Outcome of one claim by the dispatcher.
#[derive(Debug, PartialEq, Eq)]
enum Claimed {
    NothingDue,
    /// Jobs were claimed, and slots are still free.
    SomeSlotsLeft,
    /// Every free slot got a job, or no job was claimed.
    Done,
}

/// Claims due jobs into every free slot and starts them.
async fn claim_due(shared: &Arc<Shared>, names: Vec<String>) -> Result<Claimed, crate::store::StoreError> {
    // The slots are taken before the claim, because an enqueue may claim a
    // job into a free slot meanwhile.
    let mut permits = free_slots(shared);
    if permits.is_empty() {
        return Ok(Claimed::Done);
    }
    let free = permits.len();
    let jobs = shared.store.job_claim(&claim_request(shared, names, free as u32)).await?;
    let claimed = jobs.len();
    for job in jobs {
        let permit = permits.pop().expect("the claim returns at most one job per slot");
        start_claimed(shared, job, permit);
    }
    // A claim that takes nothing although a job looked due (another node
    // took it, or this node's lease is not valid) waits for the next wake
    // instead of trying again at once.
    Ok(if claimed > 0 && claimed < free { Claimed::SomeSlotsLeft } else { Claimed::Done })
}

/// Returns the job names registered on this server.
pub(crate) fn registered_names(shared: &Shared) -> Vec<String> {
    shared.registry.read().expect("registry lock").keys().cloned().collect()
}

/// Takes every free slot.
fn free_slots(shared: &Shared) -> Vec<OwnedSemaphorePermit> {
    std::iter::from_fn(|| shared.slots.clone().try_acquire_owned().ok()).collect()
}

/// Returns a claim of up to `limit` due jobs of `names` for this node.
pub(crate) fn claim_request(shared: &Shared, names: Vec<String>, limit: u32) -> ClaimRequest {
    ClaimRequest {
        names,
        limit,
        now_ms: now_ms(),
        node_id: shared.settings.node_id.clone(),
        lease_generation: shared.store.is_shared().then(|| shared.lease_generation.load(std::sync::atomic::Ordering::SeqCst)),
    }
}

/// Runs a claimed job in the slot that `permit` holds.
pub(crate) fn start_claimed(shared: &Arc<Shared>, job: Job, permit: OwnedSemaphorePermit) {
    tokio::spawn(execute(shared.clone(), job, permit));
}

/// Writes coalesced progress and heartbeats every flush interval.
pub(crate) async fn flusher(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => shared.live.flush(shared.store.as_ref(), Some(&shared.settings.node_id)).await,
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Runs one claimed attempt and records its end. The slot is held until the
/// job's process has exited and the end is stored.
async fn execute(shared: Arc<Shared>, job: Job, permit: OwnedSemaphorePermit) {
    let token = CancellationToken::new();
    let cancelled_early = shared.early_cancels.lock().expect("early cancels lock").remove(&job.id);
    shared.running.lock().expect("running lock").insert(
        job.id.clone(),
        RunningEntry {
            attempt: job.attempts,
            external: job.external,
            token: token.clone(),
            cancel_requested: cancelled_early,
            fenced: false,
        },
    );
    tracing::info!(job_id = %job.id, job_name = %job.name, attempt = job.attempts, "job started");
    shared.metrics.count(JobCounter::Started, &job.name);
    if let Some(started) = job.started_at {
        shared.metrics.observe_dispatch_latency((started - job.run_at).max(0) as f64 / 1000.0);
    }

    let registration = {
        let registry = shared.registry.read().expect("registry lock");
        match registry.get(&job.name) {
            Some(Registration::InProcess(handler)) => Some(Registration::InProcess(handler.clone())),
            Some(Registration::External(spec)) => Some(Registration::External(spec.clone())),
            None => None,
        }
    };
    let outcome = if cancelled_early {
        Outcome::Cancelled
    } else {
        match registration {
            Some(Registration::InProcess(handler)) => run_in_process(&shared, &job, handler, token).await,
            Some(Registration::External(spec)) => {
                let summary = shared.supervisor.run(&job, &spec).await;
                external_outcome(&summary)
            }
            None => Outcome::Failed {
                error: format!("no handler is registered for job name {:?} on this server", job.name),
                stack: None,
            },
        }
    };

    let (cancel_requested, fenced) = match shared.running.lock().expect("running lock").remove(&job.id) {
        Some(entry) => (entry.cancel_requested, entry.fenced),
        None => (false, false),
    };
    let outcome = match outcome {
        Outcome::Completed(_) | Outcome::Failed { .. } if cancel_requested && !job.external => Outcome::Cancelled,
        other => other,
    };
    let (events, claimed) = if fenced {
        // Another node rescued the job; its end belongs to that node.
        shared.live.remove(&job.id);
        tracing::info!(job_id = %job.id, attempt = job.attempts, "a job rescued by another node stopped here");
        (Vec::new(), Vec::new())
    } else {
        // The write that records the end also claims the next due job into
        // this slot, which spares the dispatcher a read and a write.
        let claim = next_claim(&shared);
        store_end(&shared, &job, outcome, claim).await
    };
    if job.external {
        shared.supervisor.release(&job.id);
    }
    // The slot is passed on or free before the end is announced, so a
    // client that enqueues its next job on the end event finds it free
    // unless an older job was waiting for it.
    match claimed.into_iter().next() {
        Some(next) => start_claimed(&shared, next, permit),
        None => drop(permit),
    }
    shared.wake.notify_one();
    emit_all(&shared, events).await;
}

/// Returns the claim of one due job for the slot of a job that is ending,
/// unless the dispatcher is stopped or no job name is registered.
fn next_claim(shared: &Shared) -> Option<ClaimRequest> {
    if shared.shutdown.is_cancelled() || !shared.dispatching.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    let names = registered_names(shared);
    (!names.is_empty()).then(|| claim_request(shared, names, 1))
}

async fn run_in_process(shared: &Arc<Shared>, job: &Job, handler: super::handler::Handler, token: CancellationToken) -> Outcome {
    let context = JobContext {
        job_id: job.id.clone(),
        name: job.name.clone(),
        data: job.data.clone(),
        attempt: job.attempts,
        cancel: token.clone(),
        events: shared.events.clone(),
        live: shared.live.clone(),
        log: Arc::new(Mutex::new(shared.logs.writer(&job.id))),
    };
    let run = tokio::spawn(handler(context));
    let abort = run.abort_handle();
    let timeout = job.timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
    let joined = match timeout {
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(joined) => joined,
            Err(_) => {
                token.cancel();
                abort.abort();
                return Outcome::Failed {
                    error: format!("timed out after {} ms", limit.as_millis()),
                    stack: None,
                };
            }
        },
        None => run.await,
    };
    match joined {
        Ok(Ok(result)) => Outcome::Completed(Some(result)),
        Ok(Err(err)) => Outcome::Failed {
            error: err.to_string(),
            stack: Some(format!("{err:?}")),
        },
        Err(join_error) if join_error.is_panic() => Outcome::Failed {
            error: format!("handler panicked: {}", panic_text(join_error.into_panic())),
            stack: None,
        },
        Err(_) => Outcome::Cancelled,
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic payload".into()
    }
}

/// Supervises an external attempt that was running when the server last
/// stopped, until it ends, and records its end.
pub(crate) async fn recover_external(shared: Arc<Shared>, job: Job, adoption: crate::supervisor::Adoption) {
    // A recovered job takes a slot like any running job. When more jobs were
    // running than there are slots now, the extra ones run without one.
    let permit = shared.slots.clone().try_acquire_owned().ok();
    shared.running.lock().expect("running lock").insert(
        job.id.clone(),
        RunningEntry {
            attempt: job.attempts,
            external: true,
            token: CancellationToken::new(),
            cancel_requested: false,
            fenced: false,
        },
    );
    let summary = shared.supervisor.recover(adoption, &job).await;
    if summary.lost.is_some() {
        shared.metrics.count(JobCounter::Lost, &job.name);
        shared.events.emit("job.lost", json!({"jobId": job.id, "name": job.name, "attempt": job.attempts})).await;
    }
    let fenced = shared.running.lock().expect("running lock").remove(&job.id).is_some_and(|entry| entry.fenced);
    if !fenced {
        finish(&shared, &job, external_outcome(&summary)).await;
    }
    shared.supervisor.release(&job.id);
    drop(permit);
    shared.wake.notify_one();
}

/// Returns the registration of an external job, or the defaults when its
/// name is no longer registered.
pub(crate) fn external_of(shared: &Shared, job: &Job) -> super::service::ExternalJob {
    let registry = shared.registry.read().expect("registry lock");
    match registry.get(&job.name) {
        Some(Registration::External(spec)) => (**spec).clone(),
        _ => {
            let defaults = shared.supervisor.settings();
            super::service::ExternalJob {
                name: job.name.clone(),
                config: Default::default(),
                heartbeat_timeout: defaults.default_heartbeat_timeout,
                kill_grace: defaults.kill_grace,
                run_as: None,
            }
        }
    }
}

/// Ends an in-process attempt that was running when the server last stopped.
pub(crate) async fn recover_lost(shared: &Arc<Shared>, job: Job) {
    tracing::warn!(job_id = %job.id, job_name = %job.name, attempt = job.attempts, "job lost: it was running when the server stopped");
    shared.metrics.count(JobCounter::Lost, &job.name);
    shared.events.emit("job.lost", json!({"jobId": job.id, "name": job.name, "attempt": job.attempts})).await;
    let outcome = Outcome::Failed {
        error: "job lost: the server stopped while it was running".into(),
        stack: None,
    };
    finish(shared, &job, outcome).await;
}

/// Stores the end of an attempt and emits its events: `job.completed`,
/// `job.retrying`, `job.failed` or `job.cancelled`.
pub(crate) async fn finish(shared: &Arc<Shared>, job: &Job, outcome: Outcome) {
    let (events, _) = store_end(shared, job, outcome, None).await;
    emit_all(shared, events).await;
}

async fn emit_all(shared: &Shared, events: Vec<(String, Value)>) {
    for (name, data) in events {
        shared.events.emit(name, data).await;
    }
}

/// Stores the end of an attempt and returns the events that announce it,
/// none when another writer changed the job's row meanwhile. With `claim`,
/// the first write also claims due jobs, which are returned to be started.
async fn store_end(shared: &Arc<Shared>, job: &Job, outcome: Outcome, claim: Option<ClaimRequest>) -> (Vec<(String, Value)>, Vec<Job>) {
    let now = now_ms();
    // Until shortly after the final write lands, reads of this attempt
    // still show its latest progress, not the last flushed one.
    let live = shared.live.finish(&job.id, job.attempts);
    let (events, claimed) = store_end_write(shared, job, outcome, claim, live, now).await;
    shared.live.finished(&job.id, job.attempts);
    (events, claimed)
}

/// Writes the end of an attempt for [`store_end`], given the attempt's
/// last live values.
async fn store_end_write(
    shared: &Arc<Shared>,
    job: &Job,
    outcome: Outcome,
    mut claim: Option<ClaimRequest>,
    live: LiveValues,
    now: i64,
) -> (Vec<(String, Value)>, Vec<Job>) {
    let mut record = JobFinish {
        id: job.id.clone(),
        attempt: job.attempts,
        status: JobStatus::Completed,
        result: None,
        error: None,
        stack: None,
        now_ms: now,
        run_at: None,
        progress_percent: live.progress_percent,
        progress_message: live.progress_message.clone(),
        pid: live.pid,
        node_id: Some(shared.settings.node_id.clone()),
    };
    let (id, name, attempt) = (&job.id, &job.name, job.attempts);
    if let Some(started) = job.started_at {
        shared.metrics.observe_duration(name, (now - started).max(0) as f64 / 1000.0);
    }
    let events: Vec<(String, Value)> = match outcome {
        Outcome::Completed(result) => {
            record.result = result.clone();
            shared.metrics.count(JobCounter::Completed, name);
            tracing::info!(job_id = %id, job_name = %name, attempt, "job completed");
            vec![
                ("job.completed".into(), json!({"jobId": id, "name": name, "result": result, "attempt": attempt})),
                (format!("job.{name}.completed"), json!({"jobId": id, "result": result})),
            ]
        }
        Outcome::Cancelled => {
            record.status = JobStatus::Cancelled;
            shared.metrics.count(JobCounter::Cancelled, name);
            tracing::info!(job_id = %id, job_name = %name, attempt, "job cancelled");
            vec![("job.cancelled".into(), json!({"jobId": id, "name": name, "attempt": attempt}))]
        }
        Outcome::Failed { error, stack } => {
            record.error = Some(error.clone());
            record.stack = stack.clone();
            match retry_decision(attempt, job.max_attempts, shared.settings.retry_backoff) {
                RetryDecision::Retry { after } => {
                    let run_at = now + after.as_millis() as i64;
                    record.status = JobStatus::Scheduled;
                    shared.metrics.count(JobCounter::Retried, name);
                    record.run_at = Some(run_at);
                    tracing::info!(job_id = %id, job_name = %name, attempt, error = %error, retry_in_ms = after.as_millis() as u64, "job attempt failed; retrying");
                    vec![(
                        "job.retrying".into(),
                        json!({"jobId": id, "name": name, "error": error, "attempt": attempt, "runAt": to_rfc3339(run_at)}),
                    )]
                }
                RetryDecision::Fail => {
                    record.status = JobStatus::Failed;
                    shared.metrics.count(JobCounter::Failed, name);
                    tracing::info!(job_id = %id, job_name = %name, attempt, error = %error, "job failed");
                    vec![
                        ("job.failed".into(), json!({"jobId": id, "name": name, "error": error, "stack": stack, "attempt": attempt})),
                        (format!("job.{name}.failed"), json!({"jobId": id, "error": error, "stack": stack})),
                    ]
                }
            }
        }
    };

    // A store outage must not lose the end of a job: retry until it is written.
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        let written = match claim.take() {
            Some(claim) => shared.store.job_finish_claim(&record, &claim).await,
            None => shared.store.job_finish(&record).await.map(|finished| (finished, Vec::new())),
        };
        match written {
            Ok((true, claimed)) => {
                if failures > 0 {
                    tracing::info!(job_id = %id, attempt, failures, "recorded the end of the job after the store came back");
                }
                return (events, claimed);
            }
            Ok((false, claimed)) => {
                tracing::warn!(
                    job_id = %id, attempt,
                    "the job's row changed meanwhile (cancelled, or rescued by another node); its end was not recorded"
                );
                return (Vec::new(), claimed);
            }
            Err(err) => {
                shared.metrics.store_error();
                if failures == 0 {
                    tracing::error!(job_id = %id, attempt, error = %err, "recording the end of the job failed; retrying until it is recorded");
                } else {
                    tracing::debug!(job_id = %id, attempt, error = %err, "recording the end of the job failed again");
                }
                failures += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
