//! Claims on PostgreSQL that look up due jobs one name at a time: due
//! order, duplicate names, and claims that run at the same time.

mod common;

use burro::store::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;

fn job(id: &str, name: &str, status: JobStatus, run_at: i64) -> NewJob {
    NewJob {
        id: id.to_string(),
        name: name.to_string(),
        data: json!({}),
        max_attempts: 3,
        created_at: run_at,
        run_at,
        status,
        external: false,
        timeout_ms: None,
    }
}

fn request(names: &[&str], limit: u32, now_ms: i64, node: &str) -> ClaimRequest {
    ClaimRequest {
        names: names.iter().map(|n| n.to_string()).collect(),
        limit,
        now_ms,
        node_id: node.into(),
        lease_generation: None,
    }
}

fn ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

/// Opens `count` more stores on the schema at `url`, each standing for a
/// node with a pool of `connections`.
async fn open_nodes(url: &str, count: usize, connections: u32) -> Vec<Arc<PostgresStore>> {
    let mut stores = Vec::new();
    for _ in 0..count {
        stores.push(Arc::new(PostgresStore::open(url, connections, None).await.unwrap()));
    }
    stores
}

async fn open(test: &str) -> Option<(String, PostgresStore)> {
    let url = common::schema_url(test).await?;
    let store = PostgresStore::open(&url, 8, None).await.unwrap();
    Some((url, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_fill_the_limit() {
    let Some((_url, store)) = open("duplicate_names_fill_the_limit").await else { return };
    for i in 1..=3 {
        store.job_insert(&job(&format!("a{i}"), "a", JobStatus::Pending, i)).await.unwrap();
    }
    let claimed = store.job_claim(&request(&["a", "a"], 2, 100, "n")).await.unwrap();
    assert_eq!(ids(&claimed), ["a1", "a2"], "two free slots, three due jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_order_future_and_next_run() {
    let Some((_url, store)) = open("due_order_future_and_next_run").await else { return };
    store.job_insert(&job("b-x", "b", JobStatus::Pending, 10)).await.unwrap();
    store.job_insert(&job("a-y", "a", JobStatus::Scheduled, 10)).await.unwrap();
    store.job_insert(&job("c-z", "c", JobStatus::Scheduled, 5)).await.unwrap();
    store.job_insert(&job("a-w", "a", JobStatus::Pending, 20)).await.unwrap();
    store.job_insert(&job("c-f", "c", JobStatus::Scheduled, 1000)).await.unwrap();
    store.job_insert(&job("a-f", "a", JobStatus::Scheduled, 900)).await.unwrap();
    store.job_insert(&job("d-done", "d", JobStatus::Completed, 1)).await.unwrap();
    let all = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(store.job_next_run_at(&all(&["a", "b", "c"])).await.unwrap(), Some(5));
    assert_eq!(store.job_next_run_at(&all(&["b", "nothing"])).await.unwrap(), Some(10));
    assert_eq!(store.job_next_run_at(&all(&["nothing"])).await.unwrap(), None);
    assert_eq!(store.job_next_run_at(&all(&["d"])).await.unwrap(), None);
    assert_eq!(store.job_next_run_at(&[]).await.unwrap(), None);
    assert!(store.job_claim(&request(&[], 5, 100, "n")).await.unwrap().is_empty());
    assert!(store.job_claim(&request(&["nothing"], 5, 100, "n")).await.unwrap().is_empty());
    assert!(store.job_claim(&request(&["a"], 0, 100, "n")).await.unwrap().is_empty());
    let first = store.job_claim(&request(&["nothing", "a", "b", "c"], 3, 100, "n")).await.unwrap();
    assert_eq!(ids(&first), ["c-z", "a-y", "b-x"]);
    let second = store.job_claim(&request(&["c", "b", "a"], 10, 100, "n")).await.unwrap();
    assert_eq!(ids(&second), ["a-w"]);
    assert_eq!(store.job_next_run_at(&all(&["a", "b", "c"])).await.unwrap(), Some(900));
    let third = store.job_claim(&request(&["c", "a"], 10, 1000, "n")).await.unwrap();
    assert_eq!(ids(&third), ["a-f", "c-f"]);
    assert_eq!(store.job_next_run_at(&all(&["a", "b", "c"])).await.unwrap(), None);
}

/// Several stores (as several nodes) claim concurrently with random name
/// subsets and limits: no claim returns more than its limit, no job is
/// claimed twice, every due job is claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_nodes_claim_each_job_once() {
    let Some((url, store)) = open("concurrent_nodes_claim_each_job_once").await else { return };
    let names = ["n0", "n1", "n2", "n3", "n4"];
    let total = 3000;
    let mut rows = Vec::new();
    for i in 0..total {
        rows.push(format!("('j{i:05}', '{}', '{{}}', '{}', 0, 3, {i}, {})", names[i % 5], if i % 2 == 0 { "pending" } else { "scheduled" }, (i * 7919) % 500));
    }
    sqlx::query(&format!(
        "INSERT INTO jobs (id, name, data, status, attempts, max_attempts, created_at, run_at) VALUES {}",
        rows.join(",")
    ))
    .execute(store.pool())
    .await
    .unwrap();

    let stores = open_nodes(&url, 4, 4).await;
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let store = stores[t % 4].clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut empty_rounds = 0;
            // A linear congruential generator picks each claim's limit and names.
            let mut random = t;
            while empty_rounds < 30 {
                random = random.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let limit = (random >> 33) as u32 % 8 + 1;
                let subset: Vec<&str> = names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (random >> (40 + i)) & 1 == 1 || *i == t % 5)
                    .map(|(_, name)| *name)
                    .collect();

                let claimed = store.job_claim(&request(&subset, limit, 1000, &format!("node{}", t % 4))).await.unwrap();
                assert!(claimed.len() <= limit as usize, "claim of limit {limit} returned {}", claimed.len());
                for pair in claimed.windows(2) {
                    assert!((pair[0].run_at, &pair[0].id) <= (pair[1].run_at, &pair[1].id), "due order");
                }
                for job in &claimed {
                    assert!(subset.contains(&job.name.as_str()), "{} is not among {subset:?}", job.name);
                }
                if claimed.is_empty() {
                    empty_rounds += 1;
                } else {
                    empty_rounds = 0;
                }
                mine.extend(ids(&claimed));
            }
            mine
        }));
    }

    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(seen.insert(id.clone()), "job {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), total);
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'running' AND attempts = 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(running as usize, total);
}

/// A claim in flight with two names and limit 1 locks only the job it
/// takes, so a second claimer at that moment takes the due job of the
/// other name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_claim_leaves_other_jobs_claimable() {
    let Some((_url, store)) = open("open_claim_leaves_other_jobs_claimable").await else { return };
    store.job_insert(&job("a1", "a", JobStatus::Pending, 1)).await.unwrap();
    store.job_insert(&job("b1", "b", JobStatus::Pending, 2)).await.unwrap();
    let claim_sql = claim_sql();
    let mut first = store.pool().begin().await.unwrap();
    let first_claimed = sqlx::query(claim_sql)
        .bind(100i64)
        .bind("node-1")
        .bind(vec!["a".to_string(), "b".to_string()])
        .bind(1i64)
        .bind(None::<i64>)
        .bind(65i64)
        .fetch_all(&mut *first)
        .await
        .unwrap();
    assert_eq!(first_claimed.len(), 1, "the first claimer takes a1");
    let second = store.job_claim(&request(&["a", "b"], 1, 100, "node-2")).await.unwrap();
    first.commit().await.unwrap();
    let waiting: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE status IN ('pending', 'scheduled')")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(ids(&second), ["b1"], "second claimer got nothing while {waiting:?} stayed waiting");
}

/// Returns the claim statement of the store under test.
fn claim_sql() -> &'static str {
    PostgresStore::due_statements()[0].1
}

/// Limit-1 claims from four stores while jobs are inserted and others become
/// due: every claim returns at most one job, each job is claimed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_one_claims_with_inserts() {
    let Some((url, store)) = open("limit_one_claims_with_inserts").await else { return };
    let store = Arc::new(store);
    let names = ["n0", "n1", "n2"];
    let total = 1500usize;
    let start = std::time::Instant::now();
    let now = move || 1_000 + start.elapsed().as_millis() as i64;
    let inserter = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..total {
                let run_at = now() + (i % 4) as i64 * 5;
                let status = if i % 4 == 0 { JobStatus::Pending } else { JobStatus::Scheduled };
                store.job_insert(&job(&format!("j{i:05}"), names[i % 3], status, run_at)).await.unwrap();
            }
        })
    };

    let stores = open_nodes(&url, 4, 3).await;
    let mut tasks = Vec::new();
    for t in 0..12usize {
        let store = stores[t % 4].clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                let subset: &[&str] = match t % 3 {
                    0 => &["n0", "n1", "n2"],
                    1 => &["n2", "n0"],
                    _ => &["n1", "n2"],
                };
                let claimed = store.job_claim(&request(subset, 1, now(), "node")).await.unwrap();
                assert!(claimed.len() <= 1, "limit 1 returned {}", claimed.len());
                mine.extend(ids(&claimed));

                // Stops once every job is inserted and claimed.
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'running'")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
                let inserted: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(store.pool()).await.unwrap();
                if left == 0 && inserted as usize == total {
                    break;
                }
            }
            mine
        }));
    }
    inserter.await.unwrap();

    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(seen.insert(id.clone()), "job {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_duplicate_names_fill_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("jobs.db").display())).await.unwrap();
    for i in 1..=3 {
        store.job_insert(&job(&format!("a{i}"), "a", JobStatus::Pending, i)).await.unwrap();
    }
    let claimed = store.job_claim(&request(&["a", "a"], 2, 100, "n")).await.unwrap();
    assert_eq!(ids(&claimed), ["a1", "a2"]);
}
