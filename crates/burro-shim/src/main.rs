//! `burro-shim`: the per-job supervisor.
//!
//! burro starts one shim per running external job and writes a
//! [`ShimSpec`] line to its standard input. The shim runs in its own
//! session, owns the job's socket and output pipes, starts the job in its own
//! process group, forwards everything the job sends to the server's control
//! socket, reaps the job and reports its exit. Because the shim, not the
//! server, is the job's parent, the job keeps running and reachable while the
//! server restarts.

mod connections;
mod process;
mod session;
mod spool;
mod supervise;

use burro_protocol::control::{ShimSpec, CONTROL_VERSION};
use std::io::Read;
use std::process::ExitCode;

/// Largest spec accepted on standard input (the job data is part of it).
const MAX_SPEC_BYTES: u64 = 256 * 1024 * 1024;

fn main() -> ExitCode {
    restore_open_files_limit();
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("burro-shim: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("burro-shim: job {}: starting the runtime failed: {err}", spec.job_id);
            return ExitCode::from(2);
        }
    };
    let job_id = spec.job_id.clone();
    match runtime.block_on(supervise::run(spec)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("burro-shim: job {job_id}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Lowers the open-files soft limit to the value in `BURRO_SHIM_NOFILE`,
/// the limit the server started with before it raised its own. The job
/// inherits the lowered limit.
fn restore_open_files_limit() {
    let Some(soft) = std::env::var("BURRO_SHIM_NOFILE").ok().and_then(|text| text.parse::<libc::rlim_t>().ok()) else {
        return;
    };
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only access the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && soft < limit.rlim_cur {
            limit.rlim_cur = soft;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn read_spec() -> Result<ShimSpec, String> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_SPEC_BYTES)
        .read_to_end(&mut input)
        .map_err(|err| format!("reading the job spec from standard input failed: {err}"))?;
    let spec: ShimSpec = serde_json::from_slice(&input)
        .map_err(|err| format!("invalid job spec on standard input: {err}"))?;
    if spec.version != CONTROL_VERSION {
        return Err(format!(
            "job {}: spec version {} is not supported by this shim (it speaks version {CONTROL_VERSION}); \
             install burro-shim from the same build as burro",
            spec.job_id, spec.version
        ));
    }
    Ok(spec)
}

/// Writes one diagnostic line to the shim's standard error, which the server
/// points at a file under its data directory.
macro_rules! shim_log {
    ($job:expr, $($arg:tt)*) => {
        eprintln!("burro-shim: job {}: {}", $job, format_args!($($arg)*))
    };
}
pub(crate) use shim_log;
