//! `burro-shim`: the per-job supervisor.
//!
//! burro runs one shim per running external job, forked by the launcher
//! (`burro-shim --launcher`, see `launcher`) or started directly with
//! `--spec-file PATH`, and gives it a [`ShimSpec`] in that file (or on
//! standard input). The shim owns the job's socket and output pipes, starts
//! the job in its own process group, forwards everything the job sends to
//! the server's control socket, reaps the job and reports its exit. Because
//! the shim, not the server, is the job's parent, the job keeps running and
//! reachable while the server restarts.

mod connections;
mod launcher;
mod process;
mod session;
mod spool;
mod supervise;

use burro_protocol::control::{ShimSpec, CONTROL_VERSION};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::process::ExitCode;

/// Largest spec accepted, in a file or on standard input (the job data is
/// part of it).
const MAX_SPEC_BYTES: u64 = 256 * 1024 * 1024;

fn main() -> ExitCode {
    restore_open_files_limit();
    let arguments: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let source = match arguments.as_slice() {
        [flag] if flag == "--launcher" => return launcher::run(),
        [flag, path] if flag == "--spec-file" => SpecSource::File(std::path::PathBuf::from(path)),
        [] => SpecSource::Stdin,
        _ => {
            eprintln!("burro-shim: invalid arguments {arguments:?}; usage: burro-shim [--spec-file PATH | --launcher] (the burro server starts this program)");
            return ExitCode::from(2);
        }
    };
    ExitCode::from(run_shim(source, None))
}

/// Source of a shim's spec.
pub(crate) enum SpecSource {
    File(std::path::PathBuf),
    Stdin,
}

/// Runs one shim to the end and returns its exit status: 0 once the job's
/// exit was reported, 1 when supervision failed, 2 when the spec was
/// unusable or the runtime did not start.
pub(crate) fn run_shim(source: SpecSource, log: Option<PathBuf>) -> u8 {
    if let Some(path) = log {
        let _ = LOG_PATH.set(path);
    }
    let spec = match read_spec(source) {
        Ok(spec) => spec,
        Err(err) => {
            diag!("{err}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            shim_log!(spec.job_id, "starting the runtime failed: {err}");
            return 2;
        }
    };
    let job_id = spec.job_id.clone();
    match runtime.block_on(supervise::run(spec)) {
        Ok(()) => 0,
        Err(err) => {
            shim_log!(job_id, "{err}");
            1
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

/// Reads the spec from the file after `--spec-file`, or else from standard
/// input. The file is claimed by renaming it before it is read, so a
/// restarted server that takes the file back first (because it found no
/// shim had it) makes this shim exit without starting the job. The claimed
/// file stays in place, because it contains the shim's token, which a
/// restarted server reads there. The server removes it once the job ends.
fn read_spec(source: SpecSource) -> Result<ShimSpec, String> {
    let mut input = Vec::new();
    let source = match source {
        SpecSource::File(path) => {
            let claimed = path.with_extension("spec.claimed");
            std::fs::rename(&path, &claimed)
                .map_err(|err| format!("claiming the job spec file {} failed (a restarted server may have taken it back): {err}", path.display()))?;
            // File's own read_to_end sizes its buffer from the file's length;
            // through Take it would read in small, growing pieces.
            let read = std::fs::File::open(&claimed).and_then(|mut file| {
                let length = file.metadata()?.len();
                if length > MAX_SPEC_BYTES {
                    return Err(std::io::Error::other(format!("the spec file has {length} bytes, more than the {MAX_SPEC_BYTES} accepted")));
                }
                file.read_to_end(&mut input)
            });
            read.map_err(|err| format!("reading the job spec file {} failed: {err}", claimed.display()))?;
            "the spec file"
        }
        SpecSource::Stdin => {
            std::io::stdin()
                .take(MAX_SPEC_BYTES)
                .read_to_end(&mut input)
                .map_err(|err| format!("reading the job spec from standard input failed: {err}"))?;
            "standard input"
        }
    };
    let spec: ShimSpec = serde_json::from_slice(&input).map_err(|err| format!("invalid job spec on {source}: {err}"))?;
    if spec.version != CONTROL_VERSION {
        return Err(format!(
            "job {}: spec version {} is not supported by this shim (it speaks version {CONTROL_VERSION}); \
             install burro-shim from the same build as burro",
            spec.job_id, spec.version
        ));
    }
    Ok(spec)
}

/// Path of the diagnostic log of a shim forked by the launcher. The file is
/// created at the first line, so a job whose shim has nothing to report
/// leaves no file. A shim started directly writes to standard error, which
/// the server points at the same file.
static LOG_PATH: OnceLock<PathBuf> = OnceLock::new();
static LOG_FILE: OnceLock<Option<File>> = OnceLock::new();

/// Appends one line to the shim's diagnostic log, or to standard error
/// when the log cannot be opened. One write per line keeps a line whole
/// when other processes append to the same file.
pub(crate) fn write_diagnostic(args: std::fmt::Arguments<'_>) {
    let line = format!("burro-shim: {args}\n");
    let file = LOG_PATH.get().and_then(|path| {
        LOG_FILE
            .get_or_init(|| OpenOptions::new().create(true).append(true).open(path).ok())
            .as_ref()
    });
    let written = match file {
        Some(mut file) => file.write_all(line.as_bytes()),
        None => std::io::stderr().write_all(line.as_bytes()),
    };
    // Nowhere is left to report a failed diagnostic.
    let _ = written;
}

/// Writes one diagnostic line, prefixed with `burro-shim: `.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::write_diagnostic(format_args!($($arg)*))
    };
}
pub(crate) use diag;

/// Writes one diagnostic line about job `$job`.
macro_rules! shim_log {
    ($job:expr, $($arg:tt)*) => {
        $crate::write_diagnostic(format_args!("job {}: {}", $job, format_args!($($arg)*)))
    };
}
pub(crate) use shim_log;
