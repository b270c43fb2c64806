//! Property-based tests of the Server-Sent Events encoder: whatever the id,
//! event name and data, a conforming client reads back exactly one event
//! with the same content, so data can never add a field or an event.

use burro::sse::SseMessage;
use proptest::prelude::*;

/// One event as a client dispatches it, with every field line that was read
/// for it.
#[derive(Debug, Clone, PartialEq)]
struct ParsedEvent {
    /// The last event id after the event's fields were read.
    last_event_id: String,
    /// The event type buffer; empty means the default `message` type.
    event_type: String,
    data: String,
    /// Names of the fields read for this event, in order.
    fields: Vec<String>,
}

/// Splits a stream into lines the way the event stream format does: a line
/// ends at CRLF, at a lone CR or at a lone LF. An unterminated last line is
/// returned separately.
fn split_lines(text: &str) -> (Vec<&str>, &str) {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\r' => {
                lines.push(&text[start..at]);
                at += if bytes.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = at;
            }
            b'\n' => {
                lines.push(&text[start..at]);
                at += 1;
                start = at;
            }
            _ => at += 1,
        }
    }
    (lines, &text[start..])
}

/// Parses an event stream by the WHATWG rules for interpreting an event
/// stream, and returns the dispatched events and the last event id.
fn parse_stream(stream: &[u8]) -> (Vec<ParsedEvent>, String) {
    let text = std::str::from_utf8(stream).expect("the encoder writes UTF-8");
    // A byte order mark at the start of the stream is skipped.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (lines, _unterminated) = split_lines(text);

    let mut events = Vec::new();
    let mut data = String::new();
    let mut event_type = String::new();
    let mut last_event_id = String::new();
    let mut fields = Vec::new();

    for line in lines {
        if line.is_empty() {
            // Dispatch.
            if data.is_empty() {
                event_type.clear();
                fields.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            events.push(ParsedEvent {
                last_event_id: last_event_id.clone(),
                event_type: std::mem::take(&mut event_type),
                data: std::mem::take(&mut data),
                fields: std::mem::take(&mut fields),
            });
            continue;
        }
        if line.starts_with(':') {
            // A comment.
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        fields.push(name.to_string());
        match name {
            "event" => event_type = value.to_string(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_event_id = value.to_string(),
            // `retry` and unknown fields change nothing this test observes.
            _ => {}
        }
    }
    // Data without a final blank line is discarded at the end of the stream.
    (events, last_event_id)
}

/// Returns `text` with its line breaks normalised to LF, as a client
/// receives them in `data`.
fn normalise_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

fn without(text: &str, removed: &[char]) -> String {
    text.chars().filter(|c| !removed.contains(c)).collect()
}

/// Generates text of any kind: arbitrary Unicode, or a short mix of line breaks, NUL,
/// colons, spaces, field names and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop::sample::select(vec![
                "\r\n",
                "\r",
                "\n",
                "\n\n",
                "\r\r",
                "\0",
                ":",
                " ",
                "  ",
                "a",
                "é",
                "😀",
                "\u{feff}",
                "\u{2028}",
                "\u{85}",
                "data",
                "data:",
                "event: x",
                "id: 7",
                "retry: 1",
                "\ndata: injected\n\n",
            ]),
            0..12,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn check_message(id: &Option<String>, event: &str, data: &str) -> Result<(), TestCaseError> {
    let message = SseMessage::new(id.clone(), event, data.to_string());
    let (events, last_event_id) = parse_stream(message.bytes());

    let expected_id = id.as_deref().map(|id| without(id, &['\r', '\n', '\0']));
    let expected_event = without(event, &['\r', '\n']);
    let expected_data = normalise_line_breaks(data);

    prop_assert_eq!(events.len(), 1, "stream {:?}", message.bytes());
    let parsed = &events[0];
    prop_assert_eq!(&parsed.data, &expected_data);
    prop_assert_eq!(&parsed.event_type, &expected_event);
    prop_assert_eq!(
        &parsed.last_event_id,
        &expected_id.clone().unwrap_or_default()
    );
    prop_assert_eq!(&last_event_id, &parsed.last_event_id);

    // No field other than the ones the message sets, each id and event line
    // at most once.
    let count = |name: &str| parsed.fields.iter().filter(|f| *f == name).count();
    prop_assert!(
        parsed
            .fields
            .iter()
            .all(|f| f == "id" || f == "event" || f == "data"),
        "unexpected field in {:?}",
        parsed.fields
    );
    prop_assert_eq!(count("id"), usize::from(id.is_some()));
    prop_assert_eq!(count("event"), usize::from(!expected_event.is_empty()));
    prop_assert_eq!(count("data"), expected_data.split('\n').count());

    // The public fields describe what was encoded.
    prop_assert_eq!(&message.id, &expected_id);
    prop_assert_eq!(&message.event, &expected_event);
    prop_assert_eq!(&message.data, data);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_parses_back_as_one_event(
        id in prop::option::of(text()),
        event in text(),
        data in text(),
    ) {
        check_message(&id, &event, &data)?;
    }

    #[test]
    fn consecutive_messages_stay_separate(
        messages in prop::collection::vec((prop::option::of(text()), text(), text()), 1..6),
    ) {
        let mut stream = Vec::new();
        for (id, event, data) in &messages {
            stream.extend_from_slice(SseMessage::new(id.clone(), event, data.clone()).bytes());
        }
        let (events, _) = parse_stream(&stream);
        prop_assert_eq!(events.len(), messages.len());
        let mut last_id = String::new();
        for ((id, event, data), parsed) in messages.iter().zip(&events) {
            if let Some(id) = id {
                last_id = without(id, &['\r', '\n', '\0']);
            }
            prop_assert_eq!(&parsed.data, &normalise_line_breaks(data));
            prop_assert_eq!(&parsed.event_type, &without(event, &['\r', '\n']));
            prop_assert_eq!(&parsed.last_event_id, &last_id);
        }
    }
}

#[test]
fn parser_follows_the_line_rules() {
    let (events, last_id) =
        parse_stream(b"id: 1\r\nevent:a\rdata: x\ndata\r\n: note\ndata:  y\n\ndata: tail");
    assert_eq!(
        events,
        vec![ParsedEvent {
            last_event_id: "1".into(),
            event_type: "a".into(),
            data: "x\n\n y".into(),
            fields: vec![
                "id".into(),
                "event".into(),
                "data".into(),
                "data".into(),
                "data".into()
            ],
        }]
    );
    assert_eq!(last_id, "1");
    let (events, _) = parse_stream(b"event: lonely\n\nid: a\0b\ndata: d\n\n");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].last_event_id, "");
    assert_eq!(events[0].event_type, "");
}

#[test]
fn awkward_values_parse_back() {
    let cases: [(Option<&str>, &str, &str); 6] = [
        (
            Some("1\n2"),
            "job.progress",
            "{\"a\":1}\n\ndata: injected\n\nid: 9",
        ),
        (Some("\0\r\n"), "\r\n", ""),
        (None, "", "\r\n"),
        (None, " spaced", " leading space\r"),
        (Some(" "), "a\rb", "\n"),
        (Some("\u{feff}x"), "\u{feff}", "\u{feff}"),
    ];
    for (id, event, data) in cases {
        check_message(&id.map(String::from), event, data)
            .unwrap_or_else(|e| panic!("{id:?} {event:?} {data:?}: {e}"));
    }
}
