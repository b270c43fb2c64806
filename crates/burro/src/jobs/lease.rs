//! Node leases on a shared store, the rescue of dead nodes' jobs, and
//! fencing.
//!
//! Each node renews its lease every third of `lease_ttl`; the database
//! judges expiry with its own clock. After a renewal, the node rescues the
//! running jobs of nodes whose lease has been expired for `rescue_after`:
//! each such job emits `job.lost` and is retried or failed according to its
//! attempts. A node that finds its own lease taken (its jobs were rescued
//! while it could not renew) takes a new one and stops the jobs it no
//! longer owns, without recording their end.

use super::dispatch::finish;
use super::outcome::Outcome;
use super::service::Shared;
use crate::metrics::JobCounter;
use crate::store::{LeaseRenewal, RescuedJob, StoreError};
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Delay between attempts while the lease cannot be renewed.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Takes this node's lease. Retries until a store call succeeds or the
/// service stops, so that no job is claimed without a lease.
pub(crate) async fn acquire(shared: &Arc<Shared>) -> bool {
    let mut failing = false;
    loop {
        match shared
            .store
            .node_lease_acquire(&shared.settings.node_id, shared.settings.lease_ttl)
            .await
        {
            Ok(generation) => {
                shared.lease_generation.store(generation, Ordering::SeqCst);
                if failing || generation > 1 {
                    tracing::info!(node_id = %shared.settings.node_id, generation, "took the node lease");
                }
                return true;
            }
            Err(err) => {
                if !failing {
                    tracing::error!(error = %err, "taking the node lease failed; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                    _ = shared.shutdown.cancelled() => return false,
                }
            }
        }
    }
}

/// Renews the lease and rescues dead nodes until the service stops.
pub(crate) async fn keeper(shared: Arc<Shared>) {
    let interval = (shared.settings.lease_ttl / 3).max(Duration::from_millis(100));
    let mut failing = false;
    loop {
        let delay = if failing {
            interval.min(RETRY_DELAY)
        } else {
            interval
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let generation = shared.lease_generation.load(Ordering::SeqCst);
        // A renewal that waits for a connection longer than the interval
        // counts as failed, so that an outage is noticed as one, even when
        // the wait ends well after the database is back.
        let renewal = tokio::time::timeout(
            interval,
            shared.store.node_lease_renew(
                &shared.settings.node_id,
                generation,
                shared.settings.lease_ttl,
                failing,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(StoreError::Timeout(interval)));
        match renewal {
            Ok(LeaseRenewal::Renewed) => {
                if failing {
                    tracing::info!(node_id = %shared.settings.node_id, "renewing the node lease works again");
                    failing = false;
                }
            }
            Ok(LeaseRenewal::Lost) => {
                tracing::warn!(
                    node_id = %shared.settings.node_id,
                    "this node's lease was taken: other nodes rescued its jobs while it could not renew; stopping the jobs it no longer owns"
                );
                failing = false;
                if !acquire(&shared).await {
                    return;
                }
                stop_unowned(&shared).await;
                shared.wake.notify_one();
                continue;
            }
            Err(err) => {
                if !failing {
                    shared.metrics.store_error();
                    tracing::error!(error = %err, "renewing the node lease failed; retrying; running jobs go on");
                    failing = true;
                }
                continue;
            }
        }
        match shared
            .store
            .nodes_rescue(&shared.settings.node_id, shared.settings.rescue_after)
            .await
        {
            Ok(rescued) => {
                for job in rescued {
                    tokio::spawn(rescue(shared.clone(), job));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "looking for the jobs of dead nodes failed; trying again at the next renewal")
            }
        }
    }
}

/// Ends the attempt of a job whose node stopped renewing its lease.
async fn rescue(shared: Arc<Shared>, rescued: RescuedJob) {
    let RescuedJob { job, from_node } = rescued;
    tracing::warn!(
        job_id = %job.id, job_name = %job.name, attempt = job.attempts, node_id = %from_node,
        "job lost: its node stopped renewing its lease; rescuing it"
    );
    shared.metrics.count(JobCounter::Lost, &job.name);
    shared
        .events
        .emit(
            "job.lost",
            json!({"jobId": job.id, "name": job.name, "attempt": job.attempts, "node": from_node}),
        )
        .await;
    let outcome = Outcome::Failed {
        error: format!(
            "job lost: node {from_node} stopped renewing its lease while the job was running"
        ),
        stack: None,
    };
    finish(&shared, &job, outcome).await;
    shared.wake.notify_one();
}

/// Stops the local jobs whose rows this node no longer owns.
async fn stop_unowned(shared: &Arc<Shared>) {
    // Jobs claimed after this snapshot were claimed under the new lease and
    // are left alone. A job of the snapshot that is still in the local table
    // after the store is read has not recorded its end, so if the store does
    // not list it as this node's, another node took it.
    let before: HashSet<(String, u32)> =
        shared.running.lock().expect("running lock").iter().map(|(id, entry)| (id.clone(), entry.attempt)).collect();
    let owned: HashSet<(String, u32)> = loop {
        match shared.store.jobs_running(&shared.settings.node_id).await {
            Ok(jobs) => break jobs.into_iter().map(|job| (job.id, job.attempts)).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "reading the jobs this node owns failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
            }
        }
    };
    let mut fenced = Vec::new();
    {
        let mut running = shared.running.lock().expect("running lock");
        for (id, entry) in running.iter_mut() {
            let key = (id.clone(), entry.attempt);
            if before.contains(&key) && !owned.contains(&key) {
                entry.fenced = true;
                entry.token.cancel();
                fenced.push((id.clone(), entry.external));
            }
        }
    }
    for (id, external) in fenced {
        tracing::warn!(job_id = %id, "stopping a job that another node rescued; its end here is not recorded");
        if external {
            shared.supervisor.fence(&id);
        }
    }
}
