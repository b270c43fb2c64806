//! Building the shim's spec and the job's environment. Pure functions, so
//! tests can inspect exactly what a job receives.

use super::SupervisorSettings;
use crate::config::Transport;
use crate::jobs::ExternalJob;
use crate::store::Job;
use burro_protocol::control::{ShimSpec, TransportSpec, CONTROL_VERSION};
use serde_json::value::RawValue;

/// Variables of the server's environment that a job never inherits unless
/// its configuration sets them: the API token and the database URL.
pub const SECRET_VARIABLES: &[&str] = &["BURRO_API_TOKEN", "BURRO_DATABASE_URL", "DATABASE_URL"];

/// Builds the job's environment: the server's minus its secrets, then the
/// job's configured variables, then the protocol variables.
pub fn job_environment(
    server_env: impl IntoIterator<Item = (String, String)>,
    job: &ExternalJob,
    job_id: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = server_env
        .into_iter()
        .filter(|(key, _)| !SECRET_VARIABLES.contains(&key.as_str()))
        .filter(|(key, _)| !key.starts_with("DONKEYLABS_") && key != "BURRO_MESSAGE_FD")
        .collect();
    for (key, value) in &job.config.env {
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.clone()));
    }
    env.push(("DONKEYLABS_JOB_ID".into(), job_id.to_string()));
    env.push(("DONKEYLABS_JOB_NAME".into(), job.name.clone()));
    env
}

/// Builds the spec of one attempt.
pub fn shim_spec(settings: &SupervisorSettings, job: &Job, external: &ExternalJob, token: &str, env: Vec<(String, String)>) -> ShimSpec {
    let transport = match settings.transport {
        Transport::Unix if external.run_as.is_some() => TransportSpec::Unix {
            path: super::socket_dir::user_job_socket_path(&settings.socket_dir, &job.id).display().to_string(),
        },
        Transport::Unix => TransportSpec::Unix {
            path: super::socket_dir::job_socket_path(&settings.socket_dir, &job.id).display().to_string(),
        },
        Transport::Tcp => TransportSpec::Tcp {
            port_low: settings.tcp_port_range[0],
            port_high: settings.tcp_port_range[1],
        },
    };
    let data = RawValue::from_string(job.data.to_string()).expect("a serialized Value is valid JSON");
    ShimSpec {
        version: CONTROL_VERSION,
        job_id: job.id.clone(),
        job_name: job.name.clone(),
        token: token.to_string(),
        attempt: job.attempts,
        command: external.config.command.clone(),
        args: external.config.args.clone(),
        cwd: external.config.cwd.as_ref().map(|p| p.display().to_string()),
        env,
        data,
        transport,
        control_socket: settings.control_socket().display().to_string(),
        timeout_ms: job.timeout_ms.map(|ms| ms.max(0) as u64),
        kill_grace_ms: external.kill_grace.as_millis() as u64,
        max_message_bytes: settings.max_message_bytes,
        max_connections: settings.max_connections_per_job,
        idle_timeout_ms: (external.heartbeat_timeout * 3).as_millis() as u64,
        message_fd: settings.message_fd,
        max_log_line: settings.max_log_line,
        linger_ms: settings.shim_linger.as_millis() as u64,
        exit_dir: Some(settings.exit_dir.display().to_string()),
        shell: external.config.shell,
        limits: burro_protocol::control::ResourceLimits {
            address_space: external.config.limit_address_space,
            open_files: external.config.limit_open_files,
            cpu_seconds: external.config.limit_cpu_seconds,
        },
        run_as: external.run_as,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExternalJobConfig;
    use std::time::Duration;

    #[test]
    fn environment_drops_secrets_and_adds_protocol_variables() {
        let mut config = ExternalJobConfig {
            command: "python3".into(),
            ..Default::default()
        };
        config.env.insert("MODE".into(), "fast".into());
        config.env.insert("DATABASE_URL".into(), "sqlite://explicit".into());
        let job = ExternalJob {
            name: "video".into(),
            config,
            heartbeat_timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            run_as: None,
        };
        let server = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("BURRO_API_TOKEN".to_string(), "secret".to_string()),
            ("DATABASE_URL".to_string(), "postgres://secret".to_string()),
            ("MODE".to_string(), "slow".to_string()),
        ];
        let env = job_environment(server, &job, "j1");
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/usr/bin"));
        assert_eq!(get("BURRO_API_TOKEN"), None);
        assert_eq!(get("DATABASE_URL"), Some("sqlite://explicit"));
        assert_eq!(get("MODE"), Some("fast"));
        assert_eq!(get("DONKEYLABS_JOB_ID"), Some("j1"));
        assert_eq!(get("DONKEYLABS_JOB_NAME"), Some("video"));
    }
}
