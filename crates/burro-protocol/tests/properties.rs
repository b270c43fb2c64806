//! Property-based tests of the wire contract: message parsing, line framing
//! and the shim control frames.

use burro_protocol::control::{ExitReport, Hello, ServerFrame, ShimFrame, Welcome};
use burro_protocol::{parse_line, JobMessage, LineBuffer, LineEvent, LineSlice, LogLevel, MessageError};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const CASES: u32 = 256;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Generates text of any kind: arbitrary Unicode, or a short mix of the
/// characters that need escaping in JSON (quotes, backslashes, control characters, line
/// separators) with multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\\\x00-\\x1f\\x7f\u{85}\u{2028}\u{2029}a-z é中😀]{0,24}",
    ]
}

/// Generates arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((text(), json_value()), 0..4)
        .prop_map(|entries| Value::Object(entries.into_iter().collect()))
}

/// Generates `percent` values: any finite float, integers of any size, values
/// just outside the range and values inside it.
fn percent() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e3f64..1.0e3).prop_map(Value::from),
        (0.0f64..=100.0).prop_map(Value::from),
        prop_oneof![
            Just(-0.0f64),
            Just(0.0),
            Just(100.0),
            Just(100.000_000_000_001),
            Just(-1e-300)
        ]
        .prop_map(Value::from),
    ]
}

/// Generates a `timestamp` field value and the timestamp the parser must
/// report for it.
fn timestamp() -> impl Strategy<Value = (Option<Value>, Option<i64>)> {
    const LIMIT: i64 = 999_999_999_999_999;
    prop_oneof![
        Just((None, None)),
        (-LIMIT..=LIMIT).prop_map(|ms| (Some(Value::from(ms)), Some(ms))),
        prop_oneof![i64::MIN..-LIMIT - 1, LIMIT + 1..=i64::MAX]
            .prop_map(|ms| (Some(Value::from(ms)), None)),
        text().prop_map(|t| (Some(Value::String(t)), None)),
        Just((Some(Value::Null), None)),
    ]
}

const KNOWN_KINDS: [&str; 6] = [
    "started",
    "progress",
    "heartbeat",
    "log",
    "completed",
    "failed",
];

/// One message as a job would send it: its fields, and the `JobMessage` the
/// parser must produce (before clamping of `percent`).
#[derive(Debug, Clone)]
enum Spec {
    Started(Option<u32>),
    Progress {
        percent: Value,
        message: Option<String>,
        data: Option<Value>,
    },
    Heartbeat,
    Log {
        level: &'static str,
        message: String,
        data: Option<Value>,
    },
    Completed(Option<Value>),
    Failed {
        error: String,
        stack: Option<String>,
    },
    Unknown(String),
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        prop::option::of(any::<u32>()).prop_map(Spec::Started),
        (
            percent(),
            prop::option::of(text()),
            prop::option::of(json_object())
        )
            .prop_map(|(percent, message, data)| Spec::Progress {
                percent,
                message,
                data
            }),
        Just(Spec::Heartbeat),
        (
            prop::sample::select(vec!["debug", "info", "warn", "warning", "error"]),
            text(),
            prop::option::of(json_object()),
        )
            .prop_map(|(level, message, data)| Spec::Log {
                level,
                message,
                data
            }),
        prop::option::of(json_value()).prop_map(Spec::Completed),
        (text(), prop::option::of(text())).prop_map(|(error, stack)| Spec::Failed { error, stack }),
        text()
            .prop_filter("not a known type", |kind| !KNOWN_KINDS
                .contains(&kind.as_str()))
            .prop_map(Spec::Unknown),
    ]
}

/// Returns `value` as the parser receives it after JSON encoding. Without its
/// `float_roundtrip` feature, serde_json parses floats with a faster method
/// that can be one unit in the last place off, so the expected values go
/// through the same encoding.
fn as_received(value: &Value) -> Value {
    serde_json::from_slice(&serde_json::to_vec(value).unwrap()).unwrap()
}

fn insert_optional(object: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object.insert(key.to_string(), value);
    }
}

// ---------------------------------------------------------------------------
// parse_line
// ---------------------------------------------------------------------------

/// Checks that an error's text names the problem and the field at fault.
fn check_error_text(err: &MessageError) -> Result<(), TestCaseError> {
    let text = err.to_string();
    match err {
        MessageError::InvalidJson { reason } => {
            prop_assert!(text.starts_with("invalid JSON: "), "{text}");
            prop_assert!(!reason.is_empty(), "{text}");
        }
        MessageError::NotAnObject { found } => {
            prop_assert!(text.contains("expected a JSON object"), "{text}");
            prop_assert!(text.ends_with(found), "{text}");
        }
        MessageError::MissingField { field } => {
            prop_assert!(text.contains(&format!("missing field `{field}`")), "{text}");
        }
        MessageError::WrongType {
            field,
            expected,
            found,
        } => {
            prop_assert!(
                text.contains(&format!("field `{field}` must be {expected}")),
                "{text}"
            );
            // The excerpt of the value is cut to 40 bytes after its type name.
            prop_assert!(!found.is_empty() && found.len() <= 60, "{text}");
        }
        MessageError::InvalidValue {
            field,
            value,
            reason,
        } => {
            prop_assert!(
                text.contains(&format!("field `{field}` has value")),
                "{text}"
            );
            prop_assert!(!value.is_empty() && !reason.is_empty(), "{text}");
        }
    }
    Ok(())
}

/// Generates lines that look like messages: a JSON object whose fields have the right
/// names and values of any type, sometimes truncated or with a byte changed.
fn message_like_line() -> impl Strategy<Value = Vec<u8>> {
    let field_names = prop::sample::select(vec![
        "type",
        "jobId",
        "timestamp",
        "percent",
        "message",
        "data",
        "level",
        "result",
        "error",
        "stack",
        "protocol",
    ]);
    let kind = prop_oneof![
        prop::sample::select(KNOWN_KINDS.to_vec()).prop_map(Value::from),
        json_value(),
    ];
    (
        kind,
        json_value(),
        prop::collection::vec((field_names, json_value()), 0..6),
        any::<prop::sample::Index>(),
        prop_oneof![Just(None), any::<u8>().prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(|(kind, job_id, fields, cut, byte, truncate)| {
            let mut object = Map::new();
            object.insert("type".into(), kind);
            object.insert("jobId".into(), job_id);
            for (name, value) in fields {
                object.insert(name.to_string(), value);
            }
            let mut line = serde_json::to_vec(&Value::Object(object)).unwrap();
            let at = cut.index(line.len());
            if let Some(byte) = byte {
                line[at] = byte;
            }
            if truncate {
                line.truncate(at);
            }
            line
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn parse_line_on_arbitrary_bytes_never_panics(line in prop::collection::vec(any::<u8>(), 0..128)) {
        if let Err(err) = parse_line(&line) {
            check_error_text(&err)?;
        }
    }

    #[test]
    fn parse_line_on_arbitrary_json_never_panics(value in json_value()) {
        let line = serde_json::to_vec(&value).unwrap();
        match parse_line(&line) {
            Ok(_) => prop_assert!(value.is_object()),
            Err(err) => check_error_text(&err)?,
        }
    }

    #[test]
    fn parse_line_names_field_at_fault(line in message_like_line()) {
        if let Err(err) = parse_line(&line) {
            check_error_text(&err)?;
        }
    }

    #[test]
    fn valid_messages_round_trip(
        spec in spec(),
        job_id in text(),
        (timestamp_field, expected_timestamp) in timestamp(),
        extra in prop::option::of(json_value()),
    ) {
        let mut object = Map::new();
        object.insert("jobId".into(), Value::String(job_id.clone()));
        insert_optional(&mut object, "timestamp", timestamp_field);
        // Unknown fields are ignored.
        insert_optional(&mut object, "somethingElse", extra);

        let mut expected_clamp = None;
        let (kind, expected) = match &spec {
            Spec::Started(protocol) => {
                insert_optional(&mut object, "protocol", protocol.map(Value::from));
                ("started".to_string(), JobMessage::Started { protocol: *protocol })
            }
            Spec::Progress { percent, message, data } => {
                object.insert("percent".into(), percent.clone());
                insert_optional(&mut object, "message", message.clone().map(Value::String));
                insert_optional(&mut object, "data", data.clone());
                let sent = percent.as_f64().unwrap();
                let raw = as_received(percent).as_f64().unwrap();
                // The encoding keeps the value to within float precision.
                prop_assert!((raw - sent).abs() <= sent.abs() * 4.0 * f64::EPSILON, "{sent} became {raw}");
                let clamped = raw.clamp(0.0, 100.0);
                if clamped != raw {
                    expected_clamp = Some(raw);
                }
                let message = JobMessage::Progress {
                    percent: clamped,
                    message: message.clone(),
                    data: data.as_ref().map(as_received),
                };
                ("progress".to_string(), message)
            }
            Spec::Heartbeat => ("heartbeat".to_string(), JobMessage::Heartbeat),
            Spec::Log { level, message, data } => {
                object.insert("level".into(), Value::from(*level));
                object.insert("message".into(), Value::String(message.clone()));
                insert_optional(&mut object, "data", data.clone());
                let message = JobMessage::Log {
                    level: LogLevel::parse(level).unwrap(),
                    message: message.clone(),
                    data: data.as_ref().map(as_received),
                };
                ("log".to_string(), message)
            }
            Spec::Completed(result) => {
                insert_optional(&mut object, "result", result.clone());
                ("completed".to_string(), JobMessage::Completed { result: result.as_ref().map(as_received) })
            }
            Spec::Failed { error, stack } => {
                object.insert("error".into(), Value::String(error.clone()));
                insert_optional(&mut object, "stack", stack.clone().map(Value::String));
                ("failed".to_string(), JobMessage::Failed { error: error.clone(), stack: stack.clone() })
            }
            Spec::Unknown(kind) => (kind.clone(), JobMessage::Unknown { kind: kind.clone() }),
        };
        object.insert("type".into(), Value::String(kind.clone()));

        let line = serde_json::to_vec(&Value::Object(object)).unwrap();
        prop_assert!(!line.contains(&b'\n'), "an encoded message is one line");
        let parsed = parse_line(&line).map_err(|e| TestCaseError::fail(format!("rejected: {e}")))?;

        prop_assert_eq!(&parsed.job_id, &job_id);
        prop_assert_eq!(parsed.timestamp, expected_timestamp);
        prop_assert_eq!(parsed.message.kind(), kind.as_str());
        if let JobMessage::Progress { percent, .. } = &parsed.message {
            prop_assert!((0.0..=100.0).contains(percent), "percent {percent} outside 0-100");
        }
        prop_assert_eq!(&parsed.message, &expected);
        prop_assert_eq!(parsed.clamped_percent, expected_clamp);
    }
}

#[test]
fn progress_with_huge_integer_percent_is_clamped() {
    let line = json!({"type": "progress", "jobId": "j", "percent": u64::MAX}).to_string();
    let parsed = parse_line(line.as_bytes()).unwrap();
    assert_eq!(
        parsed.message,
        JobMessage::Progress {
            percent: 100.0,
            message: None,
            data: None
        }
    );
    assert_eq!(parsed.clamped_percent, Some(u64::MAX as f64));
}

// ---------------------------------------------------------------------------
// LineBuffer
// ---------------------------------------------------------------------------

/// What the framing must produce for `input`: every segment between
/// newlines, the unterminated last one included when it is not empty, with
/// segments over `max_line` bytes replaced by an overflow.
#[derive(Debug, PartialEq)]
enum Expected {
    Line(Vec<u8>),
    Overflow,
}

fn expected_events(input: &[u8], max_line: usize) -> Vec<Expected> {
    let mut segments: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    let last = segments.pop().unwrap_or_default();
    let mut events: Vec<Expected> = segments
        .into_iter()
        .map(|segment| {
            if segment.len() > max_line {
                Expected::Overflow
            } else {
                Expected::Line(segment.to_vec())
            }
        })
        .collect();
    if last.len() > max_line {
        events.push(Expected::Overflow);
    } else if !last.is_empty() {
        events.push(Expected::Line(last.to_vec()));
    }
    events
}

/// Feeds `input` in chunks of the given sizes (used in turn), draining the
/// buffer after every push as a reader does, then finishes the stream.
/// `borrowed` drains with `next_slice` instead of `next_event`.
fn feed(
    input: &[u8],
    chunk_sizes: &[usize],
    max_line: usize,
    borrowed: bool,
) -> Result<Vec<Expected>, TestCaseError> {
    let mut buffer = LineBuffer::new(max_line);
    let mut events = Vec::new();
    let mut record = |event: LineEvent| -> Result<(), TestCaseError> {
        match event {
            LineEvent::Line(line) => {
                prop_assert!(
                    line.len() <= max_line,
                    "line of {} bytes over {max_line}",
                    line.len()
                );
                prop_assert!(!line.contains(&b'\n'));
                events.push(Expected::Line(line));
            }
            LineEvent::Overflow { len } => {
                prop_assert!(len > max_line, "overflow of {len} bytes within {max_line}");
                events.push(Expected::Overflow);
            }
        }
        Ok(())
    };
    let mut rest = input;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buffer.push(chunk);
        if borrowed {
            while let Some(slice) = buffer.next_slice() {
                record(match slice {
                    LineSlice::Line(line) => LineEvent::Line(line.to_vec()),
                    LineSlice::Overflow { len } => LineEvent::Overflow { len },
                })?;
            }
        } else {
            while let Some(event) = buffer.next_event() {
                record(event)?;
            }
        }
        prop_assert!(
            buffer.buffered() <= max_line,
            "{} bytes buffered over {max_line}",
            buffer.buffered()
        );
    }
    if let Some(event) = buffer.finish() {
        record(event)?;
    }
    prop_assert_eq!(buffer.finish(), None);
    prop_assert_eq!(buffer.buffered(), 0);
    Ok(events)
}

fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        2 => Just(b'\n'),
        1 => Just(b'\r'),
        6 => b'a'..=b'z',
        2 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn framing_is_independent_of_chunking(
        input in stream_bytes(),
        chunk_sizes in prop::collection::vec(1usize..64, 1..12),
        max_line in 1usize..48,
    ) {
        let expected = expected_events(&input, max_line);
        for borrowed in [false, true] {
            let chunked = feed(&input, &chunk_sizes, max_line, borrowed)?;
            prop_assert_eq!(&chunked, &expected);
            let whole = feed(&input, &[input.len().max(1)], max_line, borrowed)?;
            prop_assert_eq!(&whole, &expected);
            let bytewise = feed(&input, &[1], max_line, borrowed)?;
            prop_assert_eq!(&bytewise, &expected);
        }
    }
}

// ---------------------------------------------------------------------------
// Control frames
// ---------------------------------------------------------------------------

/// Generates frame payload lines: any bytes but `\n`.
fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_map(|b| if b == b'\n' { b' ' } else { b }),
        0..64,
    )
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        text(),
        text(),
        text(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        prop::option::of(any::<u32>()),
    )
        .prop_map(
            |(job_id, token, address, version, attempt, shim_pid, child_pid)| Hello {
                version,
                job_id,
                token,
                attempt,
                shim_pid,
                child_pid,
                child_start_ticks: child_pid.map(|pid| u64::from(pid) * 3),
                address,
            },
        )
}

fn exit_report() -> impl Strategy<Value = ExitReport> {
    (
        prop::option::of(any::<i32>()),
        prop::option::of(any::<i32>()),
        prop::option::of(text()),
        prop::option::of(text()),
        any::<u64>(),
        prop::option::of(any::<usize>()),
    )
        .prop_map(
            |(code, signal, reason, spawn_error, elapsed_ms, oversize)| ExitReport {
                code,
                signal,
                reason,
                spawn_error,
                elapsed_ms,
                oversize,
            },
        )
}

fn shim_frame() -> impl Strategy<Value = ShimFrame> {
    prop_oneof![
        hello().prop_map(ShimFrame::Hello),
        (any::<u64>(), any::<u64>(), line_bytes())
            .prop_map(|(seq, conn, line)| ShimFrame::Message { seq, conn, line }),
        (any::<u64>(), line_bytes()).prop_map(|(seq, line)| ShimFrame::Stdout { seq, line }),
        (any::<u64>(), line_bytes()).prop_map(|(seq, line)| ShimFrame::Stderr { seq, line }),
        (any::<u64>(), any::<u64>(), any::<usize>())
            .prop_map(|(seq, conn, len)| ShimFrame::Oversize { seq, conn, len }),
        (any::<u64>(), exit_report()).prop_map(|(seq, report)| ShimFrame::Exit { seq, report }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u32>(), any::<u64>())
            .prop_map(|(version, acked_seq)| ServerFrame::Welcome(Welcome { version, acked_seq })),
        text().prop_map(ServerFrame::Reject),
        any::<u64>().prop_map(ServerFrame::Ack),
        text().prop_map(ServerFrame::Kill),
        (any::<u64>(), line_bytes()).prop_map(|(conn, line)| ServerFrame::Send { conn, line }),
        Just(ServerFrame::Bye),
    ]
}

/// `REJECT` and `KILL` reasons travel on one line: CR and LF become spaces.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Generates frame-like lines: a keyword, then numbers, words and arbitrary bytes.
fn frame_like_line() -> impl Strategy<Value = Vec<u8>> {
    let keyword = prop::sample::select(vec![
        "HELLO", "MSG", "OUT", "ERR", "DROP", "EXIT", "WELCOME", "REJECT", "ACK", "KILL", "SEND",
        "BYE", "", "msg",
    ]);
    let part = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        Just(b"18446744073709551616".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"+7".to_vec()),
        Just(Vec::new()),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    (keyword, prop::collection::vec(part, 0..4)).prop_map(|(keyword, parts)| {
        let mut line = keyword.as_bytes().to_vec();
        for part in parts {
            line.push(b' ');
            line.extend_from_slice(&part);
        }
        line
    })
}

fn frame_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..96), frame_like_line()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn shim_frames_round_trip(frame in shim_frame()) {
        let encoded = frame.encode();
        prop_assert_eq!(encoded.iter().position(|&b| b == b'\n'), Some(encoded.len() - 1), "one line per frame");
        let decoded = ShimFrame::decode(&encoded[..encoded.len() - 1]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(decoded, frame);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let encoded = frame.encode();
        prop_assert_eq!(encoded.iter().position(|&b| b == b'\n'), Some(encoded.len() - 1), "one line per frame");
        let decoded = ServerFrame::decode(&encoded[..encoded.len() - 1]).map_err(TestCaseError::fail)?;
        let expected = match frame {
            ServerFrame::Reject(reason) => ServerFrame::Reject(one_line(&reason)),
            ServerFrame::Kill(reason) => ServerFrame::Kill(one_line(&reason)),
            other => other,
        };
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(line in frame_input()) {
        let shim = ShimFrame::decode(&line);
        let server = ServerFrame::decode(&line);
        if let Err(message) = &shim {
            prop_assert!(!message.is_empty());
        }
        if let Err(message) = &server {
            prop_assert!(!message.is_empty());
        }
        // A frame decoded from one line encodes to a line that decodes to
        // the same frame.
        if !line.contains(&b'\n') {
            if let Ok(frame) = shim {
                let encoded = frame.encode();
                prop_assert_eq!(ShimFrame::decode(&encoded[..encoded.len() - 1]), Ok(frame));
            }
            if let Ok(frame) = server {
                let encoded = frame.encode();
                let expected = match frame {
                    ServerFrame::Reject(reason) => ServerFrame::Reject(one_line(&reason)),
                    ServerFrame::Kill(reason) => ServerFrame::Kill(one_line(&reason)),
                    other => other,
                };
                prop_assert_eq!(ServerFrame::decode(&encoded[..encoded.len() - 1]), Ok(expected));
            }
        }
    }
}
