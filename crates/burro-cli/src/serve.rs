//! `burro serve`: run the server until SIGINT or SIGTERM.

use anyhow::Context;
use burro::{AppServer, Config};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Loads the configuration: the given file, else `./burro.toml` when it
/// exists, else the defaults with paths relative to the working directory.
pub fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = match path {
        Some(path) => Some(path),
        None => Some(PathBuf::from("burro.toml")).filter(|p| p.exists()),
    };
    match path {
        Some(path) => Ok(Config::load(&path)?),
        None => {
            let mut config = Config::default();
            config.resolve_paths(Path::new("."));
            Ok(config)
        }
    }
}

pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BURRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only on a terminal, so log files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

pub async fn serve(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    init_tracing("info");
    let config = load_config(config)?;
    let server = AppServer::from_config(config).await?.broadcast_job_events(true);
    let running = server.start().await?;
    eprintln!("burro is serving on {} (Ctrl-C stops the server; external jobs keep running)", running.url());
    wait_for_signal().await.context("waiting for a stop signal failed")?;
    tracing::info!("stopping: no new jobs are claimed; external jobs keep running under their shims");
    tokio::spawn(async {
        // A second signal exits at once.
        if wait_for_signal().await.is_ok() {
            eprintln!("second stop signal: exiting now");
            std::process::exit(130);
        }
    });
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
