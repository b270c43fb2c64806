//! S3: no-op in-process jobs. burro runs a Rust handler that returns at
//! once, on SQLite and on PostgreSQL; the peers are BullMQ on Redis and
//! graphile-worker on PostgreSQL, run by the Node.js scripts in
//! `bench/peers/`. Every side starts its workers first, then enqueues the
//! jobs one call at a time with `INFLIGHT` calls in flight, and stops the
//! clock when the last job has completed.
//!
//! The peers are installed by `npm ci` in `bench/peers/` at the first run,
//! from the versions in its `package-lock.json`.

use crate::report::{Metric, ScenarioResult, Target};
use crate::Scale;
use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Jobs running at once on every side.
const CONCURRENCY: usize = 32;
/// Enqueue calls in flight at once on every side.
const INFLIGHT: usize = 32;
/// Upper bound of one side's run.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// Returns the directory of the Node.js peers and their scripts.
fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Installs the peers with `npm ci` unless they are installed already.
fn install_peers() -> Result<()> {
    let dir = peers_dir();
    if dir.join("node_modules/bullmq").exists() && dir.join("node_modules/graphile-worker").exists() {
        return Ok(());
    }
    eprintln!("installing the S3 peers (BullMQ, graphile-worker) with npm ci in {}", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .context("running npm ci for the S3 peers failed; is Node.js with npm installed?")?;
    if !status.success() {
        bail!("npm ci in {} failed with {status}", dir.display());
    }
    Ok(())
}

/// Runs one peer script and returns its jobs per second.
async fn run_peer(script: &str, args: Vec<String>) -> Result<f64> {
    let mut command = tokio::process::Command::new("node");
    command.arg(peers_dir().join(script)).args(&args).kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .map_err(|_| anyhow!("{script} did not finish within {RUN_LIMIT:?}"))?
        .with_context(|| format!("starting node {script} failed"))?;
    if !output.status.success() {
        bail!("node {script} failed with {}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(line).with_context(|| format!("{script} printed {line:?}, expected one JSON line"))?;
    report["jobsPerSecond"].as_f64().with_context(|| format!("{script} printed no jobsPerSecond: {line}"))
}

/// Drops and creates the database `name` on the server of `admin_url`, and
/// returns the URL of the new database.
async fn fresh_database(admin_url: &str, name: &str) -> Result<String> {
    use sqlx::Executor;
    let admin = sqlx::PgPool::connect(admin_url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {admin_url} failed; set --postgres-url"))?;
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    admin.close().await;
    let base = match admin_url.rfind('/') {
        Some(slash) if slash > admin_url.find("://").map_or(0, |i| i + 2) => &admin_url[..slash],
        _ => admin_url,
    };
    Ok(format!("{base}/{name}"))
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::Executor;
    let admin = sqlx::PgPool::connect(admin_url).await?;
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
    admin.close().await;
    Ok(())
}

/// Runs `jobs` no-op jobs through an in-process burro server on
/// `database_url` (SQLite when `None`) and returns jobs per second.
async fn run_burro(jobs: u64, database_url: Option<String>) -> Result<f64> {
    let data_dir = tempfile::tempdir().context("creating the data directory")?;
    let socket_dir = tempfile::Builder::new().prefix("b3").tempdir_in("/tmp").context("creating the socket directory")?;
    let mut config = burro::config::Config::default();
    config.server.bind = "127.0.0.1:0".parse()?;
    config.server.data_dir = data_dir.path().to_path_buf();
    config.server.database_url = database_url;
    config.external.socket_dir = Some(socket_dir.path().join("s"));
    config.jobs.concurrency = CONCURRENCY;
    config.jobs.max_attempts = 1;
    let app = burro::AppServer::from_config(config).await.map_err(|e| anyhow!("starting the server failed: {e}"))?;
    app.core().jobs.register("noop", |_| async { Ok(Value::Null) }).map_err(|e| anyhow!("{e}"))?;
    let server = app.start().await.map_err(|e| anyhow!("starting the server failed: {e}"))?;
    let mut completed = server.core().events.subscribe("job.completed");
    let mut failed = server.core().events.subscribe("job.failed");

    let jobs_service = server.core().jobs.clone();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        futures::stream::iter(0..jobs)
            .map(|_| {
                let jobs_service = jobs_service.clone();
                async move { jobs_service.enqueue("noop", Value::Null, Default::default()).await }
            })
            .buffer_unordered(INFLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await
    });
    let mut done = 0;
    // One timer for the whole run: a timer per event costs this process
    // CPU that the server shares.
    let deadline = tokio::time::sleep(RUN_LIMIT);
    tokio::pin!(deadline);
    while done < jobs {
        tokio::select! {
            event = completed.recv() => {
                event.context("the event subscription ended")?;
                done += 1;
            }
            event = failed.recv() => {
                let event = event.context("the event subscription ended")?;
                bail!("a no-op job failed: {}", event.data);
            }
            () = &mut deadline => bail!("{done} of {jobs} jobs completed within {RUN_LIMIT:?}"),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    producer.await?.map_err(|e| anyhow!("enqueue failed: {e}"))?;
    server.shutdown().await;
    Ok(jobs as f64 / seconds)
}

/// One row of S3's table: its name, its target, and how to read burro's
/// and the peer's figure from a round.
type Comparison = (&'static str, Target, fn(&Round) -> f64, fn(&Round) -> f64);

/// Figures of one round.
struct Round {
    sqlite: f64,
    postgres: f64,
    bullmq: f64,
    graphile: f64,
}

pub async fn s3_in_process(scale: Scale, rounds: usize, postgres_url: &str) -> Result<ScenarioResult> {
    let jobs: u64 = match scale {
        Scale::Small => 300,
        Scale::Full => 100_000,
    };
    install_peers()?;
    let mut results = Vec::new();
    for round in 0..rounds {
        // The order of the four sides rotates from round to round.
        let mut figures = [0.0f64; 4];
        for turn in 0..4 {
            let side = (turn + round) % 4;
            figures[side] = match side {
                0 => run_burro(jobs, None).await.context("burro on SQLite")?,
                1 => {
                    let url = fresh_database(postgres_url, "burro_bench_s3").await?;
                    run_burro(jobs, Some(url)).await.context("burro on PostgreSQL")?
                }
                2 => run_peer("bullmq_noop.mjs", vec![jobs.to_string(), CONCURRENCY.to_string(), INFLIGHT.to_string()])
                    .await
                    .context("BullMQ")?,
                _ => {
                    let url = fresh_database(postgres_url, "burro_bench_s3_graphile").await?;
                    run_peer(
                        "graphile_noop.mjs",
                        vec![url, jobs.to_string(), CONCURRENCY.to_string(), INFLIGHT.to_string()],
                    )
                    .await
                    .context("graphile-worker")?
                }
            };
        }
        eprintln!(
            "  round {} of {rounds} done: burro SQLite {:.0}, burro PostgreSQL {:.0}, BullMQ {:.0}, graphile-worker {:.0} jobs/s",
            round + 1,
            figures[0],
            figures[1],
            figures[2],
            figures[3]
        );
        results.push(Round {
            sqlite: figures[0],
            postgres: figures[1],
            bullmq: figures[2],
            graphile: figures[3],
        });
    }

    for name in ["burro_bench_s3", "burro_bench_s3_graphile"] {
        if let Err(err) = drop_database(postgres_url, name).await {
            eprintln!("dropping the S3 database {name} failed: {err:#}");
        }
    }

    let pairs: [Comparison; 4] = [
        ("SQLite vs BullMQ", Target::AtLeast(2.0), |r| r.sqlite, |r| r.bullmq),
        ("SQLite vs graphile-worker", Target::AtLeast(2.0), |r| r.sqlite, |r| r.graphile),
        ("PostgreSQL vs graphile-worker", Target::AtLeast(1.0), |r| r.postgres, |r| r.graphile),
        ("PostgreSQL vs BullMQ", Target::None, |r| r.postgres, |r| r.bullmq),
    ];
    let metrics = pairs
        .into_iter()
        .map(|(name, target, ours, theirs)| {
            let mut metric = Metric::new(name, "jobs/s", target);
            metric.burro = results.iter().map(ours).collect();
            metric.limit = results.iter().map(theirs).collect();
            metric
        })
        .collect();
    Ok(ScenarioResult {
        id: "S3",
        title: "in-process no-op jobs against peers",
        params: json!({"jobs": jobs, "concurrency": CONCURRENCY, "inflightEnqueues": INFLIGHT, "peers": {"bullmq": "5.81.5", "graphile-worker": "0.16.6"}}),
        metrics,
        lost: None,
        extra: Value::Null,
    })
}
