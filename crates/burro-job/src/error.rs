use std::io;

/// An error of starting a job or of talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Standard input could not be read.
    #[error("reading the job payload from standard input failed: {0}")]
    ReadPayload(#[source] io::Error),
    /// Standard input held no payload line.
    #[error("no job payload on standard input (expected one JSON line)")]
    NoPayload,
    /// The payload line is not the expected JSON object.
    #[error("the job payload is not valid: {0}")]
    InvalidPayload(#[source] serde_json::Error),
    /// `socketPath` is neither a Unix socket path nor `tcp://HOST:PORT`.
    #[error("invalid socket address {0:?}: expected a Unix socket path or tcp://HOST:PORT")]
    InvalidAddress(String),
    /// No connection to the job's socket could be made.
    #[error("connecting to {address} failed: {source}")]
    Connect {
        /// The address from the payload.
        address: String,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// A message could not be written, even after reconnecting.
    #[error("sending the {kind} message failed: {source}")]
    Send {
        /// The message type, such as `progress`.
        kind: &'static str,
        /// The write or reconnection error.
        #[source]
        source: io::Error,
    },
    /// A number that JSON cannot carry, such as NaN or infinity.
    #[error("{field} must be a finite number, got {value}")]
    NotFinite {
        /// The message field.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// The job data does not deserialize into the requested type.
    #[error("the job data does not have the expected shape: {0}")]
    Data(#[source] serde_json::Error),
    /// `completed` or `failed` was already sent, so no message follows it.
    #[error("the job already sent its outcome")]
    Finished,
}
