//! `AppServer`: the embeddable server that ties the store, the jobs
//! service, the events bus, the SSE hub and the HTTP API together.

use crate::config::{Config, ExternalJobConfig, JobsConfig};
use crate::events::{Events, EventsConfig};
use crate::jobs::{JobLogs, Jobs, JobsError, JobsSettings, Live};
use crate::sse::{Sse, SseConfig};
use crate::store::Store;
use crate::supervisor::{Supervisor, SupervisorSettings};
use axum::Router;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The services an application uses: `core.jobs`, `core.events`, `core.sse`.
#[derive(Clone)]
pub struct Core {
    pub jobs: Jobs,
    pub events: Events,
    pub sse: Sse,
    /// Token that API requests must present, when set.
    pub api_token: Option<std::sync::Arc<str>>,
}

/// A server that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Setup(String),
    #[error("opening the job store failed: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("registering job {name:?} failed: {source}")]
    Register { name: String, source: JobsError },
    #[error("binding the HTTP address {addr} failed: {source}; is another server using it? set [server] bind")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Builder of an [`AppServer`] for applications that do not use a
/// configuration file.
#[derive(Debug, Clone, Default)]
pub struct AppServerBuilder {
    config: Config,
}

impl AppServerBuilder {
    /// Sets the HTTP address (port 0 picks a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.config.server.bind = addr;
        self
    }

    /// Sets the data directory (SQLite file, job logs, shim logs).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.server.data_dir = dir.into();
        self
    }

    /// Sets the database URL, such as `sqlite:///var/lib/burro/jobs.db`.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.config.server.database_url = Some(url.into());
        self
    }

    /// Sets the `[jobs]` settings.
    pub fn jobs(mut self, jobs: JobsConfig) -> Self {
        self.config.jobs = jobs;
        self
    }

    /// Changes any other setting.
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Opens the store and starts the supervisor.
    ///
    /// # Errors
    ///
    /// As [`AppServer::from_config`].
    pub async fn build(self) -> Result<AppServer, ServerError> {
        AppServer::from_config(self.config).await
    }
}

/// The burro server. Register jobs through [`AppServer::core`], add routes
/// with [`AppServer::route`], then [`AppServer::start`].
pub struct AppServer {
    config: Config,
    core: Core,
    routes: Router,
    broadcast_job_events: bool,
    store: Arc<dyn Store>,
    _lock: File,
}

impl AppServer {
    /// Starts a builder with default settings.
    pub fn builder() -> AppServerBuilder {
        AppServerBuilder::default()
    }

    /// Opens the store, checks the socket directory, starts the supervisor,
    /// and registers the external jobs of the configuration.
    ///
    /// # Errors
    ///
    /// Returns [`ServerError`] when the data directory is locked by another
    /// server, the store cannot be opened, the socket directory fails its
    /// checks, or a configured job is invalid.
    pub async fn from_config(config: Config) -> Result<AppServer, ServerError> {
        config.validate().map_err(|e| ServerError::Setup(format!("invalid configuration: {e}")))?;
        let mut config = config;
        if let Ok(url) = std::env::var("BURRO_DATABASE_URL") {
            if !url.is_empty() {
                config.server.database_url = Some(url);
            }
        }
        if let Ok(token) = std::env::var("BURRO_API_TOKEN") {
            if !token.is_empty() {
                config.server.api_token = Some(token);
            }
        }
        if !config.server.bind.ip().is_loopback() && config.server.api_token.is_none() {
            return Err(ServerError::Setup(format!(
                "refusing to serve on {} without an API token: set [server] api_token or BURRO_API_TOKEN, or bind to 127.0.0.1",
                config.server.bind
            )));
        }
        let data_dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| ServerError::Setup(format!("creating the data directory {} failed: {e}", data_dir.display())))?;
        let lock = lock_data_dir(&data_dir)?;
        let node_id = match &config.server.node_id {
            Some(id) => id.clone(),
            None => node_id(&data_dir)?,
        };

        let store = crate::store::open(&config.database_url(), config.server.database_pool_size).await?;
        let events = Events::new(EventsConfig::default());
        let sse = Sse::new(SseConfig::default());
        let live = Live::default();
        let logs = JobLogs::new(data_dir.join("logs"))
            .map_err(|e| ServerError::Setup(format!("creating the log directory under {} failed: {e}", data_dir.display())))?
            .with_max_bytes(config.external.max_log_bytes);
        let dyn_store: Arc<dyn Store> = store.clone();
        let logs = if dyn_store.is_shared() {
            logs.mirror_to(dyn_store.clone(), config.server.database_log_lines)
        } else {
            logs
        };
        let supervisor = Supervisor::start(SupervisorSettings::from_config(&config), events.clone(), live.clone(), logs.clone())
            .await
            .map_err(ServerError::Setup)?;
        let settings = JobsSettings {
            concurrency: config.jobs.concurrency,
            max_attempts: config.jobs.max_attempts,
            retry_backoff: config.jobs.retry_backoff,
            poll_interval: config.jobs.poll_interval,
            node_id,
            retention: config.jobs.retention,
            lease_ttl: config.server.lease_ttl,
            rescue_after: config.server.rescue_after,
            database_log_lines: config.server.database_log_lines,
        };
        let jobs = Jobs::new(dyn_store, events.clone(), live, logs, supervisor, settings);
        let metrics = jobs.clone();
        events.on("job.stale", move |event| {
            let jobs = metrics.clone();
            async move {
                let name = event.data["name"].as_str().unwrap_or_default();
                jobs.metrics().count(crate::metrics::JobCounter::Stale, name);
                Ok(())
            }
        });
        for (name, job) in &config.external_jobs {
            jobs.register_external(name, job.clone()).map_err(|source| ServerError::Register { name: name.clone(), source })?;
        }
        let api_token = config.server.api_token.as_deref().map(std::sync::Arc::from);
        Ok(AppServer {
            config,
            core: Core {
                jobs,
                events,
                sse,
                api_token,
            },
            routes: Router::new(),
            broadcast_job_events: false,
            store,
            _lock: lock,
        })
    }

    /// Returns the jobs service, the events bus and the SSE hub.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Registers an external job (same as `core().jobs.register_external`).
    ///
    /// # Errors
    ///
    /// As [`Jobs::register_external`].
    pub fn register_external(&self, name: &str, config: ExternalJobConfig) -> Result<(), JobsError> {
        self.core.jobs.register_external(name, config)
    }

    /// Adds the application's own routes beside the API.
    pub fn route(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Broadcasts every job event to the SSE channels `job:<id>` and `jobs`
    /// with short event names. `burro serve` turns this on; in library mode
    /// it is off so hand wiring does not send everything twice.
    pub fn broadcast_job_events(mut self, enabled: bool) -> Self {
        self.broadcast_job_events = enabled;
        self
    }

    /// Binds the HTTP listener, starts dispatching and serving.
    ///
    /// # Errors
    ///
    /// Returns [`ServerError::Bind`] when the address is taken.
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        let addr = self.config.server.bind;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        if self.broadcast_job_events {
            wire_job_events(&self.core);
        }
        if self.store.is_shared() {
            share_with_other_nodes(&self.core, self.store.clone()).await;
        }
        self.core.jobs.recover_interrupted().await;
        self.core.jobs.start();

        let app = crate::http::router(self.core.clone(), self.config.server.body_limit, &self.config.server.cors_origins).merge(self.routes);
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let serve = tokio::spawn(async move {
            let result = axum::serve(listener, app).with_graceful_shutdown(async move { signal.cancelled().await }).await;
            if let Err(err) = result {
                tracing::error!(error = %err, "the HTTP server stopped");
            }
        });
        tracing::info!(addr = %local_addr, "burro is listening");
        Ok(RunningServer {
            drain_timeout: self.config.server.drain_timeout,
            local_addr,
            core: self.core,
            shutdown,
            serve,
            store: self.store,
            _lock: self._lock,
        })
    }
}

/// A started server.
pub struct RunningServer {
    drain_timeout: std::time::Duration,
    local_addr: SocketAddr,
    core: Core,
    shutdown: CancellationToken,
    serve: JoinHandle<()>,
    store: Arc<dyn Store>,
    _lock: File,
}

impl RunningServer {
    /// Returns the bound HTTP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the base URL, such as `http://127.0.0.1:3000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Returns the services.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Stops claiming jobs, lets in-process jobs finish (up to
    /// `[server] drain_timeout`), flushes coalesced writes and stops serving
    /// HTTP. External jobs keep running under their shims.
    pub async fn shutdown(self) {
        self.core.jobs.stop(self.drain_timeout).await;
        self.shutdown.cancel();
        // Graceful shutdown waits for open connections, and SSE streams stay
        // open, so the wait is bounded.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.serve).await;
        self.store.close().await;
    }
}

/// Maps job event names to the short SSE event names.
pub fn sse_event_name(event: &str) -> Option<&'static str> {
    Some(match event {
        "job.external.spawned" => "spawned",
        "job.external.progress" | "job.progress" => "progress",
        "job.external.log" | "job.log" => "log",
        "job.completed" => "completed",
        "job.failed" => "failed",
        "job.cancelled" => "cancelled",
        "job.retrying" => "retrying",
        "job.stale" => "stale",
        "job.reconnected" => "reconnected",
        "job.lost" => "lost",
        _ => return None,
    })
}

fn wire_job_events(core: &Core) {
    let sse = core.sse.clone();
    core.events.on("job.*", move |event| {
        let sse = sse.clone();
        async move {
            let Some(short) = sse_event_name(&event.name) else { return Ok(()) };
            let Some(id) = event.data.get("jobId").and_then(|v| v.as_str()) else { return Ok(()) };
            let channel = format!("job:{id}");
            sse.broadcast_many(&[channel.as_str(), "jobs"], short, &event.data);
            Ok(())
        }
    });
}

/// Events queued for other nodes before emitters wait.
const PUBLISH_QUEUE: usize = 10_000;
/// Events announced per database transaction.
const PUBLISH_BATCH: usize = 200;

/// Connects this node to the others that share its database: their new
/// jobs wake this node's dispatcher, and job events flow both ways, so an
/// SSE client on any node follows jobs running on every node.
async fn share_with_other_nodes(core: &Core, store: Arc<dyn Store>) {
    let node = core.jobs.node_id().to_string();
    let (notice_tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    if let Err(err) = store.listen(notice_tx).await {
        tracing::error!(error = %err, "listening for other nodes failed; this node finds their jobs by polling only");
        return;
    }

    let receiver = core.clone();
    let own = node.clone();
    tokio::spawn(async move {
        while let Some(notice) = notices.recv().await {
            match notice {
                crate::store::Notice::JobsChanged => receiver.jobs.wake(),
                crate::store::Notice::Cancel(id) => receiver.jobs.cancel_local(&id),
                crate::store::Notice::Resync => {
                    receiver.jobs.wake();
                    receiver.sse.broadcast_all("resync", &serde_json::json!({"reason": "database_reconnected"}));
                }
                crate::store::Notice::Event(text) => {
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                    let origin = event["node"].as_str().unwrap_or_default();
                    let Some(name) = event["name"].as_str() else { continue };
                    if origin != own {
                        receiver.events.emit_remote(origin, name, event["data"].clone()).await;
                    }
                }
            }
        }
    });

    let (publish_tx, mut publish_rx) = tokio::sync::mpsc::channel::<String>(PUBLISH_QUEUE);
    core.events.on("job.*", move |event| {
        let publish = publish_tx.clone();
        let node = node.clone();
        async move {
            if event.origin.is_none() {
                let text = serde_json::json!({"node": node, "name": event.name, "data": event.data}).to_string();
                let _ = publish.send(text).await;
            }
            Ok(())
        }
    });
    tokio::spawn(async move {
        let mut failing = false;
        while let Some(first) = publish_rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < PUBLISH_BATCH {
                match publish_rx.try_recv() {
                    Ok(text) => batch.push(text),
                    Err(_) => break,
                }
            }
            // A failed batch is dropped: other nodes miss those events, and
            // their SSE clients recover state from the API.
            match store.events_publish(&batch).await {
                Ok(()) if failing => {
                    tracing::info!("announcing events to other nodes works again");
                    failing = false;
                }
                Ok(()) => {}
                Err(err) => {
                    if !failing {
                        tracing::error!(error = %err, dropped = batch.len(), "announcing events to other nodes failed");
                        failing = true;
                    }
                }
            }
        }
    });
}

fn lock_data_dir(dir: &Path) -> Result<File, ServerError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("burro.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| ServerError::Setup(format!("opening the lock file {} failed: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(ServerError::Setup(format!(
            "another burro server ({}) is using the data directory {}; stop it or set a different [server] data_dir",
            if holder.trim().is_empty() { "unknown pid".to_string() } else { format!("pid {}", holder.trim()) },
            dir.display()
        )));
    }
    let _ = std::fs::write(&path, std::process::id().to_string());
    Ok(file)
}

fn node_id(dir: &Path) -> Result<String, ServerError> {
    let path = dir.join("node_id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    std::fs::write(&path, &id).map_err(|e| ServerError::Setup(format!("writing the node id to {} failed: {e}", path.display())))?;
    Ok(id)
}
