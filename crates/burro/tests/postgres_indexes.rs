//! With a million finished jobs in PostgreSQL, claims and listings use the
//! indexes instead of scanning the table. Checked through the planner's
//! `EXPLAIN` output, which does not depend on the machine's speed.

mod common;

use burro::store::{PostgresStore, Store};
use sqlx::PgPool;

async fn plan(pool: &PgPool, sql: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}")).fetch_all(pool).await.unwrap();
    rows.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_list_use_indexes_with_a_million_finished_jobs() {
    let Some(url) = common::schema_url("claim_and_list_use_indexes_with_a_million_finished_jobs").await else { return };
    let store = PostgresStore::open(&url, 2, None).await.unwrap();
    let pool = store.pool().clone();
    sqlx::query(
        "INSERT INTO jobs (id, name, data, status, attempts, max_attempts, created_at, run_at, completed_at) \
         SELECT 'done-' || n, 'resize', '{}', CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'completed' END, 1, 1, n, n, n + 5 \
         FROM generate_series(1, 1000000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, name, data, status, attempts, max_attempts, created_at, run_at) \
         SELECT 'wait-' || n, 'resize', '{}', 'pending', 0, 1, 2000000 + n, 2000000 + n FROM generate_series(1, 50) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();

    let claim = plan(
        &pool,
        "SELECT id FROM jobs WHERE status IN ('pending', 'scheduled') AND run_at <= 9999999999 \
         AND name = ANY('{resize}') ORDER BY run_at, id LIMIT 10 FOR UPDATE SKIP LOCKED",
    )
    .await;
    assert!(claim.contains("jobs_waiting"), "the claim reads the partial index of waiting jobs:\n{claim}");
    assert!(!claim.contains("Seq Scan"), "{claim}");

    let next = plan(&pool, "SELECT MIN(run_at) FROM jobs WHERE status IN ('pending', 'scheduled') AND name = ANY('{resize}')").await;
    assert!(next.contains("jobs_waiting"), "the next-run query reads the partial index of waiting jobs:\n{next}");
    assert!(!next.contains("Seq Scan"), "{next}");

    let newest = plan(&pool, "SELECT id FROM jobs ORDER BY created_at DESC, id DESC LIMIT 50").await;
    assert!(newest.contains("jobs_created"), "{newest}");
    assert!(!newest.contains("Seq Scan"), "{newest}");

    let after = plan(
        &pool,
        "SELECT id FROM jobs WHERE (created_at, id) < (SELECT created_at, id FROM jobs WHERE id = 'done-500000') \
         ORDER BY created_at DESC, id DESC LIMIT 50",
    )
    .await;
    assert!(after.contains("jobs_created"), "a keyset page starts from the index:\n{after}");
    assert!(!after.contains("Seq Scan"), "{after}");

    let failed = plan(&pool, "SELECT id FROM jobs WHERE status = 'failed' ORDER BY created_at DESC, id DESC LIMIT 50").await;
    assert!(failed.contains("jobs_status_created"), "{failed}");
    assert!(!failed.contains("Seq Scan"), "{failed}");

    // The store's own calls agree with the plans above.
    let page = store
        .job_list(&burro::store::ListQuery {
            limit: 3,
            after: Some("done-500000".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = page.jobs.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(ids, ["done-499999", "done-499998", "done-499997"]);
    assert_eq!(page.total, 1_000_050);
    store.close().await;
}
