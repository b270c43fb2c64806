//! Messages a job sends to the server, one JSON object per line.
//!
//! Parsing is strict about the fields the server acts on and lenient about
//! everything else. Unknown fields are ignored, and a missing or non-numeric
//! `timestamp` is replaced by the receipt time. An unknown `type` is reported
//! as [`JobMessage::Unknown`], so the caller can log and ignore it.

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use thiserror::Error;

/// Level of a `log` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Returns the wire name: `debug`, `info`, `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// Parses a wire name. `warning` is accepted as `warn`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed content of one message line.
#[derive(Debug, Clone, PartialEq)]
pub enum JobMessage {
    /// The job initialised. `protocol` is 2 when the connection can receive
    /// server messages (burro extension), absent for compatible workers.
    Started { protocol: Option<u32> },
    /// `percent` is already clamped to 0–100.
    Progress {
        percent: f64,
        message: Option<String>,
        data: Option<Value>,
    },
    Heartbeat,
    Log {
        level: LogLevel,
        message: String,
        data: Option<Value>,
    },
    Completed { result: Option<Value> },
    Failed { error: String, stack: Option<String> },
    /// A `type` this server does not know; log it and go on.
    Unknown { kind: String },
}

impl JobMessage {
    /// Returns the wire `type` of the message.
    pub fn kind(&self) -> &str {
        match self {
            JobMessage::Started { .. } => "started",
            JobMessage::Progress { .. } => "progress",
            JobMessage::Heartbeat => "heartbeat",
            JobMessage::Log { .. } => "log",
            JobMessage::Completed { .. } => "completed",
            JobMessage::Failed { .. } => "failed",
            JobMessage::Unknown { kind } => kind,
        }
    }

    /// Returns true for `completed` and `failed`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobMessage::Completed { .. } | JobMessage::Failed { .. })
    }
}

/// A validated message line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMessage<'a> {
    /// Borrowed from the line unless it contains escapes.
    pub job_id: Cow<'a, str>,
    /// The job's own timestamp in milliseconds since the Unix epoch, if it
    /// sent a number. Liveness never uses it.
    pub timestamp: Option<i64>,
    pub message: JobMessage,
    /// The original `percent` when it was outside 0–100 and was clamped.
    pub clamped_percent: Option<f64>,
}

/// Reason a line was rejected. Each variant names the field and the value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MessageError {
    #[error("invalid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("invalid message: expected a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("invalid message: missing field `{field}`")]
    MissingField { field: &'static str },
    #[error("invalid message: field `{field}` must be {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("invalid message: field `{field}` has value {value}: {reason}")]
    InvalidValue {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Parses and validates one message line (without its newline).
///
/// # Errors
///
/// Returns a [`MessageError`] naming the field at fault for invalid JSON, a
/// non-object, a missing `type` or `jobId`, or a field of the wrong type.
pub fn parse_line(line: &[u8]) -> Result<ParsedMessage<'_>, MessageError> {
    if let Some(parsed) = parse_common(line) {
        return Ok(parsed);
    }
    parse_value(line)
}

/// The fields of the messages a job sends most, read straight from the
/// line without building a map of every field. Unknown fields are skipped.
#[derive(serde::Deserialize)]
struct CommonLine<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "jobId", borrow)]
    job_id: Cow<'a, str>,
    timestamp: Option<f64>,
    percent: Option<f64>,
    message: Option<String>,
    data: Option<Value>,
    #[serde(borrow)]
    level: Option<Cow<'a, str>>,
    protocol: Option<u64>,
}

/// Parses a valid `started`, `progress`, `heartbeat` or `log` line.
/// Returns `None` for every other line, valid or not, which
/// [`parse_value`] then parses, so the result and the error are always
/// those of [`parse_value`]. A line with a duplicate field or a field of an
/// unexpected type fails here and goes there too.
fn parse_common(line: &[u8]) -> Option<ParsedMessage<'_>> {
    let common: CommonLine<'_> = serde_json::from_slice(line).ok()?;
    let data_is_valid = matches!(common.data, None | Some(Value::Object(_)));
    let mut clamped_percent = None;
    let message = match common.kind.as_ref() {
        "started" => JobMessage::Started {
            protocol: match common.protocol {
                None => None,
                Some(version) => Some(u32::try_from(version).ok()?),
            },
        },
        "progress" if data_is_valid => {
            let percent;
            (percent, clamped_percent) = clamp_percent(common.percent?);
            JobMessage::Progress {
                percent,
                message: common.message,
                data: common.data,
            }
        }
        "heartbeat" => JobMessage::Heartbeat,
        "log" if data_is_valid => JobMessage::Log {
            level: LogLevel::parse(common.level.as_deref()?)?,
            message: common.message?,
            data: common.data,
        },
        _ => return None,
    };
    Some(ParsedMessage {
        job_id: common.job_id,
        timestamp: common.timestamp.and_then(finite_millis),
        message,
        clamped_percent,
    })
}

/// Parses a line into a [`Value`] first. It is slower than
/// [`parse_common`], but it accepts every line the protocol allows and
/// names the field at fault in every other.
fn parse_value(line: &[u8]) -> Result<ParsedMessage<'static>, MessageError> {
    // Lines that are not UTF-8 fail here too, and serde names the column.
    let value: Value = serde_json::from_slice(line).map_err(|err| MessageError::InvalidJson {
        reason: err.to_string(),
    })?;
    let Value::Object(mut object) = value else {
        return Err(MessageError::NotAnObject {
            found: type_name(&value),
        });
    };

    let kind = required_string(&mut object, "type")?;
    let job_id = required_string(&mut object, "jobId")?;
    let timestamp = object.get("timestamp").and_then(timestamp_millis);

    let mut clamped_percent = None;
    let message = match kind.as_str() {
        "started" => JobMessage::Started {
            protocol: optional_protocol(&object)?,
        },
        "progress" => {
            let raw = match object.get("percent") {
                None | Some(Value::Null) => return Err(MessageError::MissingField { field: "percent" }),
                Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                Some(other) => {
                    return Err(wrong_type("percent", "a number", other));
                }
            };
            if raw.is_nan() {
                return Err(MessageError::InvalidValue {
                    field: "percent",
                    value: "NaN".into(),
                    reason: "expected a number from 0 to 100",
                });
            }
            let percent;
            (percent, clamped_percent) = clamp_percent(raw);
            JobMessage::Progress {
                percent,
                message: optional_string(&mut object, "message")?,
                data: optional_object(&mut object, "data")?,
            }
        }
        "heartbeat" => JobMessage::Heartbeat,
        "log" => {
            let level_text = required_string(&mut object, "level")?;
            let level = LogLevel::parse(&level_text).ok_or_else(|| MessageError::InvalidValue {
                field: "level",
                value: format!("{level_text:?}"),
                reason: "expected one of \"debug\", \"info\", \"warn\", \"error\"",
            })?;
            JobMessage::Log {
                level,
                message: required_string(&mut object, "message")?,
                data: optional_object(&mut object, "data")?,
            }
        }
        "completed" => JobMessage::Completed {
            result: object.remove("result"),
        },
        "failed" => JobMessage::Failed {
            error: required_string(&mut object, "error")?,
            stack: optional_string(&mut object, "stack")?,
        },
        _ => JobMessage::Unknown { kind },
    };

    Ok(ParsedMessage {
        job_id: Cow::Owned(job_id),
        timestamp,
        message,
        clamped_percent,
    })
}

/// Clamps a progress percent to 0–100; returns it and, when it changed,
/// the original.
fn clamp_percent(raw: f64) -> (f64, Option<f64>) {
    let percent = raw.clamp(0.0, 100.0);
    (percent, (percent != raw).then_some(raw))
}

fn required_string(object: &mut Map<String, Value>, field: &'static str) -> Result<String, MessageError> {
    match object.remove(field) {
        None | Some(Value::Null) => Err(MessageError::MissingField { field }),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

fn optional_string(object: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>, MessageError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

fn optional_object(object: &mut Map<String, Value>, field: &'static str) -> Result<Option<Value>, MessageError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value)),
        Some(other) => Err(wrong_type(field, "an object", &other)),
    }
}

fn optional_protocol(object: &Map<String, Value>) -> Result<Option<u32>, MessageError> {
    match object.get("protocol") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(version) => Ok(Some(version)),
            None => Err(MessageError::InvalidValue {
                field: "protocol",
                value: n.to_string(),
                reason: "expected a positive integer such as 2",
            }),
        },
        Some(other) => Err(wrong_type("protocol", "an integer", other)),
    }
}

fn timestamp_millis(value: &Value) -> Option<i64> {
    finite_millis(value.as_f64()?)
}

fn finite_millis(number: f64) -> Option<i64> {
    if number.is_finite() && number.abs() < 1e15 {
        Some(number as i64)
    } else {
        None
    }
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Value) -> MessageError {
    MessageError::WrongType {
        field,
        expected,
        found: describe(found),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Describes a value for an error message: its type and a short excerpt.
fn describe(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 40 {
        let mut cut = 37;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    format!("{} {text}", type_name(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(line: &str) -> ParsedMessage<'_> {
        parse_line(line.as_bytes()).unwrap_or_else(|e| panic!("{line} should parse: {e}"))
    }

    #[test]
    fn valid_lines() {
        let cases: Vec<(&str, JobMessage)> = vec![
            (r#"{"type":"started","jobId":"j","timestamp":1}"#, JobMessage::Started { protocol: None }),
            (r#"{"type":"started","jobId":"j","protocol":2}"#, JobMessage::Started { protocol: Some(2) }),
            (
                r#"{"type":"progress","jobId":"j","timestamp":1,"percent":50,"message":"half","data":{"step":"resize"}}"#,
                JobMessage::Progress { percent: 50.0, message: Some("half".into()), data: Some(json!({"step":"resize"})) },
            ),
            (r#"{"type":"progress","jobId":"j","percent":12.5}"#, JobMessage::Progress { percent: 12.5, message: None, data: None }),
            (r#"{"type":"progress","jobId":"j","percent":1,"message":null,"data":null}"#, JobMessage::Progress { percent: 1.0, message: None, data: None }),
            (r#"{"type":"heartbeat","jobId":"j","timestamp":1}"#, JobMessage::Heartbeat),
            (
                r#"{"type":"log","jobId":"j","level":"warn","message":"careful","data":{"k":1}}"#,
                JobMessage::Log { level: LogLevel::Warn, message: "careful".into(), data: Some(json!({"k":1})) },
            ),
            (r#"{"type":"log","jobId":"j","level":"debug","message":""}"#, JobMessage::Log { level: LogLevel::Debug, message: String::new(), data: None }),
            (r#"{"type":"completed","jobId":"j","result":{"ok":true}}"#, JobMessage::Completed { result: Some(json!({"ok":true})) }),
            (r#"{"type":"completed","jobId":"j","result":[1,2]}"#, JobMessage::Completed { result: Some(json!([1,2])) }),
            (r#"{"type":"completed","jobId":"j"}"#, JobMessage::Completed { result: None }),
            (r#"{"type":"failed","jobId":"j","error":"boom","stack":"at line 1"}"#, JobMessage::Failed { error: "boom".into(), stack: Some("at line 1".into()) }),
            (r#"{"type":"failed","jobId":"j","error":"boom"}"#, JobMessage::Failed { error: "boom".into(), stack: None }),
            (r#"{"type":"resize","jobId":"j"}"#, JobMessage::Unknown { kind: "resize".into() }),
            (r#"{"type":"heartbeat","jobId":"j","extra":{"ignored":true}}"#, JobMessage::Heartbeat),
            ("{\"type\":\"log\",\"jobId\":\"j\",\"level\":\"info\",\"message\":\"caf\u{e9} \\\"q\\\" \\n\"}", JobMessage::Log { level: LogLevel::Info, message: "caf\u{e9} \"q\" \n".into(), data: None }),
        ];
        for (line, expected) in cases {
            assert_eq!(ok(line).message, expected, "line: {line}");
        }
    }

    #[test]
    fn timestamp_is_optional_and_lenient() {
        assert_eq!(ok(r#"{"type":"heartbeat","jobId":"j","timestamp":1700000000123}"#).timestamp, Some(1_700_000_000_123));
        assert_eq!(ok(r#"{"type":"heartbeat","jobId":"j"}"#).timestamp, None);
        assert_eq!(ok(r#"{"type":"heartbeat","jobId":"j","timestamp":"yesterday"}"#).timestamp, None);
        assert_eq!(ok(r#"{"type":"heartbeat","jobId":"j","timestamp":null}"#).timestamp, None);
    }

    #[test]
    fn percent_outside_range_is_clamped() {
        let high = ok(r#"{"type":"progress","jobId":"j","percent":150}"#);
        assert_eq!(high.message, JobMessage::Progress { percent: 100.0, message: None, data: None });
        assert_eq!(high.clamped_percent, Some(150.0));
        let low = ok(r#"{"type":"progress","jobId":"j","percent":-3}"#);
        assert_eq!(low.message, JobMessage::Progress { percent: 0.0, message: None, data: None });
        assert_eq!(low.clamped_percent, Some(-3.0));
        assert_eq!(ok(r#"{"type":"progress","jobId":"j","percent":100}"#).clamped_percent, None);
    }

    #[test]
    fn invalid_lines_name_the_field() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "invalid JSON"),
            (b"{\"type\":\"heartbeat\"", "invalid JSON"),
            (b"", "invalid JSON"),
            (b"\xff\xfe{}", "invalid JSON"),
            (b"[1,2]", "expected a JSON object, found an array"),
            (b"\"text\"", "expected a JSON object, found a string"),
            (br#"{"jobId":"j"}"#, "missing field `type`"),
            (br#"{"type":"heartbeat"}"#, "missing field `jobId`"),
            (br#"{"type":"heartbeat","jobId":null}"#, "missing field `jobId`"),
            (br#"{"type":7,"jobId":"j"}"#, "field `type` must be a string, found a number 7"),
            (br#"{"type":"heartbeat","jobId":42}"#, "field `jobId` must be a string, found a number 42"),
            (br#"{"type":"progress","jobId":"j"}"#, "missing field `percent`"),
            (br#"{"type":"progress","jobId":"j","percent":"50"}"#, "field `percent` must be a number, found a string \"50\""),
            (br#"{"type":"progress","jobId":"j","percent":5,"message":5}"#, "field `message` must be a string"),
            (br#"{"type":"progress","jobId":"j","percent":5,"data":[1]}"#, "field `data` must be an object, found an array"),
            (br#"{"type":"log","jobId":"j","message":"m"}"#, "missing field `level`"),
            (br#"{"type":"log","jobId":"j","level":"loud","message":"m"}"#, "field `level` has value \"loud\""),
            (br#"{"type":"log","jobId":"j","level":"info"}"#, "missing field `message`"),
            (br#"{"type":"log","jobId":"j","level":"info","message":{"a":1}}"#, "field `message` must be a string, found an object"),
            (br#"{"type":"failed","jobId":"j"}"#, "missing field `error`"),
            (br#"{"type":"failed","jobId":"j","error":{"code":1}}"#, "field `error` must be a string"),
            (br#"{"type":"failed","jobId":"j","error":"e","stack":1}"#, "field `stack` must be a string"),
            (br#"{"type":"started","jobId":"j","protocol":"2"}"#, "field `protocol` must be an integer"),
            (br#"{"type":"started","jobId":"j","protocol":-1}"#, "field `protocol` has value -1"),
        ];
        for (line, expected) in cases {
            let err = parse_line(line).expect_err(&format!("{} should be rejected", String::from_utf8_lossy(line)));
            let text = err.to_string();
            assert!(text.contains(expected), "line {:?}: error {text:?} should contain {expected:?}", String::from_utf8_lossy(line));
        }
    }

    /// Lines of every kind, valid and invalid, on which the fast path and
    /// the map-based parser must agree.
    fn agreement_lines() -> Vec<String> {
        let mut lines: Vec<String> = [
            r#"{"type":"progress","jobId":"j","percent":50,"message":"half","data":{"a":[1,{"b":null}]},"timestamp":1700000000000}"#,
            r#"{"type":"progress","jobId":"j","percent":50,"percent":60}"#,
            r#"{"type":"progress","jobId":"j","percent":null}"#,
            r#"{"type":"progress","jobId":"j","percent":1e400}"#,
            r#"{"type":"progress","jobId":"j","percent":18446744073709551615}"#,
            r#"{"type":"progress","jobId":"j","percent":-0.0}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"data":"text"}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"data":null,"message":null}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"level":7}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"protocol":"x"}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"timestamp":"soon"}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"timestamp":1e300}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"timestamp":-1700000000000.7}"#,
            r#"{"type":"progress","jobId":"j","percent":5,"unknown":{"deep":[1,2,3]},"more":"x"}"#,
            r#"{"type":"progress","jobId":"j
","percent":5,"message":"café "q""}"#,
            r#"{"type":"heartbeat","jobId":"j","percent":"x","data":5,"message":7}"#,
            r#"{"type":"heartbeat","jobId":"j","timestamp":17}"#,
            r#"{"type":"heartbeat","jobId":"j","jobId":"k"}"#,
            r#"{"type":"heartbeat"}"#,
            r#"{"type":"heartbeat","jobId":null}"#,
            r#"{"type":null,"jobId":"j"}"#,
            r#"{"type":"log","jobId":"j","level":"warning","message":"m","data":{"k":1}}"#,
            r#"{"type":"log","jobId":"j","level":"WARN","message":"m"}"#,
            r#"{"type":"log","jobId":"j","level":"info","message":null}"#,
            r#"{"type":"log","jobId":"j","level":null,"message":"m"}"#,
            r#"{"type":"log","jobId":"j","level":"info","message":"m","data":[1]}"#,
            r#"{"type":"started","jobId":"j","protocol":2}"#,
            r#"{"type":"started","jobId":"j","protocol":4294967296}"#,
            r#"{"type":"started","jobId":"j","protocol":2.0}"#,
            r#"{"type":"started","jobId":"j","protocol":null,"percent":"x"}"#,
            r#"{"type":"completed","jobId":"j","result":null}"#,
            r#"{"type":"completed","jobId":"j","result":{"r":1},"percent":3}"#,
            r#"{"type":"failed","jobId":"j","error":"e","message":"m"}"#,
            r#"{"type":"other","jobId":"j","percent":3}"#,
            r#"  {"type":"heartbeat","jobId":"j"}  "#,
            r#"{"type":"heartbeat","jobId":"j"} trailing"#,
            r#"[{"type":"heartbeat","jobId":"j"}]"#,
            "",
            "null",
        ]
        .iter()
        .map(|line| line.to_string())
        .collect();
        // Every field of the fast path, in every kind, with each kind of value.
        let values = ["null", "true", "3", "-2.5", r#""text""#, "[1]", r#"{"k":"v"}"#];
        for kind in ["started", "progress", "heartbeat", "log", "completed"] {
            for field in ["percent", "message", "data", "level", "protocol", "timestamp"] {
                for value in values {
                    lines.push(format!(r#"{{"type":"{kind}","jobId":"j","percent":42,"level":"info","message":"m","{field}":{value}}}"#));
                    lines.push(format!(r#"{{"type":"{kind}","jobId":"j","{field}":{value}}}"#));
                }
            }
        }
        lines
    }

    #[test]
    fn fast_path_agrees_with_map_parser() {
        for line in agreement_lines() {
            let fast = parse_line(line.as_bytes());
            let full = parse_value(line.as_bytes());
            assert_eq!(fast, full, "line: {line}");
        }
    }

    #[test]
    fn fast_path_takes_common_lines() {
        for line in [
            r#"{"type":"progress","jobId":"j","percent":50,"message":"m","data":{"k":1}}"#,
            r#"{"type":"heartbeat","jobId":"j"}"#,
            r#"{"type":"log","jobId":"j","level":"info","message":"m"}"#,
            r#"{"type":"started","jobId":"j","protocol":2}"#,
        ] {
            assert!(parse_common(line.as_bytes()).is_some(), "line: {line}");
        }
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let line = format!(r#"{{"type":"heartbeat","jobId":["{}"]}}"#, "x".repeat(500));
        let text = parse_line(line.as_bytes()).unwrap_err().to_string();
        assert!(text.len() < 150, "error too long: {text}");
        assert!(text.ends_with("..."));
    }
}
