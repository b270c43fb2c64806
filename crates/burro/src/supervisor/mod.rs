//! The supervisor of external jobs: starts a `burro-shim` per attempt,
//! serves the control socket the shims connect to, turns what they forward
//! into events and stored state, and watches heartbeats.

mod control;
mod monitor;
mod orphan;
mod recover;
mod run;
mod socket_dir;
mod launcher;
mod spec;

pub use socket_dir::{check_socket_path_length, job_socket_path, prepare_socket_dir};
pub use spec::{job_environment, shim_spec, SECRET_VARIABLES};

use crate::config::{Config, Transport};
use crate::events::Events;
use crate::jobs::{ExitSummary, ExternalJob, JobLogs, KillReason, Live};
use crate::store::{Job, ProcessState};
use burro_protocol::control::{ExitReport, ServerFrame};
use run::Run;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Settings of the supervisor, from `[external]` and `[server]`.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub socket_dir: PathBuf,
    pub transport: Transport,
    pub tcp_port_range: [u16; 2],
    pub default_heartbeat_timeout: Duration,
    pub heartbeat_check_interval: Duration,
    pub kill_grace: Duration,
    pub cancel_grace: Duration,
    pub max_message_bytes: usize,
    pub max_connections_per_job: usize,
    pub message_fd: bool,
    pub max_log_line: usize,
    pub shim_linger: Duration,
    pub shim_path: PathBuf,
    /// Fork shims from a warm `burro-shim --launcher` instead of starting
    /// each with `exec`.
    pub shim_launcher: bool,
    /// Directory of the shims' own diagnostic logs.
    pub shim_log_dir: PathBuf,
    /// Directory where shims leave exit records for an absent server.
    pub exit_dir: PathBuf,
    pub reconnect_window: Option<Duration>,
}

impl SupervisorSettings {
    /// Derives the settings from a loaded configuration.
    pub fn from_config(config: &Config) -> Self {
        let external = &config.external;
        SupervisorSettings {
            socket_dir: external.socket_dir(),
            transport: external.transport,
            tcp_port_range: external.tcp_port_range,
            default_heartbeat_timeout: external.default_heartbeat_timeout,
            heartbeat_check_interval: external.heartbeat_check_interval,
            kill_grace: external.kill_grace,
            cancel_grace: external.cancel_grace,
            max_message_bytes: external.max_message_bytes,
            max_connections_per_job: external.max_connections_per_job,
            message_fd: external.message_fd,
            max_log_line: external.max_log_line,
            shim_linger: external.shim_linger,
            shim_path: config.server.shim_path.clone().unwrap_or_else(default_shim_path),
            shim_launcher: config.server.shim_launcher,
            shim_log_dir: config.server.data_dir.join("shims"),
            exit_dir: config.server.data_dir.join("exits"),
            reconnect_window: external.reconnect_window,
        }
    }

    /// Returns the path of the control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.socket_dir.join("control.sock")
    }
}

/// Returns `burro-shim` beside the running executable. Test binaries live
/// one level deeper (`target/debug/deps`), so the parent is tried too.
pub fn default_shim_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let beside = dir.join("burro-shim");
    if beside.exists() {
        return beside;
    }
    match dir.parent() {
        Some(parent) if parent.join("burro-shim").exists() => parent.join("burro-shim"),
        _ => beside,
    }
}

pub use recover::Adoption;

pub(crate) struct Inner {
    pub settings: SupervisorSettings,
    pub events: Events,
    pub live: Live,
    pub logs: JobLogs,
    pub runs: Mutex<HashMap<String, Arc<Run>>>,
    /// Forks shims; `None` when `shim_launcher` is off.
    launcher: Option<launcher::Launcher>,
    /// The bound control socket until [`Supervisor::start_accepting`].
    listener: Mutex<Option<tokio::net::UnixListener>>,
}

/// Handle to the supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// Checks the socket directory, binds the control socket and starts the
    /// heartbeat monitor. Shims are accepted after [`Supervisor::start_accepting`].
    ///
    /// # Errors
    ///
    /// Returns a message when the socket directory fails its checks, socket
    /// paths would be too long, another server owns the control socket, or
    /// binding fails.
    pub async fn start(settings: SupervisorSettings, events: Events, live: Live, logs: JobLogs) -> Result<Self, String> {
        raise_open_files_limit();
        prepare_socket_dir(&settings.socket_dir)?;
        check_socket_path_length(&settings.socket_dir)?;
        for dir in [&settings.shim_log_dir, &settings.exit_dir] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating the directory {} failed: {e}", dir.display()))?;
        }
        let listener = control::bind(&settings.control_socket()).await?;
        let launcher = settings.shim_launcher.then(|| {
            launcher::Launcher::new(
                settings.shim_path.clone(),
                settings.shim_log_dir.join("launcher.log"),
                INHERITED_NOFILE.get().map(|limit| limit.rlim_cur.to_string()),
            )
        });
        let inner = Arc::new(Inner {
            launcher,
            settings,
            events,
            live,
            logs,
            runs: Mutex::new(HashMap::new()),
            listener: Mutex::new(Some(listener)),
        });
        tokio::spawn(monitor::heartbeat_monitor(Arc::downgrade(&inner)));
        Ok(Supervisor { inner })
    }

    /// Starts accepting shim connections. Shims that connect earlier wait in
    /// the listen backlog.
    pub fn start_accepting(&self) {
        if let Some(listener) = self.inner.listener.lock().expect("listener lock").take() {
            tokio::spawn(control::accept_loop(self.inner.clone(), listener));
        }
    }

    /// Returns the settings.
    pub fn settings(&self) -> &SupervisorSettings {
        &self.inner.settings
    }

    /// Runs one attempt of an external job under a new shim and returns how
    /// it ended, once the job's process has exited and every message it
    /// sent before has been processed.
    pub async fn run(&self, job: &Job, external: &ExternalJob) -> ExitSummary {
        let token = new_token();
        let (exit_tx, exit_rx) = oneshot::channel();
        let log = self.inner.logs.writer(&job.id);
        let window = self.inner.settings.reconnect_window.unwrap_or(external.heartbeat_timeout * 2);
        let run = Arc::new(Run::new(job, external, self.inner.settings.cancel_grace, window, token.clone(), log, exit_tx));
        self.inner.runs.lock().expect("runs lock").insert(job.id.clone(), run.clone());
        self.inner.live.process_state(&job.id, ProcessState::Spawning);

        if external.run_as.is_some() {
            if let Err(error) = socket_dir::prepare_users_dir(&self.inner.settings.socket_dir) {
                run.deliver(ExitSummary {
                    report: Some(ExitReport {
                        spawn_error: Some(error),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                return exit_rx.await.unwrap_or_default();
            }
        }
        let env = job_environment(server_environment(), external, &job.id);
        let spec = shim_spec(&self.inner.settings, job, external, &token, env);
        // The spec file is the record of the shim's token, so no store write
        // waits before the shim starts. A restarted server finds the spec
        // itself when no shim took it, or else the claimed spec, which the
        // shim leaves in place (see `reclaim_spec` and `claimed_token`).
        let spec_path = spec_file(&self.inner.settings, &job.id, job.attempts);
        if let Err(error) = write_spec_file(&spec_path, &spec) {
            run.deliver(ExitSummary {
                report: Some(ExitReport {
                    spawn_error: Some(error),
                    ..Default::default()
                }),
                ..Default::default()
            });
            return exit_rx.await.unwrap_or_default();
        }
        let started = self.spawn_shim(&spec, &spec_path, run.clone()).await;
        if started.is_ok() {
            run.shim_started();
        }
        if let Err(error) = started {
            let _ = std::fs::remove_file(&spec_path);
            tracing::error!(job_id = %job.id, job_name = %job.name, error = %error, "starting the shim failed");
            run.deliver(ExitSummary {
                report: Some(ExitReport {
                    spawn_error: Some(error),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        exit_rx.await.unwrap_or_default()
    }

    async fn spawn_shim(&self, spec: &burro_protocol::control::ShimSpec, spec_path: &std::path::Path, run: Arc<Run>) -> Result<(), String> {
        let settings = &self.inner.settings;
        let shim_log_path = settings.shim_log_dir.join(format!("{}.log", spec.job_id));
        if let Some(launcher) = &self.inner.launcher {
            match launcher.launch(spec_path, &shim_log_path).await {
                Ok(launched) => {
                    tracing::trace!(job_id = %spec.job_id, shim_pid = launched.pid, "shim forked by the launcher");
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        // A pidfd turns readable when its process exits.
                        let _ = launched.exit.readable().await;
                        tracing::debug!(job_id = %run.job_id, shim_pid = launched.pid, "shim exited");
                        run.shim_exited(&inner);
                    });
                    return Ok(());
                }
                Err(failure) if failure.request_sent => {
                    // A forked shim may have claimed the spec already. The
                    // first rename of the spec file claims it. When this
                    // rename fails, a forked shim has the spec and reports
                    // over the control socket, but no pidfd watches it: the
                    // heartbeat monitor ends the run if its connection stays
                    // closed. Otherwise the shim is started here.
                    tracing::warn!(job_id = %spec.job_id, error = %failure.message, "the shim launcher failed; starting the shim directly");
                    let reclaimed = spec_path.with_extension("direct.spec");
                    if std::fs::rename(spec_path, &reclaimed).is_err() {
                        tracing::warn!(job_id = %spec.job_id, "a shim forked by the failed launcher took the spec; the job is lost if that shim stays disconnected for the reconnect window");
                        return Ok(());
                    }
                    let started = self.spawn_shim_directly(spec, &reclaimed, &shim_log_path, run);
                    if started.is_err() {
                        // The caller removes only the spec's original name.
                        let _ = std::fs::remove_file(&reclaimed);
                    }
                    return started;
                }
                Err(failure) => {
                    tracing::warn!(job_id = %spec.job_id, error = %failure.message, "the shim launcher failed; starting the shim directly");
                }
            }
        }
        self.spawn_shim_directly(spec, spec_path, &shim_log_path, run)
    }

    /// Starts the shim with exec, its standard error appended to its log.
    fn spawn_shim_directly(&self, spec: &burro_protocol::control::ShimSpec, spec_path: &std::path::Path, shim_log_path: &std::path::Path, run: Arc<Run>) -> Result<(), String> {
        let settings = &self.inner.settings;
        let shim_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(shim_log_path)
            .map_err(|e| format!("opening the shim log {} failed: {e}", shim_log_path.display()))?;
        let mut command = tokio::process::Command::new(&settings.shim_path);
        command
            .arg("--spec-file")
            .arg(spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(shim_log))
            .kill_on_drop(false);
        // The shim gets a process group of its own, so Ctrl-C and service
        // stops that signal the server's group do not reach it. Without a
        // pre_exec hook, std starts the shim with posix_spawn, which does not
        // copy the server's page tables as fork does.
        command.process_group(0);
        // The shim lowers its open-files limit back to the one the server
        // started with before it starts the job: programs that use select()
        // fail on descriptors of 1024 and above.
        if let Some(limit) = INHERITED_NOFILE.get() {
            command.env(NOFILE_VARIABLE, limit.rlim_cur.to_string());
        }
        let mut child = command.spawn().map_err(|e| {
            format!(
                "starting the shim {} failed: {e}; build it with `cargo build --release` or set [server] shim_path",
                settings.shim_path.display()
            )
        })?;
        tracing::trace!(job_id = %spec.job_id, shim_pid = ?child.id(), "shim started");

        let inner = self.inner.clone();
        let shim_log_path = shim_log_path.to_path_buf();
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::debug!(job_id = %run.job_id, status = ?status, "shim exited");
            // The log was opened for the shim's standard error; a shim with
            // nothing to report leaves no file, as a forked one does.
            if std::fs::metadata(&shim_log_path).is_ok_and(|meta| meta.len() == 0) {
                let _ = std::fs::remove_file(&shim_log_path);
            }
            run.shim_exited(&inner);
        });
        Ok(())
    }

    /// Marks a running job as cancelled and requests its shim to terminate it.
    pub fn request_cancel(&self, job_id: &str) {
        let run = self.inner.runs.lock().expect("runs lock").get(job_id).cloned();
        if let Some(run) = run {
            run.request_kill(KillReason::Cancel, true);
        }
    }

    /// Terminates a job that other nodes rescued while this node had lost
    /// its lease: the shim stops the process and its end is not recorded.
    pub fn fence(&self, job_id: &str) {
        let run = self
            .inner
            .runs
            .lock()
            .expect("runs lock")
            .get(job_id)
            .cloned();
        if let Some(run) = run {
            run.request_kill(KillReason::Fenced, false);
        }
    }

    /// Forgets a finished job and lets its shim exit.
    pub fn release(&self, job_id: &str) {
        let run = self.inner.runs.lock().expect("runs lock").remove(job_id);
        if let Some(run) = run {
            run.send(ServerFrame::Bye);
            run.flush_log();
            remove_spec_files(&self.inner.settings, job_id, run.attempt, run.ever_attached());
            if let Some(path) = run.take_exit_record() {
                if let Err(err) = std::fs::remove_file(&path) {
                    tracing::warn!(job_id = %job_id, path = %path.display(), error = %err, "removing an applied exit record failed");
                }
            }
        }
    }

    /// Returns the pid of the shim launcher, once one runs. Shims it forks
    /// are its children, so their CPU time is counted in the launcher's
    /// children times, not in this process's.
    pub fn launcher_pid(&self) -> Option<u32> {
        self.inner.launcher.as_ref().and_then(|launcher| launcher.pid())
    }

    /// Returns the number of external jobs being supervised.
    pub fn running_count(&self) -> usize {
        self.inner.runs.lock().expect("runs lock").len()
    }
}

/// Returns the path of the spec file of one attempt, in the exit directory.
pub(crate) fn spec_file(settings: &SupervisorSettings, job_id: &str, attempt: u32) -> PathBuf {
    settings.exit_dir.join(format!("{job_id}.{attempt}.spec"))
}

/// Returns the names a shim gives the spec file of one attempt when it
/// claims it: the spec's own, and the one of a spec taken back from a
/// failed launcher and handed to a shim started directly.
pub(crate) fn claimed_spec_files(settings: &SupervisorSettings, job_id: &str, attempt: u32) -> [PathBuf; 2] {
    let spec = spec_file(settings, job_id, attempt);
    [spec.with_extension("spec.claimed"), spec.with_extension("direct.spec.claimed")]
}

/// Removes the spec files of an attempt that has ended. Unless a shim of
/// the attempt connected, which it does only after claiming its spec, the
/// unclaimed names go first, so a shim that starts late finds no spec.
fn remove_spec_files(settings: &SupervisorSettings, job_id: &str, attempt: u32, shim_connected: bool) {
    let spec = spec_file(settings, job_id, attempt);
    let mut paths = Vec::with_capacity(4);
    if !shim_connected {
        paths.push(spec.with_extension("direct.spec"));
        paths.push(spec);
    }
    paths.extend(claimed_spec_files(settings, job_id, attempt));
    for path in &paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(job_id = %job_id, path = %path.display(), error = %err, "removing a spec file of an ended job failed"),
        }
    }
}

/// Writes the shim's spec to `path` atomically, readable by the server's
/// user only: it contains the job's environment and the shim's token.
fn write_spec_file(path: &std::path::Path, spec: &burro_protocol::control::ShimSpec) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("spec.tmp");
    let write = || -> std::io::Result<()> {
        // One buffer and one write: serde_json writes each token with its
        // own call, which on a bare file is one system call per token.
        let mut line = serde_json::to_vec(spec)?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&temporary)?;
        file.write_all(&line)?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("writing the shim spec file {} failed: {e}", path.display())
    })
}

/// Environment variable that passes the server's original open-files soft
/// limit to `burro-shim`.
pub(crate) const NOFILE_VARIABLE: &str = "BURRO_SHIM_NOFILE";

/// The `RLIMIT_NOFILE` values the server process started with, recorded by
/// [`raise_open_files_limit`].
static INHERITED_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the soft limit on open files to the hard limit. Every running
/// external job keeps a control connection open, so the common soft limit of
/// 1024 would cap the number of running jobs.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only to the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reading the open-files limit failed");
        return;
    }
    let _ = INHERITED_NOFILE.set(limit);
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads the struct, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::debug!(from = limit.rlim_cur, to = limit.rlim_max, "raised the open-files soft limit to the hard limit");
    } else {
        tracing::warn!(soft = limit.rlim_cur, hard = limit.rlim_max, error = %std::io::Error::last_os_error(), "raising the open-files soft limit failed");
    }
}

/// Returns the server's environment. Variables whose name or value is not
/// UTF-8 are skipped with a warning, because the shim spec is JSON.
fn server_environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(key, value)| match (key.into_string(), value.into_string()) {
            (Ok(key), Ok(value)) => Some((key, value)),
            (key, _) => {
                tracing::warn!(variable = ?key, "a server environment variable is not UTF-8; jobs do not inherit it");
                None
            }
        })
        .collect()
}

fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
