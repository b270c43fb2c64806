//! Message encoding, the payload line and the socket address: the parts that
//! the blocking and the async forms share.

use crate::Error;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Value of `protocol` in `started`: this library reads server messages.
pub(crate) const PROTOCOL_VERSION: u64 = 2;

/// Interval of the background heartbeat.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long the first connection, and each reconnection after a failed
/// write, keeps retrying.
pub(crate) const CONNECT_WINDOW: Duration = Duration::from_secs(10);

/// First and longest pause between connection attempts.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A server line longer than this is discarded, so a broken peer cannot make
/// the reader's buffer grow without bound.
const MAX_SERVER_LINE: usize = 1 << 20;

/// The line that burro writes to the job's standard input.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Payload {
    #[serde(rename = "jobId")]
    pub(crate) job_id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) data: Value,
    #[serde(rename = "socketPath")]
    pub(crate) socket_path: String,
}

impl Payload {
    /// Reads the first line of `input` and parses it.
    pub(crate) fn read(mut input: impl std::io::BufRead) -> Result<Payload, Error> {
        let mut line = String::new();
        input.read_line(&mut line).map_err(Error::ReadPayload)?;
        Payload::parse(&line)
    }

    pub(crate) fn parse(line: &str) -> Result<Payload, Error> {
        if line.trim().is_empty() {
            return Err(Error::NoPayload);
        }
        serde_json::from_str(line).map_err(Error::InvalidPayload)
    }
}

/// Address of the job's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Unix(PathBuf),
    /// `HOST:PORT`, as given after `tcp://`.
    Tcp(String),
}

impl Address {
    pub(crate) fn parse(text: &str) -> Result<Address, Error> {
        if let Some(rest) = text.strip_prefix("tcp://") {
            let valid = rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0));
            if valid {
                Ok(Address::Tcp(rest.to_string()))
            } else {
                Err(Error::InvalidAddress(text.to_string()))
            }
        } else if text.is_empty() || text.contains("://") {
            Err(Error::InvalidAddress(text.to_string()))
        } else {
            Ok(Address::Unix(PathBuf::from(text)))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp(host_port) => write!(f, "tcp://{host_port}"),
        }
    }
}

/// Returns the milliseconds since the Unix epoch, or 0 when the clock is
/// before it.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// Encodes one message line, newline included. The fields come in this
/// order: `type`, `jobId`, `timestamp`, then `fields` as given.
pub(crate) fn encode(kind: &str, job_id: &str, timestamp: u64, fields: &[(&str, Value)]) -> Vec<u8> {
    let mut line = Vec::with_capacity(96);
    line.extend_from_slice(b"{\"type\":");
    push_json(&mut line, &Value::from(kind));
    line.extend_from_slice(b",\"jobId\":");
    push_json(&mut line, &Value::from(job_id));
    line.extend_from_slice(b",\"timestamp\":");
    line.extend_from_slice(timestamp.to_string().as_bytes());
    for (name, value) in fields {
        line.push(b',');
        push_json(&mut line, &Value::from(*name));
        line.push(b':');
        push_json(&mut line, value);
    }
    line.extend_from_slice(b"}\n");
    line
}

fn push_json(out: &mut Vec<u8>, value: &Value) {
    // A Value always serializes: its map keys are strings and its numbers
    // are finite. Writing to a Vec cannot fail either.
    serde_json::to_writer(out, value).expect("a JSON value serializes");
}

/// Converts a finite `f64` to a JSON number.
pub(crate) fn finite(field: &'static str, value: f64) -> Result<Value, Error> {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .ok_or(Error::NotFinite { field, value })
}

/// Builds the fields of a `progress` message.
pub(crate) fn progress_fields(percent: f64, message: Option<&str>) -> Result<Vec<(&'static str, Value)>, Error> {
    let mut fields = vec![("percent", finite("percent", percent)?)];
    if let Some(message) = message {
        fields.push(("message", Value::from(message)));
    }
    Ok(fields)
}

/// Builds the fields of a `failed` message.
pub(crate) fn failed_fields(error: String, stack: Option<String>) -> Vec<(&'static str, Value)> {
    let mut fields = vec![("error", Value::from(error))];
    if let Some(stack) = stack {
        fields.push(("stack", Value::from(stack)));
    }
    fields
}

/// Returns the error text for a panic payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        format!("the job panicked: {text}")
    } else if let Some(text) = payload.downcast_ref::<String>() {
        format!("the job panicked: {text}")
    } else {
        "the job panicked".to_string()
    }
}

/// A message from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerMessage {
    Cancel { reason: Option<String> },
}

/// Parses one server line. Blank lines, invalid JSON and types that this
/// version does not know give `None`.
pub(crate) fn parse_server_line(line: &[u8]) -> Option<ServerMessage> {
    let value: Value = serde_json::from_slice(line).ok()?;
    match value.get("type")?.as_str()? {
        "cancel" => Some(ServerMessage::Cancel {
            reason: value.get("reason").and_then(Value::as_str).map(str::to_string),
        }),
        _ => None,
    }
}

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
    discarding: bool,
}

impl LineSplitter {
    /// Appends `chunk` and calls `on_line` with each complete line, without
    /// its newline. A line longer than the limit is skipped up to its newline.
    pub(crate) fn push(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            if self.discarding {
                self.discarding = false;
            } else {
                self.pending.extend_from_slice(&rest[..end]);
                on_line(&self.pending);
            }
            self.pending.clear();
            rest = &rest[end + 1..];
        }
        if !self.discarding {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > MAX_SERVER_LINE {
                eprintln!("burro-job: discarding a server line longer than {MAX_SERVER_LINE} bytes");
                self.pending.clear();
                self.discarding = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_fields_in_order() {
        let line = encode(
            "progress",
            "j1",
            7,
            &[("percent", json!(40)), ("message", json!("a \"b\"\n"))],
        );
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"type\":\"progress\",\"jobId\":\"j1\",\"timestamp\":7,\"percent\":40,\"message\":\"a \\\"b\\\"\\n\"}\n"
        );
    }

    #[test]
    fn rejects_non_finite_percent() {
        assert!(matches!(
            progress_fields(f64::NAN, None),
            Err(Error::NotFinite { field: "percent", .. })
        ));
        assert_eq!(progress_fields(12.5, None).unwrap(), vec![("percent", json!(12.5))]);
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Address::parse("/tmp/a.sock").unwrap(),
            Address::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:4100").unwrap(),
            Address::Tcp("127.0.0.1:4100".into())
        );
        for bad in [
            "",
            "tcp://127.0.0.1",
            "tcp://:80",
            "tcp://127.0.0.1:0",
            "tcp://h:x",
            "udp://h:1",
        ] {
            assert!(matches!(Address::parse(bad), Err(Error::InvalidAddress(_))), "{bad}");
        }
    }

    #[test]
    fn parses_payload() {
        let payload = Payload::parse(r#"{"jobId":"j","name":"n","data":{"a":1},"socketPath":"/s"}"#).unwrap();
        assert_eq!((payload.job_id.as_str(), payload.name.as_str()), ("j", "n"));
        assert_eq!(payload.data, json!({"a": 1}));
        assert!(matches!(Payload::parse("  \n"), Err(Error::NoPayload)));
        assert!(matches!(Payload::parse("[1]"), Err(Error::InvalidPayload(_))));
    }

    #[test]
    fn parses_server_lines() {
        assert_eq!(
            parse_server_line(br#"{"type":"cancel","jobId":"j","reason":"cancel requested"}"#),
            Some(ServerMessage::Cancel {
                reason: Some("cancel requested".into())
            })
        );
        assert_eq!(
            parse_server_line(br#"{"type":"cancel"}"#),
            Some(ServerMessage::Cancel { reason: None })
        );
        assert_eq!(parse_server_line(br#"{"type":"later"}"#), None);
        assert_eq!(parse_server_line(b"not json"), None);
        assert_eq!(parse_server_line(b""), None);
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(b"ab", |line| lines.push(line.to_vec()));
        splitter.push(b"c\nd\n\ne", |line| lines.push(line.to_vec()));
        assert_eq!(lines, vec![b"abc".to_vec(), b"d".to_vec(), b"".to_vec()]);
    }

    #[test]
    fn skips_overlong_lines() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(&vec![b'x'; MAX_SERVER_LINE + 1], |line| lines.push(line.to_vec()));
        splitter.push(b"xx\nok\n", |line| lines.push(line.to_vec()));
        assert_eq!(lines, vec![b"ok".to_vec()]);
    }
}
