//! Wire contract between burro and job processes.
//!
//! - [`message`]: the newline-delimited JSON messages a job sends, with
//!   validation that names the field and the value at fault.
//! - [`payload`]: the one line a job reads on standard input.
//! - [`framing`]: splitting a byte stream into lines with a maximum size.
//! - [`control`]: the envelopes a `burro-shim` exchanges with the server
//!   over the control socket.
//! - [`names`]: job names and ids that are safe in event names and paths.

pub mod control;
pub mod framing;
pub mod message;
pub mod names;
pub mod payload;

pub use framing::{LineBuffer, LineEvent, LineSlice};
pub use message::{parse_line, JobMessage, LogLevel, MessageError, ParsedMessage};
pub use payload::Payload;

/// Default maximum size of one message line, in bytes (16 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Maximum length of a Unix socket path on Linux, in bytes, without the
/// terminating NUL (`sizeof(sun_path)` is 108).
pub const UNIX_SOCKET_PATH_MAX: usize = 107;
