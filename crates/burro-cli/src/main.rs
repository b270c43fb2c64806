//! The `burro` command: run the server, run the demo, and drive a running
//! server over HTTP.

mod client;
mod commands;
mod demo;
mod serve;
mod sse;
mod watch;

/// The server allocates and frees a few small blocks for every job message
/// it relays as an event, often on another thread than the one that
/// allocated them. With mimalloc instead of the C library's allocator, the
/// server relayed about half as many messages again per second in the
/// message-ingest benchmark (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a job that failed or was cancelled.
pub const EXIT_JOB_FAILED: u8 = 1;
/// Exit status for bad usage or an unreachable server.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(name = "burro", version, about = "A job server for external jobs in any language")]
struct Cli {
    /// Base URL of the server for client commands.
    #[arg(long, global = true, env = "BURRO_SERVER", default_value = "http://127.0.0.1:3000")]
    server: String,

    /// API token of the server, sent as `Authorization: Bearer`.
    #[arg(long, global = true, env = "BURRO_API_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Configuration file; default: ./burro.toml when present.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Start a server with the example configuration and run two demo jobs
    /// (Python and shell) with live progress bars.
    Demo {
        /// Configuration file; default: examples/burro.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Keep serving after the demo jobs finish, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Enqueue a job and print its id.
    Enqueue {
        /// Registered job name.
        name: String,
        /// Job data as JSON.
        #[arg(long, conflicts_with = "data_file")]
        data: Option<String>,
        /// File holding the job data as JSON ("-" reads standard input).
        #[arg(long)]
        data_file: Option<PathBuf>,
        /// Runs including the first (1 = never retry).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Earliest start: RFC 3339 time or a delay such as +10m.
        #[arg(long)]
        at: Option<String>,
        /// Per-attempt time limit, such as 30s or 5m.
        #[arg(long)]
        timeout: Option<String>,
        /// Watch the job until it ends, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Show one job.
    Status {
        id: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs with this name.
        #[arg(long)]
        name: Option<String>,
        /// Page size (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Jobs to skip.
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// Continue after the job with this id (the `next` of the previous
        /// page); cheaper than --offset deep into a long list.
        #[arg(long, conflicts_with = "offset")]
        after: Option<String>,
        /// Print the page as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Follow a job's progress until it ends; exits 0 when it completes.
    Watch { id: String },
    /// Start a new attempt of a failed or cancelled job.
    Retry { id: String },
    /// Delete finished jobs and their logs that ended before a given age.
    Purge {
        /// Minimum age of the jobs to delete, such as 30d or 12h.
        #[arg(long)]
        older_than: String,
        /// Only jobs with this status: completed, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Print a job's log.
    Logs {
        id: String,
        /// Keep printing new lines until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime failed: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Joins an error and its causes, skipping a cause whose text the message
/// already contains.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = client::Client::new(&cli.server, cli.token.as_deref())?;
    match cli.command {
        Command::Serve { config } => serve::serve(config).await,
        Command::Demo { config, keep_running } => demo::demo(config, keep_running).await,
        Command::Enqueue { name, data, data_file, max_attempts, at, timeout, wait } => {
            let request = commands::EnqueueRequest { name, data, data_file, max_attempts, at, timeout };
            commands::enqueue(&client, request, wait).await
        }
        Command::Status { id, json } => commands::status(&client, &id, json).await,
        Command::List {
            status,
            name,
            limit,
            offset,
            after,
            json,
        } => commands::list(&client, commands::ListArgs { status, name, limit, offset, after }, json).await,
        Command::Cancel { id } => commands::cancel(&client, &id).await,
        Command::Retry { id } => commands::retry(&client, &id).await,
        Command::Purge { older_than, status } => commands::purge(&client, &older_than, status).await,
        Command::Watch { id } => watch::watch(&client, &id).await,
        Command::Logs { id, follow } => commands::logs(&client, &id, follow).await,
    }
}
