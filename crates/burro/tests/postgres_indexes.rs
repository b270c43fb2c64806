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

/// Returns the plans of the store's claim and next-run statements, in that order,
/// for the name `resize`, as generic plans (the ones a pooled connection
/// reuses after a few runs).
async fn due_plans(pool: &PgPool) -> [String; 2] {
    let mut connection = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut *connection).await.unwrap();
    let mut plans = Vec::new();
    for (name, sql) in PostgresStore::due_statements() {
        sqlx::raw_sql(&format!("PREPARE due_{name} AS {sql}")).execute(&mut *connection).await.unwrap();
        let arguments = match name {
            "claim" => "9999999999, 'node', '{resize}', 10, NULL, 74",
            _ => "'{resize}'",
        };
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN EXECUTE due_{name}({arguments})")).fetch_all(&mut *connection).await.unwrap();
        sqlx::raw_sql(&format!("DEALLOCATE due_{name}")).execute(&mut *connection).await.unwrap();
        plans.push(rows.join("\n"));
    }
    sqlx::raw_sql("RESET plan_cache_mode").execute(&mut *connection).await.unwrap();
    plans.try_into().unwrap()
}

/// A fresh table has no statistics until the first analyze, and a server
/// with autovacuum off never gets them. The due-job lookups must still
/// read only the front of one name's waiting jobs: with `name = ANY(...)`
/// such a planner combined two bitmap scans that read every job of the
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_lookups_use_the_waiting_index_without_statistics() {
    let Some(url) = common::schema_url("due_lookups_use_the_waiting_index_without_statistics").await else { return };
    let store = PostgresStore::open(&url, 2, None).await.unwrap();
    let pool = store.pool().clone();
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = false)").execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, name, data, status, attempts, max_attempts, created_at, run_at) \
         SELECT 'job-' || n, 'resize', '{}', CASE WHEN n <= 20000 THEN 'completed' ELSE 'pending' END, 0, 1, n, n \
         FROM generate_series(1, 30000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let analyzed: Option<i64> = sqlx::query_scalar(
        "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(analyzed.unwrap_or(0), 0, "the table must have no statistics for this check");

    let [claim, next] = due_plans(&pool).await;
    for plan in [&claim, &next] {
        assert!(plan.contains("jobs_waiting_name"), "reads the index of waiting jobs by name:\n{plan}");
        assert!(!plan.contains("Bitmap"), "no bitmap scan over all jobs of the name:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }

    // The store's own claim takes the earliest jobs in due order.
    let claimed = store
        .job_claim(&burro::store::ClaimRequest {
            now_ms: 40_000,
            node_id: "node".into(),
            names: vec!["resize".into(), "absent".into()],
            limit: 3,
            lease_generation: None,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(ids, ["job-20001", "job-20002", "job-20003"]);
    let next_run = store.job_next_run_at(&["absent".into(), "resize".into()]).await.unwrap();
    assert_eq!(next_run, Some(20_004));
    store.close().await;
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

    let [claim, next] = due_plans(&pool).await;
    assert!(claim.contains("jobs_waiting_name"), "the claim reads the partial index of waiting jobs:\n{claim}");
    assert!(!claim.contains("Seq Scan"), "{claim}");
    assert!(next.contains("jobs_waiting_name"), "the next-run query reads the partial index of waiting jobs:\n{next}");
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
