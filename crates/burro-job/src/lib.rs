//! Write burro external jobs in Rust.
//!
//! burro starts an external job as a process and writes one JSON line to its
//! standard input: the job's id, name, data and the address of a socket. The
//! job reports `started`, `progress`, `log`, `heartbeat` and finally
//! `completed` or `failed` over that socket as newline-delimited JSON, and
//! may receive `cancel` on it. This crate does all of that; the job supplies
//! a handler:
//!
//! ```no_run
//! use serde_json::json;
//!
//! fn main() {
//!     burro_job::run_job_blocking(|job| {
//!         let images = job.data()["images"].as_array().cloned().unwrap_or_default();
//!         for (index, image) in images.iter().enumerate() {
//!             if job.is_cancelled() {
//!                 break;
//!             }
//!             job.progress(index as f64 * 100.0 / images.len() as f64, Some("resizing"))?;
//!             job.info(&format!("resizing {image}"))?;
//!         }
//!         Ok::<_, burro_job::Error>(json!({ "resized": images.len() }))
//!     })
//! }
//! ```
//!
//! With the `tokio` feature, [`run_job`] runs an async handler that gets an
//! [`AsyncJob`].
//!
//! Every message carries `type`, `jobId` and `timestamp` (milliseconds since
//! the Unix epoch). `started` announces `"protocol": 2`, so the server sends
//! `cancel` on the connection before it signals the process. `is_cancelled`
//! and the wait methods report that message to the handler.

mod blocking;
mod error;
mod wire;

#[cfg(feature = "tokio")]
mod nonblocking;

pub use blocking::{run_job_blocking, Job};
pub use error::Error;

#[cfg(feature = "tokio")]
pub use nonblocking::{run_job, AsyncJob};

use std::fmt;
use std::io::Write;

/// Level of a `log` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// Returns the level as the protocol spells it: `debug`, `info`, `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flushes the standard streams, which `std::process::exit` does not do,
/// and exits with `code`.
fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}
