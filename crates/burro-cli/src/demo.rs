//! `burro demo`: start a server with the example configuration, run a
//! Python job and a shell job, and show their progress live.

use crate::client::Client;
use crate::serve::{init_tracing, load_config, wait_for_signal};
use crate::watch::{follow, new_bar, Printer};
use anyhow::{anyhow, Context};
use burro::AppServer;
use indicatif::MultiProgress;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// The demo jobs and their data, as registered in examples/burro.toml.
const DEMO_JOBS: [(&str, &str); 2] = [
    ("progress-demo-py", r#"{"steps": 10, "delay": 0.3}"#),
    ("progress-demo-sh", r#"{"steps": 8, "delay": 0.4}"#),
];

pub async fn demo(config: Option<PathBuf>, keep_running: bool) -> anyhow::Result<ExitCode> {
    init_tracing("warn");
    let path = config.unwrap_or_else(|| PathBuf::from("examples/burro.toml"));
    if !path.exists() {
        return Err(anyhow!(
            "{} not found: run `burro demo` from the repository root, or pass --config FILE",
            path.display()
        ));
    }
    let mut config = load_config(Some(path))?;
    // Use a free port when the configured one is taken.
    if std::net::TcpListener::bind(config.server.bind).is_err() {
        config.server.bind.set_port(0);
    }
    let token = std::env::var("BURRO_API_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| config.server.api_token.clone());
    let server = AppServer::from_config(config).await?.broadcast_job_events(true);
    for (name, _) in DEMO_JOBS {
        if !server.core().jobs.registered_names().iter().any(|n| n == name) {
            return Err(anyhow!("the configuration does not register the demo job {name:?}; use examples/burro.toml"));
        }
    }
    let running = server.start().await?;
    let url = running.url();
    println!("burro demo server on {url}");
    println!("  live events:  curl -N '{url}/api/events?channel=jobs'");
    println!("  jobs:         curl '{url}/api/jobs'");
    println!();

    let client = Client::new(&url, token.as_deref())?;
    let bars = MultiProgress::new();
    let mut watchers = Vec::new();
    for (name, data) in DEMO_JOBS {
        let data: serde_json::Value = serde_json::from_str(data).context("demo data is JSON")?;
        let created = client.post("/api/jobs", &json!({"name": name, "data": data})).await?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        let bar = bars.add(new_bar(name));
        let printer = Printer::Multi(bars.clone());
        let client = Client::new(&url, token.as_deref())?;
        watchers.push(tokio::spawn(async move {
            let ending = follow(&client, &id, &bar, &printer).await;
            bar.finish();
            (name, id, ending)
        }));
    }

    let mut endings = Vec::new();
    for watcher in watchers {
        endings.push(watcher.await.context("a demo watcher stopped")?);
    }
    // Results are printed once the bars are gone, so no redraw erases them.
    let _ = bars.clear();
    let mut all_completed = true;
    for (name, id, ending) in endings {
        match ending {
            Ok(ending) => {
                all_completed &= ending.status == "completed";
                println!("{name} ({id}) {}", ending.describe());
            }
            Err(err) => {
                all_completed = false;
                println!("{name} ({id}) could not be followed: {err:#}");
            }
        }
    }
    println!();
    println!("Every state is stored in the SQLite file under the data directory.");

    if keep_running {
        println!("Serving until Ctrl-C; try `burro list --server {url}`.");
        wait_for_signal().await?;
    } else {
        println!("The demo server has stopped; run `burro demo --keep-running` to keep it up.");
    }
    running.shutdown().await;
    Ok(if all_completed { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_JOB_FAILED) })
}
