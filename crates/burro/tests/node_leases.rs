//! Node leases on PostgreSQL at the store level: expiry by the database
//! clock, rescue of a dead node's running jobs, fencing of the node that
//! comes back, the guard that keeps an outage from causing a rescue, and
//! job logs kept in the database.

mod common;

use burro::store::*;
use serde_json::json;
use std::time::Duration;

async fn store(test: &str) -> Option<PostgresStore> {
    let url = common::schema_url(test).await?;
    Some(PostgresStore::open(&url, 4, None).await.unwrap())
}

fn job(id: &str) -> NewJob {
    NewJob {
        id: id.into(),
        name: "ext".into(),
        data: json!({}),
        max_attempts: 3,
        created_at: 1000,
        run_at: 1000,
        status: JobStatus::Pending,
        external: true,
        timeout_ms: None,
    }
}

fn claim(node: &str, generation: i64) -> ClaimRequest {
    ClaimRequest {
        names: vec!["ext".into()],
        limit: 10,
        now_ms: burro::clock::now_ms(),
        node_id: node.into(),
        lease_generation: Some(generation),
    }
}

const SHORT: Duration = Duration::from_millis(500);
const LONG: Duration = Duration::from_secs(60);
const RESCUE_AFTER: Duration = Duration::from_millis(400);

#[tokio::test]
async fn an_expired_node_is_rescued_once_and_fenced() {
    let Some(store) = store("an_expired_node_is_rescued_once_and_fenced").await else {
        return;
    };
    let generation_a = store.node_lease_acquire("a", SHORT).await.unwrap();
    assert_eq!(generation_a, 1);
    store.job_insert(&job("j1")).await.unwrap();
    store.job_insert(&job("j2")).await.unwrap();
    assert_eq!(
        store
            .job_claim(&claim("a", generation_a))
            .await
            .unwrap()
            .len(),
        2
    );

    let generation_b = store.node_lease_acquire("b", LONG).await.unwrap();
    let generation_c = store.node_lease_acquire("c", LONG).await.unwrap();
    assert!(
        store
            .nodes_rescue("b", RESCUE_AFTER)
            .await
            .unwrap()
            .is_empty(),
        "a's lease is still valid"
    );

    tokio::time::sleep(SHORT + RESCUE_AFTER + Duration::from_millis(200)).await;
    // b and c became healthy when they took their leases, long enough ago.
    let (from_b, from_c) = tokio::join!(
        store.nodes_rescue("b", RESCUE_AFTER),
        store.nodes_rescue("c", RESCUE_AFTER)
    );
    let (from_b, from_c) = (from_b.unwrap(), from_c.unwrap());
    let mut rescued: Vec<&RescuedJob> = from_b.iter().chain(&from_c).collect();
    rescued.sort_by(|x, y| x.job.id.cmp(&y.job.id));
    assert_eq!(
        rescued
            .iter()
            .map(|r| r.job.id.as_str())
            .collect::<Vec<_>>(),
        ["j1", "j2"],
        "each job is rescued exactly once"
    );
    assert!(
        from_b.is_empty() || from_c.is_empty(),
        "one rescuer takes all of a's jobs"
    );
    for rescued in &rescued {
        assert_eq!(rescued.from_node, "a");
        assert_eq!(rescued.job.status, JobStatus::Running);
        assert!(matches!(
            rescued.job.node_id.as_deref(),
            Some("b") | Some("c")
        ));
    }

    // a comes back: its renewal fails, it cannot claim or record an end.
    assert_eq!(
        store
            .node_lease_renew("a", generation_a, SHORT, false)
            .await
            .unwrap(),
        LeaseRenewal::Lost
    );
    store.job_insert(&job("j3")).await.unwrap();
    assert!(
        store
            .job_claim(&claim("a", generation_a))
            .await
            .unwrap()
            .is_empty(),
        "a fenced node claims nothing"
    );
    let finish = JobFinish {
        id: "j1".into(),
        attempt: 1,
        status: JobStatus::Completed,
        result: None,
        error: None,
        stack: None,
        now_ms: 5000,
        run_at: None,
        progress_percent: None,
        progress_message: None,
        pid: None,
        node_id: Some("a".into()),
    };
    assert!(
        !store.job_finish(&finish).await.unwrap(),
        "a no longer owns j1"
    );
    assert!(store.jobs_running("a").await.unwrap().is_empty());

    let generation_a2 = store.node_lease_acquire("a", LONG).await.unwrap();
    assert_eq!(generation_a2, generation_a + 1);
    assert_eq!(
        store
            .job_claim(&claim("a", generation_a2))
            .await
            .unwrap()
            .len(),
        1,
        "with a new lease a claims again"
    );

    let nodes = store.nodes_list().await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(nodes.iter().all(|n| n.alive && !n.fenced), "{nodes:?}");
    assert_eq!(nodes[0].running, 1);
    assert_eq!(nodes[1].running + nodes[2].running, 2);
    let _ = (generation_b, generation_c);
}

#[tokio::test]
async fn after_an_outage_every_node_renews_before_any_rescue() {
    let Some(store) = store("after_an_outage_every_node_renews_before_any_rescue").await else {
        return;
    };
    let generation_a = store.node_lease_acquire("a", SHORT).await.unwrap();
    let generation_b = store.node_lease_acquire("b", SHORT).await.unwrap();
    store.job_insert(&job("j")).await.unwrap();
    assert_eq!(
        store
            .job_claim(&claim("b", generation_b))
            .await
            .unwrap()
            .len(),
        1
    );

    // Both leases run out while the nodes cannot reach the database.
    tokio::time::sleep(SHORT + RESCUE_AFTER + Duration::from_millis(200)).await;
    // a is back first. Its renewal follows a failure, so it counts as healthy
    // only from now and rescues no job yet, though b's lease looks dead.
    assert_eq!(
        store
            .node_lease_renew("a", generation_a, LONG, true)
            .await
            .unwrap(),
        LeaseRenewal::Renewed
    );
    assert!(
        store
            .nodes_rescue("a", RESCUE_AFTER)
            .await
            .unwrap()
            .is_empty(),
        "a has not been healthy for rescue_after"
    );
    // b renews within rescue_after, as a live node does.
    assert_eq!(
        store
            .node_lease_renew("b", generation_b, LONG, true)
            .await
            .unwrap(),
        LeaseRenewal::Renewed
    );
    tokio::time::sleep(RESCUE_AFTER + Duration::from_millis(200)).await;
    assert!(
        store
            .nodes_rescue("a", RESCUE_AFTER)
            .await
            .unwrap()
            .is_empty(),
        "b is alive again"
    );
    assert_eq!(
        store.jobs_running("b").await.unwrap().len(),
        1,
        "b keeps its job"
    );
}

#[tokio::test]
async fn job_logs_keep_the_newest_lines_per_job() {
    let Some(store) = store("job_logs_keep_the_newest_lines_per_job").await else {
        return;
    };
    let mut lines = Vec::new();
    for i in 0..30 {
        lines.push(JobLogLine {
            job_id: "x".into(),
            line: format!("{{\"n\":{i}}}"),
        });
        if i < 3 {
            lines.push(JobLogLine {
                job_id: "y".into(),
                line: format!("{{\"y\":{i}}}"),
            });
        }
    }
    store.job_logs_append(&lines[..20], 10).await.unwrap();
    store.job_logs_append(&lines[20..], 10).await.unwrap();
    let kept = store.job_logs_read("x", None).await.unwrap();
    let expected: Vec<String> = (20..30).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(kept, expected, "the newest 10, oldest first");
    assert_eq!(
        store.job_logs_read("x", Some(2)).await.unwrap(),
        expected[8..]
    );
    assert_eq!(
        store.job_logs_read("y", None).await.unwrap().len(),
        3,
        "each job has its own bound"
    );
    assert!(store
        .job_logs_read("missing", None)
        .await
        .unwrap()
        .is_empty());
}
