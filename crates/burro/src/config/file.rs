//! The configuration file and the values it sets.
//!
//! Every key has a default, so an empty file is a valid configuration.
//! Unknown keys are errors that name the key and the file. Relative paths
//! are resolved against the directory of the configuration file.

use super::duration::{parse_duration, serde_duration, serde_duration_option};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_BIND: &str = "127.0.0.1:3000";
pub const DEFAULT_DATA_DIR: &str = ".burro";
pub const DEFAULT_CONCURRENCY: usize = 5;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEARTBEAT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = burro_protocol::DEFAULT_MAX_MESSAGE_BYTES;
pub const DEFAULT_MAX_CONNECTIONS_PER_JOB: usize = 64;
pub const DEFAULT_TCP_PORT_RANGE: [u16; 2] = [49152, 65535];
pub const DEFAULT_SHIM_LINGER: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_LOG_LINE: usize = 64 * 1024;
/// Default size at which a job log file is rotated.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_BODY_LIMIT: usize = 10 * 1024 * 1024;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_RESCUE_AFTER: Duration = Duration::from_secs(30);
pub const DEFAULT_DATABASE_LOG_LINES: u32 = 1000;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub jobs: JobsConfig,
    pub external: ExternalConfig,
    /// One table per external job, keyed by job name.
    pub external_jobs: BTreeMap<String, ExternalJobConfig>,
}

/// `[server]`: where the server listens and keeps its state.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP API. Default `127.0.0.1:3000`.
    pub bind: SocketAddr,
    /// Directory for the SQLite file, job logs and shim logs. Default `.burro`.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER@HOST/DATABASE`; default
    /// `sqlite://<data_dir>/jobs.db`. `BURRO_DATABASE_URL` overrides it.
    pub database_url: Option<String>,
    /// Connections per node to a PostgreSQL database. Default 10.
    pub database_pool_size: u32,
    /// Path of the `burro-shim` binary; default: beside the running executable.
    pub shim_path: Option<PathBuf>,
    /// Fork each job's shim from one warm `burro-shim --launcher` process
    /// instead of starting it with `exec`. Default true.
    pub shim_launcher: bool,
    /// Largest accepted request body, in bytes. Default 10 MiB.
    pub body_limit: usize,
    /// Token that API requests must present (`Authorization: Bearer`).
    /// `BURRO_API_TOKEN` overrides it. Required when `bind` is not a
    /// loopback address. Default: none.
    pub api_token: Option<String>,
    /// Origins allowed to call the API from a browser on another origin,
    /// such as `["https://app.example.com"]`. Default: none (CORS off).
    pub cors_origins: Vec<String>,
    /// On SIGTERM or SIGINT, how long in-process jobs may run to completion
    /// before the server exits anyway. External jobs keep running. Default 30 s.
    #[serde(with = "serde_duration")]
    pub drain_timeout: Duration,
    /// Identity of this node among the nodes that share a PostgreSQL
    /// database. Default: a UUID created once and kept in
    /// `<data_dir>/node_id`.
    pub node_id: Option<String>,
    /// How long a node's lease lasts from each renewal, by the database
    /// clock. Renewed every third of it. PostgreSQL only. Default 30 s.
    #[serde(with = "serde_duration")]
    pub lease_ttl: Duration,
    /// How long a lease must have been expired before other nodes rescue
    /// the node's running jobs. PostgreSQL only. Default 30 s.
    #[serde(with = "serde_duration")]
    pub rescue_after: Duration,
    /// Newest log lines per job kept in a PostgreSQL database, so every
    /// node can serve them. Default 1000.
    pub database_log_lines: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.parse().expect("default bind address parses"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database_url: None,
            database_pool_size: crate::store::DEFAULT_POOL_SIZE,
            shim_path: None,
            shim_launcher: true,
            body_limit: DEFAULT_BODY_LIMIT,
            api_token: None,
            cors_origins: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            node_id: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            rescue_after: DEFAULT_RESCUE_AFTER,
            database_log_lines: DEFAULT_DATABASE_LOG_LINES,
        }
    }
}

/// `[jobs]`: dispatch and retries for every job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Jobs running at once on this server, in-process and external
    /// together. A slot is held until the job's process has exited. Default 5.
    pub concurrency: usize,
    /// Runs per job including the first (1 = never retry). Default 3.
    pub max_attempts: u32,
    /// `{ base = "1s", max = "5m" }`, or `false` to retry at once.
    pub retry_backoff: RetryBackoff,
    /// Safety-net poll of the store, for due scheduled jobs. Default 1 s.
    #[serde(with = "serde_duration")]
    pub poll_interval: Duration,
    /// How long finished jobs and their logs are kept: a duration for every
    /// status (default `"7d"`), a table per status such as
    /// `{ completed = "1d", failed = "30d" }`, or `false` to keep them.
    pub retention: Retention,
}

/// How long finished jobs are kept, per status; `None` keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub completed: Option<Duration>,
    pub failed: Option<Duration>,
    pub cancelled: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            completed: Some(DEFAULT_RETENTION),
            failed: Some(DEFAULT_RETENTION),
            cancelled: Some(DEFAULT_RETENTION),
        }
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let parse = |key: &str, value: &toml::Value| -> Result<Option<Duration>, D::Error> {
            match value {
                toml::Value::Boolean(false) => Ok(None),
                toml::Value::String(text) => parse_duration(text).map(Some).map_err(|e| D::Error::custom(format!("retention{key}: {e}"))),
                other => Err(D::Error::custom(format!("retention{key} must be a duration such as \"7d\" or false, found {other}"))),
            }
        };
        let value = toml::Value::deserialize(deserializer)?;
        match &value {
            toml::Value::Table(table) => {
                let mut retention = Retention::default();
                for (key, value) in table {
                    let parsed = parse(&format!(".{key}"), value)?;
                    match key.as_str() {
                        "completed" => retention.completed = parsed,
                        "failed" => retention.failed = parsed,
                        "cancelled" => retention.cancelled = parsed,
                        other => return Err(D::Error::custom(format!("unknown key retention.{other}; expected completed, failed or cancelled"))),
                    }
                }
                Ok(retention)
            }
            other => {
                let all = parse("", other)?;
                Ok(Retention { completed: all, failed: all, cancelled: all })
            }
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: RetryBackoff::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            retention: Retention::default(),
        }
    }
}

/// Delay before a failed attempt is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RetryBackoff {
    /// Retry at once.
    Disabled,
    /// `base * 2^(attempt-1)`, capped at `max`, with up to 25 % jitter.
    Exponential { base: Duration, max: Duration },
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff::Exponential {
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl<'de> Deserialize<'de> for RetryBackoff {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = toml::Value::deserialize(deserializer)?;
        match value {
            toml::Value::Boolean(false) => Ok(RetryBackoff::Disabled),
            toml::Value::Boolean(true) => Ok(RetryBackoff::default()),
            toml::Value::Table(table) => {
                let mut base = DEFAULT_BACKOFF_BASE;
                let mut max = DEFAULT_BACKOFF_MAX;
                for (key, value) in table {
                    let text = value.as_str().ok_or_else(|| {
                        D::Error::custom(format!("retry_backoff.{key} must be a duration string such as \"1s\""))
                    })?;
                    let parsed = parse_duration(text).map_err(|e| D::Error::custom(format!("retry_backoff.{key}: {e}")))?;
                    match key.as_str() {
                        "base" => base = parsed,
                        "max" => max = parsed,
                        other => {
                            return Err(D::Error::custom(format!(
                                "unknown key retry_backoff.{other}; expected base or max"
                            )))
                        }
                    }
                }
                Ok(RetryBackoff::Exponential { base, max })
            }
            other => Err(D::Error::custom(format!(
                "retry_backoff must be false or a table such as {{ base = \"1s\", max = \"5m\" }}, found {other}"
            ))),
        }
    }
}

/// Transport between a job and its shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Unix,
    Tcp,
}

/// `[external]`: settings shared by every external job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalConfig {
    /// Directory of the control socket and the job sockets; default
    /// `/tmp/burro-<uid>`. Must be a directory owned by the server's user
    /// with mode 0700 (created so when absent).
    pub socket_dir: Option<PathBuf>,
    pub transport: Transport,
    /// Ports for the TCP transport, inclusive. Default `[49152, 65535]`.
    pub tcp_port_range: [u16; 2],
    /// Heartbeat timeout of jobs that do not set their own. Default 30 s.
    #[serde(with = "serde_duration")]
    pub default_heartbeat_timeout: Duration,
    /// How often heartbeats are checked. Default 10 s.
    #[serde(with = "serde_duration")]
    pub heartbeat_check_interval: Duration,
    /// Time between SIGTERM and SIGKILL. Default 5 s.
    #[serde(with = "serde_duration")]
    pub kill_grace: Duration,
    /// Time a job that announced protocol 2 gets to stop after a `cancel`
    /// message, before SIGTERM. Default 10 s.
    #[serde(with = "serde_duration")]
    pub cancel_grace: Duration,
    /// Maximum message line, in bytes. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Simultaneous connections to one job socket. Default 64.
    pub max_connections_per_job: usize,
    /// Offer jobs an inherited pipe named by `BURRO_MESSAGE_FD`. Default true.
    pub message_fd: bool,
    /// Maximum stdout or stderr line kept whole, in bytes. Longer lines are
    /// split. Default 64 KiB.
    pub max_log_line: usize,
    /// Size in bytes at which a job's log file `<id>.log` is renamed to
    /// `<id>.log.1`, replacing an older one, and a new file is started.
    /// Default 64 MiB.
    pub max_log_bytes: u64,
    /// How long a restarted server waits for the shims of jobs that were
    /// running to reconnect; default: twice each job's heartbeat timeout.
    #[serde(default, with = "serde_duration_option")]
    pub reconnect_window: Option<Duration>,
    /// How long a shim whose job has exited waits for an absent server.
    /// Default 10 m.
    #[serde(with = "serde_duration")]
    pub shim_linger: Duration,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        Self {
            socket_dir: None,
            transport: Transport::Unix,
            tcp_port_range: DEFAULT_TCP_PORT_RANGE,
            default_heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            heartbeat_check_interval: DEFAULT_HEARTBEAT_CHECK_INTERVAL,
            kill_grace: DEFAULT_KILL_GRACE,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections_per_job: DEFAULT_MAX_CONNECTIONS_PER_JOB,
            message_fd: true,
            max_log_line: DEFAULT_MAX_LOG_LINE,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            shim_linger: DEFAULT_SHIM_LINGER,
            reconnect_window: None,
        }
    }
}

impl ExternalConfig {
    /// Returns the socket directory, `/tmp/burro-<uid>` unless configured.
    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/burro-{}", nix::unistd::geteuid())))
    }
}

/// `[external_jobs.NAME]`: one external job.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExternalJobConfig {
    /// Program to run, such as `python3` or `./worker.sh`. Never run through a shell.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory; default: the server's.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables added to the job's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Default: `[external] default_heartbeat_timeout`.
    #[serde(default, with = "serde_duration_option")]
    pub heartbeat_timeout: Option<Duration>,
    /// Maximum run time of one attempt. No limit by default.
    #[serde(default, with = "serde_duration_option")]
    pub timeout: Option<Duration>,
    /// Default: `[external] kill_grace`.
    #[serde(default, with = "serde_duration_option")]
    pub kill_grace: Option<Duration>,
    /// Default: `[jobs] max_attempts`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Run `command` through `/bin/sh -c` (then `args` are `$0`, `$1`, ...).
    /// Default false: the command is executed directly, never by a shell.
    #[serde(default)]
    pub shell: bool,
    /// Maximum address space of the job process, in bytes (`RLIMIT_AS`).
    #[serde(default)]
    pub limit_address_space: Option<u64>,
    /// Maximum open file descriptors of the job process (`RLIMIT_NOFILE`).
    #[serde(default)]
    pub limit_open_files: Option<u64>,
    /// Maximum CPU time of the job process, in seconds (`RLIMIT_CPU`).
    #[serde(default)]
    pub limit_cpu_seconds: Option<u64>,
    /// User name or uid the job runs as. Only a server running as root can
    /// set it; the shim drops privileges for the job process only.
    #[serde(default)]
    pub user: Option<String>,
    /// Group name or gid the job runs as; default: the user's primary group.
    #[serde(default)]
    pub group: Option<String>,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the configuration file {path} failed: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads, parses and validates a configuration file, resolving relative
    /// paths against its directory.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError`] naming the file, the key and the problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve_paths(&base);
        config.validate().map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Parses configuration text without resolving paths.
    ///
    /// # Errors
    ///
    /// Returns the parser's message, which names the key and the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|err| {
            let mut message = err.to_string().trim_end().to_string();
            if message.contains("invalid socket address syntax") {
                message.push_str("\nwrite an IP address and a port, such as \"127.0.0.1:3000\" or \"0.0.0.0:3000\"");
            }
            message
        })
    }

    /// Makes relative paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.server.data_dir);
        if let Some(p) = self.server.shim_path.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.external.socket_dir.as_mut() {
            resolve(p);
        }
        if let Some(url) = self.server.database_url.as_mut() {
            if let Some(rest) = url.strip_prefix("sqlite://") {
                let path = Path::new(rest.split('?').next().unwrap_or(rest));
                if path.is_relative() && !rest.starts_with(':') {
                    *url = format!("sqlite://{}", base.join(rest).display());
                }
            }
        }
        for job in self.external_jobs.values_mut() {
            if let Some(cwd) = job.cwd.as_mut() {
                resolve(cwd);
            }
            // A command given as a relative path ("./worker.sh") is relative
            // to the configuration file too; a bare name is looked up in PATH.
            if job.command.contains('/') && Path::new(&job.command).is_relative() {
                job.command = base.join(&job.command).display().to_string();
            }
        }
    }

    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    ///
    /// Returns a message naming the key, the value and the limit.
    pub fn validate(&self) -> Result<(), String> {
        if self.jobs.concurrency == 0 {
            return Err("jobs.concurrency is 0: it must be at least 1".into());
        }
        if self.jobs.max_attempts == 0 {
            return Err("jobs.max_attempts is 0: it must be at least 1 (1 means never retry)".into());
        }
        let [low, high] = self.external.tcp_port_range;
        if low == 0 || low > high {
            return Err(format!("external.tcp_port_range [{low}, {high}] is invalid: expected [low, high] with 0 < low <= high"));
        }
        if self.external.max_message_bytes < 1024 {
            return Err(format!("external.max_message_bytes is {}: it must be at least 1024", self.external.max_message_bytes));
        }
        if self.external.max_connections_per_job == 0 {
            return Err("external.max_connections_per_job is 0: it must be at least 1".into());
        }
        for origin in &self.server.cors_origins {
            if origin.parse::<axum::http::HeaderValue>().is_err() || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(format!("server.cors_origins contains {origin:?}: expected an origin such as \"https://app.example.com\""));
            }
        }
        if let Some(node_id) = &self.server.node_id {
            if node_id.is_empty()
                || node_id.len() > 128
                || !node_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            {
                return Err(format!(
                    "server.node_id is {node_id:?}: expected 1 to 128 ASCII letters, digits, '-', '_', '.' or ':'"
                ));
            }
        }
        if self.server.lease_ttl < std::time::Duration::from_secs(1) {
            return Err("server.lease_ttl must be at least 1s".into());
        }
        if self.server.rescue_after < std::time::Duration::from_secs(1) {
            return Err("server.rescue_after must be at least 1s, so live nodes renew their leases after a database outage before any node rescues".into());
        }
        if self.server.database_log_lines == 0 {
            return Err("server.database_log_lines is 0: it must be at least 1".into());
        }
        if self.jobs.poll_interval < std::time::Duration::from_millis(10) {
            return Err("jobs.poll_interval must be at least 10ms".into());
        }
        if self.external.shim_linger < std::time::Duration::from_secs(1) {
            return Err("external.shim_linger must be at least 1s, so a shim can report its job's exit".into());
        }
        if self.external.max_log_line < 256 {
            return Err(format!("external.max_log_line is {}: it must be at least 256", self.external.max_log_line));
        }
        if self.external.max_log_bytes < 4096 {
            return Err(format!("external.max_log_bytes is {}: it must be at least 4096", self.external.max_log_bytes));
        }
        if self.external.default_heartbeat_timeout.is_zero() {
            return Err("external.default_heartbeat_timeout must be greater than 0".into());
        }
        if self.external.heartbeat_check_interval.is_zero() {
            return Err("external.heartbeat_check_interval must be greater than 0".into());
        }
        for (name, job) in &self.external_jobs {
            burro_protocol::names::validate_job_name(name).map_err(|e| format!("external_jobs.{name}: {e}"))?;
            if job.command.trim().is_empty() {
                return Err(format!("external_jobs.{name}.command is empty: set the program to run"));
            }
            if job.max_attempts == Some(0) {
                return Err(format!("external_jobs.{name}.max_attempts is 0: it must be at least 1"));
            }
            if job.heartbeat_timeout.is_some_and(|d| d.is_zero()) {
                return Err(format!("external_jobs.{name}.heartbeat_timeout must be greater than 0"));
            }
        }
        Ok(())
    }

    /// Returns the database URL, `sqlite://<data_dir>/jobs.db` unless set.
    /// The path is percent-encoded where a URL needs it (`%`, `?`, `#`),
    /// because the SQLite driver decodes it.
    pub fn database_url(&self) -> String {
        self.server.database_url.clone().unwrap_or_else(|| {
            let path = self.server.data_dir.join("jobs.db").display().to_string();
            format!("sqlite://{}", path.replace('%', "%25").replace('?', "%3F").replace('#', "%23"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.jobs.concurrency, 5);
        assert_eq!(config.jobs.max_attempts, 3);
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(config.external.default_heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(config.jobs.retry_backoff, RetryBackoff::Exponential { base: Duration::from_secs(1), max: Duration::from_secs(300) });
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            [server]
            bind = "127.0.0.1:4000"
            data_dir = "state"
            [jobs]
            concurrency = 2
            max_attempts = 1
            retry_backoff = false
            [external]
            transport = "tcp"
            tcp_port_range = [50000, 50100]
            kill_grace = "2s"
            [external_jobs.process-video]
            command = "python3"
            args = ["-m", "video"]
            cwd = "workers"
            env = { MODE = "fast" }
            heartbeat_timeout = "60s"
            timeout = "1h"
        "#;
        let mut config = Config::parse(text).unwrap();
        config.resolve_paths(Path::new("/etc/burro"));
        assert_eq!(config.jobs.retry_backoff, RetryBackoff::Disabled);
        assert_eq!(config.external.transport, Transport::Tcp);
        assert_eq!(config.server.data_dir, PathBuf::from("/etc/burro/state"));
        let job = &config.external_jobs["process-video"];
        assert_eq!(job.cwd.as_deref(), Some(Path::new("/etc/burro/workers")));
        assert_eq!(job.timeout, Some(Duration::from_secs(3600)));
        assert_eq!(job.env["MODE"], "fast");
        config.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[jobs]\nconcurency = 3\n").unwrap_err();
        assert!(err.contains("concurency"), "{err}");
        let err = Config::parse("[external_jobs.x]\ncommand = \"a\"\ntimout = \"1s\"\n").unwrap_err();
        assert!(err.contains("timout"), "{err}");
    }

    #[test]
    fn retention_forms() {
        let config = Config::parse("[jobs]\nretention = \"1d\"\n").unwrap();
        assert_eq!(config.jobs.retention.failed, Some(Duration::from_secs(86_400)));
        let config = Config::parse("[jobs]\nretention = false\n").unwrap();
        assert_eq!(config.jobs.retention.completed, None);
        let config = Config::parse("[jobs]\nretention = { failed = \"30d\", completed = false }\n").unwrap();
        assert_eq!(config.jobs.retention.completed, None);
        assert_eq!(config.jobs.retention.failed, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(config.jobs.retention.cancelled, Some(DEFAULT_RETENTION));
        assert!(Config::parse("[jobs]\nretention = { done = \"1d\" }\n").unwrap_err().contains("retention.done"));
    }

    #[test]
    fn numbers_and_host_names_get_hints() {
        let err = Config::parse("[external_jobs.a]\ncommand = \"x\"\ntimeout = 30\n").unwrap_err();
        assert!(err.contains("\"30s\""), "{err}");
        let err = Config::parse("[server]\nbind = \"localhost:3000\"\n").unwrap_err();
        assert!(err.contains("127.0.0.1:3000"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::parse("[jobs]\nretry_backoff = { base = \"1x\" }\n").unwrap_err();
        assert!(err.contains("unknown unit"), "{err}");
        let err = Config::parse("[external]\nkill_grace = \"5\"\n").unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
        let config = Config::parse("[jobs]\nconcurrency = 0\n").unwrap();
        assert!(config.validate().unwrap_err().contains("jobs.concurrency"));
        let config = Config::parse("[external_jobs.external]\ncommand = \"x\"\n").unwrap();
        assert!(config.validate().unwrap_err().contains("reserved"));
    }

    #[test]
    fn max_log_bytes_is_validated() {
        assert_eq!(Config::parse("").unwrap().external.max_log_bytes, 64 * 1024 * 1024);
        let config = Config::parse("[external]\nmax_log_bytes = 1048576\n").unwrap();
        assert_eq!(config.external.max_log_bytes, 1024 * 1024);
        config.validate().unwrap();
        let config = Config::parse("[external]\nmax_log_bytes = 100\n").unwrap();
        assert!(config.validate().unwrap_err().contains("external.max_log_bytes"));
    }

    #[test]
    fn relative_command_resolves_against_config_dir() {
        let mut config = Config::parse("[external_jobs.a]\ncommand = \"./run.sh\"\n[external_jobs.b]\ncommand = \"python3\"\n").unwrap();
        config.resolve_paths(Path::new("/srv/app"));
        assert_eq!(config.external_jobs["a"].command, "/srv/app/./run.sh");
        assert_eq!(config.external_jobs["b"].command, "python3");
    }
}
