//! One conformance suite for every `Store`: SQLite on a temporary file, and
//! PostgreSQL when `BURRO_TEST_POSTGRES_URL` names a server. The test script
//! sets that variable, and each test gets a schema of its own.

use burro::store::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;

/// A store under test and what keeps it alive.
struct Subject {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    Subject {
        store: Arc::new(SqliteStore::open(&url).await.unwrap()),
        _dir: Some(dir),
    }
}

/// Opens a PostgreSQL store in a fresh schema, or returns `None` with a
/// message naming the test when no server is configured. Under CI a missing
/// server is an error, so the suite never passes there without running.
async fn postgres(test: &str) -> Option<Subject> {
    let Ok(url) = std::env::var("BURRO_TEST_POSTGRES_URL") else {
        assert!(std::env::var("CI").is_err(), "{test}: BURRO_TEST_POSTGRES_URL is not set under CI; run ./scripts/test");
        eprintln!("skipped {test}: BURRO_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    admin.close().await;
    let store = PostgresStore::open(&url, 8, Some(&schema)).await.unwrap();
    // Opening again re-runs the migrations, which must be a no-op.
    PostgresStore::open(&url, 2, Some(&schema)).await.unwrap().close().await;
    Some(Subject {
        store: Arc::new(store),
        _dir: None,
    })
}

fn new_job(id: &str, name: &str, status: JobStatus, run_at: i64) -> NewJob {
    NewJob {
        id: id.to_string(),
        name: name.to_string(),
        data: json!({"id": id, "nested": {"list": [1, 2, 3]}, "text": "é \" \\n"}),
        max_attempts: 3,
        created_at: run_at,
        run_at,
        status,
        external: name == "ext",
        timeout_ms: Some(5000),
    }
}

fn claim(names: &[&str], limit: u32, now_ms: i64) -> ClaimRequest {
    ClaimRequest {
        names: names.iter().map(|n| n.to_string()).collect(),
        limit,
        now_ms,
        node_id: "node-a".into(),
        lease_generation: None,
    }
}

async fn insert_get_and_list(store: Arc<dyn Store>) {
    for i in 0..6 {
        let status = if i % 2 == 0 { JobStatus::Pending } else { JobStatus::Scheduled };
        let name = if i < 4 { "resize" } else { "ext" };
        store.job_insert(&new_job(&format!("job-{i}"), name, status, 1000 + i)).await.unwrap();
    }
    let job = store.job_get("job-4").await.unwrap().unwrap();
    assert_eq!(job.name, "ext");
    assert!(job.external);
    assert_eq!(job.data, json!({"id": "job-4", "nested": {"list": [1, 2, 3]}, "text": "é \" \\n"}));
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!(job.attempts, 0);
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.timeout_ms, Some(5000));
    assert!(store.job_get("missing").await.unwrap().is_none());

    let page = store.job_list(&ListQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(page.total, 6);
    let ids: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job-5", "job-4", "job-3", "job-2", "job-1", "job-0"], "newest first");

    let page = store
        .job_list(&ListQuery {
            status: Some(JobStatus::Scheduled),
            name: Some("resize".into()),
            limit: 1,
            offset: 1,
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].id, "job-1");
}

async fn claim_takes_each_job_once(store: Arc<dyn Store>) {
    for i in 0..200 {
        store.job_insert(&new_job(&format!("c-{i:03}"), "resize", JobStatus::Pending, 1000)).await.unwrap();
    }
    let mut claimers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = store.job_claim(&claim(&["resize"], 7, 2000)).await.unwrap();
                if jobs.is_empty() {
                    return mine;
                }
                for job in jobs {
                    assert_eq!(job.status, JobStatus::Running);
                    assert_eq!(job.attempts, 1);
                    assert_eq!(job.node_id.as_deref(), Some("node-a"));
                    mine.push(job.id);
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for claimer in claimers {
        for id in claimer.await.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "job {id} was claimed twice");
        }
    }
    assert_eq!(total, 200);
    assert_eq!(seen.len(), 200);
}

async fn claim_respects_names_and_due_time(store: Arc<dyn Store>) {
    store.job_insert(&new_job("later", "resize", JobStatus::Scheduled, 5000)).await.unwrap();
    store.job_insert(&new_job("other", "unknown-name", JobStatus::Pending, 1000)).await.unwrap();
    store.job_insert(&new_job("now", "resize", JobStatus::Pending, 1000)).await.unwrap();
    assert_eq!(store.job_next_run_at(&["resize".into()]).await.unwrap(), Some(1000));

    let jobs = store.job_claim(&claim(&["resize"], 10, 2000)).await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["now"]);
    assert_eq!(store.job_next_run_at(&["resize".into()]).await.unwrap(), Some(5000));
    let jobs = store.job_claim(&claim(&["resize"], 10, 5000)).await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["later"]);
    assert!(store.job_claim(&claim(&[], 10, 9000)).await.unwrap().is_empty());
}

async fn insert_claim_takes_the_oldest_due_job(store: Arc<dyn Store>) {
    store.job_insert(&new_job("older", "resize", JobStatus::Pending, 1000)).await.unwrap();
    let (inserted, claimed) = store
        .job_insert_claim(&new_job("newer", "resize", JobStatus::Pending, 1500), &claim(&["resize"], 1, 2000))
        .await
        .unwrap();
    assert_eq!(inserted.id, "newer");
    assert_eq!(inserted.status, JobStatus::Pending, "the insert returns the row as inserted");
    assert_eq!(claimed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["older"]);
    assert_eq!(claimed[0].status, JobStatus::Running);
    assert_eq!(claimed[0].attempts, 1);

    // With nothing older waiting, the claim takes the new job itself.
    let (_, claimed) = store
        .job_insert_claim(&new_job("alone", "ext", JobStatus::Pending, 1600), &claim(&["ext"], 1, 2000))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["alone"]);
    assert_eq!(store.job_get("alone").await.unwrap().unwrap().status, JobStatus::Running);

    // A job scheduled for later is stored and not claimed; "newer" is still waiting.
    let (_, claimed) = store
        .job_insert_claim(&new_job("later", "resize", JobStatus::Scheduled, 9000), &claim(&["resize"], 5, 2000))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["newer"]);
    assert_eq!(store.job_get("later").await.unwrap().unwrap().status, JobStatus::Scheduled);

    // A duplicate id fails, and its claim takes nothing.
    store.job_insert(&new_job("waiting", "resize", JobStatus::Pending, 1700)).await.unwrap();
    let duplicate = store.job_insert_claim(&new_job("alone", "resize", JobStatus::Pending, 1800), &claim(&["resize"], 5, 2000)).await;
    assert!(duplicate.is_err(), "a duplicate id must fail: {duplicate:?}");
    assert_eq!(store.job_get("waiting").await.unwrap().unwrap().status, JobStatus::Pending);
}

fn finish(id: &str, attempt: u32, status: JobStatus) -> JobFinish {
    JobFinish {
        id: id.into(),
        attempt,
        status,
        result: None,
        error: None,
        stack: None,
        now_ms: 3000,
        run_at: None,
        progress_percent: None,
        progress_message: None,
        pid: None,
        node_id: None,
    }
}

async fn finish_retry_and_complete(store: Arc<dyn Store>) {
    store.job_insert(&new_job("r", "resize", JobStatus::Pending, 1000)).await.unwrap();
    store.job_claim(&claim(&["resize"], 1, 1000)).await.unwrap();

    let mut retry = finish("r", 1, JobStatus::Scheduled);
    retry.error = Some("boom".into());
    retry.run_at = Some(4000);
    assert!(store.job_finish(&retry).await.unwrap());
    let job = store.job_get("r").await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Scheduled);
    assert_eq!(job.error.as_deref(), Some("boom"));
    assert_eq!(job.run_at, 4000);
    assert_eq!(job.completed_at, None);
    assert!(store.job_claim(&claim(&["resize"], 1, 3999)).await.unwrap().is_empty(), "backoff holds the retry");

    let jobs = store.job_claim(&claim(&["resize"], 1, 4000)).await.unwrap();
    assert_eq!(jobs[0].attempts, 2);
    assert!(!store.job_finish(&finish("r", 1, JobStatus::Completed)).await.unwrap(), "a stale attempt changes nothing");

    let mut done = finish("r", 2, JobStatus::Completed);
    done.result = Some(json!({"ok": [true]}));
    done.progress_percent = Some(100.0);
    assert!(store.job_finish(&done).await.unwrap());
    let job = store.job_get("r").await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result, Some(json!({"ok": [true]})));
    assert_eq!(job.completed_at, Some(3000));
    assert_eq!(job.progress_percent, Some(100.0));
    assert!(!store.job_finish(&done).await.unwrap(), "a finished job stays finished");
}

async fn finish_claim_takes_next_job(store: Arc<dyn Store>) {
    // SQLite claims in the write that records the end. PostgreSQL leaves
    // claims to the dispatcher, which claims for every free slot at once.
    let claims_with_end = !store.is_shared();
    // Returns the ids the store claimed, or, for a store that claims
    // nothing here, claims with `job_claim` so the next steps start alike.
    async fn claimed_ids(store: &Arc<dyn Store>, claims_with_end: bool, claimed: Vec<Job>, now_ms: i64) -> Vec<(String, u32)> {
        let claimed = if claims_with_end {
            claimed
        } else {
            assert!(claimed.is_empty(), "this store leaves claims to the dispatcher: {claimed:?}");
            store.job_claim(&claim(&["resize"], 1, now_ms)).await.unwrap()
        };
        assert!(claimed.iter().all(|job| job.status == JobStatus::Running));
        claimed.into_iter().map(|job| (job.id, job.attempts)).collect()
    }

    store.job_insert(&new_job("first", "resize", JobStatus::Pending, 1000)).await.unwrap();
    store.job_insert(&new_job("second", "resize", JobStatus::Pending, 1100)).await.unwrap();
    store.job_insert(&new_job("later", "resize", JobStatus::Scheduled, 9000)).await.unwrap();
    store.job_claim(&claim(&["resize"], 1, 2000)).await.unwrap();

    let (finished, claimed) = store.job_finish_claim(&finish("first", 1, JobStatus::Completed), &claim(&["resize"], 1, 2000)).await.unwrap();
    assert!(finished);
    assert_eq!(store.job_get("first").await.unwrap().unwrap().status, JobStatus::Completed);
    assert_eq!(claimed_ids(&store, claims_with_end, claimed, 2000).await, [("second".to_string(), 1)]);
    assert_eq!(store.job_get("second").await.unwrap().unwrap().status, JobStatus::Running);

    // A retry due at once is claimed again, in its next attempt.
    let mut retry = finish("second", 1, JobStatus::Scheduled);
    retry.run_at = Some(2000);
    let (finished, claimed) = store.job_finish_claim(&retry, &claim(&["resize"], 1, 2000)).await.unwrap();
    assert!(finished);
    assert_eq!(claimed_ids(&store, claims_with_end, claimed, 2000).await, [("second".to_string(), 2)]);

    // A stale attempt records nothing, and the claim still runs: "later" is due by now.
    let (finished, claimed) = store.job_finish_claim(&finish("first", 1, JobStatus::Failed), &claim(&["resize"], 1, 9000)).await.unwrap();
    assert!(!finished, "a finished attempt cannot end again");
    assert_eq!(store.job_get("first").await.unwrap().unwrap().status, JobStatus::Completed);
    assert_eq!(claimed_ids(&store, claims_with_end, claimed, 9000).await, [("later".to_string(), 1)]);

    // Nothing due: the end is recorded and nothing is claimed.
    let (finished, claimed) = store.job_finish_claim(&finish("later", 1, JobStatus::Completed), &claim(&["resize"], 1, 9000)).await.unwrap();
    assert!(finished);
    assert!(claimed.is_empty());
}

async fn cancel_only_waiting_jobs(store: Arc<dyn Store>) {
    store.job_insert(&new_job("w", "resize", JobStatus::Scheduled, 9000)).await.unwrap();
    store.job_insert(&new_job("run", "ext", JobStatus::Pending, 1000)).await.unwrap();
    store.job_claim(&claim(&["ext"], 1, 1000)).await.unwrap();
    match store.job_cancel_waiting("w", 2000).await.unwrap() {
        CancelWaiting::Cancelled(job) => {
            assert_eq!(job.status, JobStatus::Cancelled);
            assert_eq!(job.completed_at, Some(2000));
        }
        other => panic!("expected cancelled, got {other:?}"),
    }
    assert!(matches!(store.job_cancel_waiting("run", 2000).await.unwrap(), CancelWaiting::NotWaiting(job) if job.status == JobStatus::Running));
    assert!(matches!(store.job_cancel_waiting("none", 2000).await.unwrap(), CancelWaiting::NotFound));
}

async fn live_updates_and_running_jobs(store: Arc<dyn Store>) {
    store.job_insert(&new_job("l", "ext", JobStatus::Pending, 1000)).await.unwrap();
    store.job_insert(&new_job("done", "ext", JobStatus::Pending, 1000)).await.unwrap();
    store.job_claim(&claim(&["ext"], 2, 1000)).await.unwrap();
    let mut end = finish("done", 1, JobStatus::Completed);
    end.pid = Some(77);
    store.job_finish(&end).await.unwrap();
    assert_eq!(store.job_get("done").await.unwrap().unwrap().pid, Some(77), "the end writes the pid the flush had not");
    let updates = vec![
        LiveUpdate {
            id: "l".into(),
            progress_percent: Some(42.5),
            progress_message: Some("half".into()),
            last_heartbeat: Some(1500),
            process_state: Some(ProcessState::Running),
            pid: Some(5151),
        },
        LiveUpdate {
            id: "done".into(),
            progress_percent: Some(1.0),
            progress_message: None,
            last_heartbeat: None,
            process_state: None,
            pid: None,
        },
    ];
    store
        .jobs_live_flush(Some("node-a"), &updates)
        .await
        .unwrap();
    let other_node = vec![LiveUpdate {
        id: "l".into(),
        progress_percent: Some(99.0),
        progress_message: None,
        last_heartbeat: None,
        process_state: None,
        pid: None,
    }];
    store
        .jobs_live_flush(Some("node-b"), &other_node)
        .await
        .unwrap();
    let job = store.job_get("l").await.unwrap().unwrap();
    assert_eq!(
        job.progress_percent,
        Some(42.5),
        "node-b's update is ignored: node-a owns the job"
    );
    assert_eq!(job.progress_message.as_deref(), Some("half"));
    assert_eq!(job.last_heartbeat, Some(1500));
    assert_eq!(job.pid, Some(5151), "the flush writes the pid");
    assert_eq!(job.process_state, Some(ProcessState::Running));
    assert_eq!(store.job_get("done").await.unwrap().unwrap().progress_percent, None, "finished jobs are not updated");

    let running = store.jobs_running("node-a").await.unwrap();
    assert_eq!(running.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["l"]);
    assert!(store.jobs_running("node-b").await.unwrap().is_empty());

    assert!(store.job_requeue("l", 1).await.unwrap());
    let job = store.job_get("l").await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!(job.attempts, 0);
}

async fn live_flush_of_many_jobs(store: Arc<dyn Store>) {
    let ids: Vec<String> = (0..300).map(|i| format!("many-{i:03}")).collect();
    for id in &ids {
        store.job_insert(&new_job(id, "ext", JobStatus::Pending, 1000)).await.unwrap();
    }
    assert_eq!(store.job_claim(&claim(&["ext"], 300, 1000)).await.unwrap().len(), 300);
    let first: Vec<LiveUpdate> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| LiveUpdate {
            id: id.clone(),
            progress_percent: Some(i as f64 / 3.0),
            progress_message: Some(format!("step \"{i}\" of 300, é ✓ {{\"json\": [1]}}")),
            last_heartbeat: Some(10_000 + i as i64),
            process_state: Some(ProcessState::Running),
            pid: Some(20_000 + i as i64),
        })
        .collect();
    store.jobs_live_flush(None, &first).await.unwrap();
    // A heartbeat-only update keeps the progress written before it.
    let heartbeats: Vec<LiveUpdate> = ids
        .iter()
        .map(|id| LiveUpdate {
            id: id.clone(),
            progress_percent: None,
            progress_message: None,
            last_heartbeat: Some(20_000),
            process_state: None,
            pid: None,
        })
        .collect();
    store.jobs_live_flush(None, &heartbeats).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let job = store.job_get(id).await.unwrap().unwrap();
        assert_eq!(job.progress_percent, Some(i as f64 / 3.0), "percent of {id}");
        assert_eq!(job.progress_message, Some(format!("step \"{i}\" of 300, é ✓ {{\"json\": [1]}}")), "message of {id}");
        assert_eq!(job.last_heartbeat, Some(20_000), "heartbeat of {id}");
        assert_eq!(job.process_state, Some(ProcessState::Running), "state of {id}");
        assert_eq!(job.pid, Some(20_000 + i as i64), "pid of {id}");
    }
    let whole = vec![LiveUpdate {
        id: ids[0].clone(),
        progress_percent: Some(50.0),
        progress_message: None,
        last_heartbeat: None,
        process_state: Some(ProcessState::Reconnecting),
        pid: None,
    }];
    store.jobs_live_flush(None, &whole).await.unwrap();
    let job = store.job_get(&ids[0]).await.unwrap().unwrap();
    assert_eq!(job.progress_percent, Some(50.0));
    assert_eq!(job.process_state, Some(ProcessState::Reconnecting));
}

async fn retry_counts_and_purge(store: Arc<dyn Store>) {
    store.job_insert(&new_job("f", "resize", JobStatus::Pending, 1000)).await.unwrap();
    store.job_insert(&new_job("p", "resize", JobStatus::Pending, 1000)).await.unwrap();
    store.job_claim(&claim(&["resize"], 1, 1000)).await.unwrap();
    let mut failed = finish("f", 1, JobStatus::Failed);
    failed.error = Some("bad".into());
    store.job_finish(&failed).await.unwrap();

    let counts = store.job_counts().await.unwrap();
    assert!(counts.contains(&JobCount { name: "resize".into(), status: JobStatus::Failed, count: 1 }), "{counts:?}");
    assert!(counts.contains(&JobCount { name: "resize".into(), status: JobStatus::Pending, count: 1 }), "{counts:?}");

    match store.job_retry("f", 5000).await.unwrap() {
        RetryRequest::Retried(job) => {
            assert_eq!(job.status, JobStatus::Pending);
            assert_eq!(job.max_attempts, 2);
            assert_eq!(job.run_at, 5000);
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(matches!(store.job_retry("p", 5000).await.unwrap(), RetryRequest::NotRetryable(_)));
    assert!(matches!(store.job_retry("none", 5000).await.unwrap(), RetryRequest::NotFound));

    let jobs = store.job_claim(&claim(&["resize"], 2, 6000)).await.unwrap();
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        store.job_finish(&finish(&job.id, job.attempts, JobStatus::Completed)).await.unwrap();
    }
    assert!(store.jobs_purge(&[JobStatus::Completed], 3000, 10).await.unwrap().is_empty(), "completed at 3000 is not before 3000");
    assert!(store.jobs_purge(&[JobStatus::Running, JobStatus::Pending], 9999, 10).await.unwrap().is_empty());
    let mut purged = store.jobs_purge(&[JobStatus::Completed], 3001, 1).await.unwrap();
    purged.extend(store.jobs_purge(&[JobStatus::Completed], 3001, 10).await.unwrap());
    purged.sort();
    assert_eq!(purged, ["f", "p"]);
    assert_eq!(store.job_list(&ListQuery { limit: 10, ..Default::default() }).await.unwrap().total, 0);
}

async fn keyset_pages_follow_the_listing_order(store: Arc<dyn Store>) {
    // Equal creation times are ordered by id, so the cursor is exact even
    // when many jobs share a millisecond.
    for i in 0..25 {
        store
            .job_insert(&new_job(
                &format!("k-{i:02}"),
                "resize",
                JobStatus::Pending,
                1000 + i / 10,
            ))
            .await
            .unwrap();
    }
    let everything = store
        .job_list(&ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let expected: Vec<String> = everything.jobs.iter().map(|j| j.id.clone()).collect();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .job_list(&ListQuery {
                limit: 7,
                after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.total, 25, "the total ignores the cursor");
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        if page.jobs.len() < 7 {
            break;
        }
        after = page.jobs.last().map(|j| j.id.clone());
    }
    assert_eq!(seen, expected);
    let filtered = store
        .job_list(&ListQuery {
            name: Some("resize".into()),
            limit: 3,
            after: Some("k-24".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        filtered
            .jobs
            .iter()
            .map(|j| j.id.as_str())
            .collect::<Vec<_>>(),
        ["k-23", "k-22", "k-21"]
    );
}

async fn writes_of_another_node_change_nothing(store: Arc<dyn Store>) {
    store
        .job_insert(&new_job("owned", "ext", JobStatus::Pending, 1000))
        .await
        .unwrap();
    store.job_claim(&claim(&["ext"], 1, 1000)).await.unwrap();
    let mut foreign = finish("owned", 1, JobStatus::Completed);
    foreign.node_id = Some("node-b".into());
    assert!(
        !store.job_finish(&foreign).await.unwrap(),
        "node-b does not own the job"
    );
    let claimed = store.job_get("owned").await.unwrap().unwrap();
    let foreign_flush = vec![LiveUpdate {
        id: "owned".into(),
        progress_percent: None,
        progress_message: None,
        last_heartbeat: None,
        process_state: Some(ProcessState::Running),
        pid: Some(7),
    }];
    store.jobs_live_flush(Some("node-b"), &foreign_flush).await.unwrap();
    let job = store.job_get("owned").await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.pid, None);
    assert_eq!(job.process_state, claimed.process_state);
    let mut own = finish("owned", 1, JobStatus::Completed);
    own.node_id = Some("node-a".into());
    assert!(store.job_finish(&own).await.unwrap());
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::sqlite().await;
                    super::$case(subject.store.clone()).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(subject) = super::postgres(concat!("postgres_store::", stringify!($case))).await else { return };
                    super::$case(subject.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    insert_get_and_list,
    claim_takes_each_job_once,
    claim_respects_names_and_due_time,
    insert_claim_takes_the_oldest_due_job,
    finish_retry_and_complete,
    finish_claim_takes_next_job,
    cancel_only_waiting_jobs,
    live_updates_and_running_jobs,
    live_flush_of_many_jobs,
    retry_counts_and_purge,
    keyset_pages_follow_the_listing_order,
    writes_of_another_node_change_nothing,
);
