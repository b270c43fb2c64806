//! `burro-bench`: runs benchmark scenarios against an in-process burro server
//! and, in the same invocation, against a bare baseline that measures what the
//! machine itself allows. Rounds alternate which side runs first.

mod baseline;
mod fanout;
mod report;
mod restart;
mod s3;
mod scale;
mod scenarios;

/// The allocator that the `burro` binary uses, because the scenarios run
/// burro's server inside this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// Tiny counts that finish in a few seconds (the smoke test).
    Small,
    /// The full counts: S1 500 jobs, S2 5,000 jobs, S3 100,000 jobs per
    /// side, S4 16 x 100,000 messages, S5 100 SSE clients and 10 jobs of
    /// 5,000 progress messages, S6 5,000 sleeping jobs, S7 1,000
    /// running jobs.
    Full,
}

#[derive(Parser, Debug)]
#[command(
    name = "burro-bench",
    about = "Measures burro against the machine's limits"
)]
struct Args {
    /// Scenarios to run: s1 (dispatch latency), s2 (throughput), s3 (in-process
    /// jobs against BullMQ and graphile-worker), s4 (message ingest), s5 (SSE
    /// fan-out), s6
    /// (thousands of sleeping jobs), s7 (restart after kill -9). Default: all.
    scenarios: Vec<String>,
    /// Rounds per scenario; each round runs burro and its baseline once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// File to write the results to, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Job and message counts.
    #[arg(long, value_enum, default_value_t = Scale::Small)]
    scale: Scale,
    /// PostgreSQL server for S3, as a URL of a database the user may create
    /// databases from; S3 drops and creates `burro_bench_s3` and
    /// `burro_bench_s3_graphile` there. S3's Redis is 127.0.0.1:6379.
    #[arg(long, env = "BURRO_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Start each shim with exec instead of forking it from the shim
    /// launcher (`[server] shim_launcher = false`), in every scenario's
    /// server, to measure what the launcher saves.
    #[arg(long)]
    no_shim_launcher: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.rounds == 0 {
        bail!("--rounds is 0: it must be at least 1");
    }
    let selected = select(&args.scenarios)?;

    let exe_dir = std::env::current_exe()
        .context("finding the bench executable")?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let shim = exe_dir.join("burro-shim");
    let worker = exe_dir.join("tiny_worker");
    let burro = exe_dir.join("burro");
    if !shim.exists() {
        bail!(
            "burro-shim not found at {}: build it with the same profile, for example `cargo build --release -p burro-shim`",
            shim.display()
        );
    }
    if !worker.exists() {
        bail!(
            "tiny_worker not found at {}: build it with `cargo build -p burro-bench`",
            worker.display()
        );
    }

    if ["S5", "S6", "S7"].iter().any(|id| selected.contains(id)) && !burro.exists() {
        bail!(
            "burro not found at {}: S5, S6 and S7 run `burro serve`; build it with the same profile, for example `cargo build --release -p burro-cli`",
            burro.display()
        );
    }

    restart::SERVE_SHIM_LAUNCHER.store(!args.no_shim_launcher, std::sync::atomic::Ordering::Relaxed);
    let machine = report::Machine::probe();
    println!("{}", machine.describe());

    let bench = std::sync::Arc::new(scenarios::Bench::start(&shim, &worker, !args.no_shim_launcher).await?);
    let mut results = Vec::new();
    for id in selected {
        eprintln!("running {id} ({} rounds)", args.rounds);
        let result = match id {
            "S1" => scenarios::s1_dispatch_latency(&bench, args.scale, args.rounds).await,
            "S2" => scenarios::s2_throughput(&bench, args.scale, args.rounds).await,
            "S3" => s3::s3_in_process(args.scale, args.rounds, &args.postgres_url).await,
            "S5" => fanout::s5_fanout(&burro, &worker, args.scale, args.rounds).await,
            "S6" => scale::s6_scale(&burro, &worker, args.scale, args.rounds).await,
            "S7" => restart::s7_restart(&burro, &worker, args.scale, args.rounds).await,
            _ => scenarios::s4_message_ingest(&bench, args.scale, args.rounds).await,
        }
        .with_context(|| format!("scenario {id} failed"))?;
        results.push(result);
    }
    // Every producer task has ended, so this is the last reference.
    if let Ok(bench) = std::sync::Arc::try_unwrap(bench) {
        bench.stop().await;
    }

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!();
    println!("{}", report::table(&results));
    if let Some(path) = &args.json {
        let document = report::json(&command, args.scale, args.rounds, &machine, &results);
        let text = serde_json::to_string_pretty(&document)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Returns the scenario ids in run order, all of them when none is named.
fn select(names: &[String]) -> Result<Vec<&'static str>> {
    const ALL: [&str; 7] = ["S1", "S2", "S3", "S4", "S5", "S6", "S7"];
    if names.is_empty() {
        return Ok(ALL.to_vec());
    }
    let mut selected = Vec::new();
    for name in names {
        let upper = name.to_ascii_uppercase();
        let Some(id) = ALL.iter().find(|id| **id == upper) else {
            bail!("unknown scenario {name:?}: expected s1, s2, s3, s4, s5, s6 or s7");
        };
        if !selected.contains(id) {
            selected.push(*id);
        }
    }
    Ok(selected)
}
