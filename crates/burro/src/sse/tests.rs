use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("test did not finish within its timeout")
}

/// One event of a parsed event stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Frame {
    pub(super) id: Option<String>,
    pub(super) event: Option<String>,
    pub(super) data: Option<String>,
    pub(super) retry: Option<String>,
    pub(super) comments: Vec<String>,
    pub(super) other_fields: Vec<(String, String)>,
}

/// Parses an event stream as a browser does: lines end with CRLF, CR or LF,
/// a blank line ends an event, one space after the colon is dropped, and
/// `data` lines are joined with LF. Text after the last blank line is
/// ignored.
pub(super) fn parse_frames(text: &str) -> Vec<Frame> {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut frames = Vec::new();
    let mut frame = Frame::default();
    let mut data_lines: Vec<String> = Vec::new();

    for line in normalized.split_inclusive('\n') {
        let Some(line) = line.strip_suffix('\n') else {
            break;
        };
        if line.is_empty() {
            if !data_lines.is_empty() {
                frame.data = Some(data_lines.join("\n"));
            }
            if frame != Frame::default() {
                frames.push(std::mem::take(&mut frame));
            }
            data_lines.clear();
            continue;
        }
        if let Some(comment) = line.strip_prefix(':') {
            frame
                .comments
                .push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "id" => frame.id = Some(value),
            "event" => frame.event = Some(value),
            "data" => data_lines.push(value),
            "retry" => frame.retry = Some(value),
            _ => frame.other_fields.push((field.to_owned(), value)),
        }
    }
    frames
}

fn hub(client_queue: usize, ring: usize) -> Sse {
    Sse::new(SseConfig {
        client_queue,
        ring,
        keep_alive: Duration::from_secs(3600),
        retry: DEFAULT_RETRY,
    })
}

fn channels(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

async fn next(stream: &mut ClientStream) -> Arc<SseMessage> {
    stream.next().await.expect("client stream ended early")
}

async fn next_data(stream: &mut ClientStream) -> serde_json::Value {
    let message = next(stream).await;
    serde_json::from_str(&message.data).expect("message data is JSON")
}

#[test]
fn encoder_injection_table() {
    struct Case {
        id: Option<&'static str>,
        event: &'static str,
        data: &'static str,
        bytes: &'static str,
        parsed_id: Option<&'static str>,
        parsed_event: Option<&'static str>,
        parsed_data: &'static str,
    }
    let cases = [
        Case {
            id: Some("e-1"),
            event: "progress",
            data: r#"{"percent":5}"#,
            bytes: "id: e-1\nevent: progress\ndata: {\"percent\":5}\n\n",
            parsed_id: Some("e-1"),
            parsed_event: Some("progress"),
            parsed_data: r#"{"percent":5}"#,
        },
        Case {
            id: None,
            event: "log",
            data: "a\nb",
            bytes: "event: log\ndata: a\ndata: b\n\n",
            parsed_id: None,
            parsed_event: Some("log"),
            parsed_data: "a\nb",
        },
        Case {
            id: None,
            event: "log",
            data: "a\r\nb",
            bytes: "event: log\ndata: a\ndata: b\n\n",
            parsed_id: None,
            parsed_event: Some("log"),
            parsed_data: "a\nb",
        },
        Case {
            id: None,
            event: "log",
            data: "a\rb",
            bytes: "event: log\ndata: a\ndata: b\n\n",
            parsed_id: None,
            parsed_event: Some("log"),
            parsed_data: "a\nb",
        },
        Case {
            id: None,
            event: "log",
            data: "x\n\nevent: evil\ndata: injected\n\n",
            bytes: "event: log\ndata: x\ndata: \ndata: event: evil\ndata: data: injected\ndata: \ndata: \n\n",
            parsed_id: None,
            parsed_event: Some("log"),
            parsed_data: "x\n\nevent: evil\ndata: injected\n\n",
        },
        Case {
            id: None,
            event: "log",
            data: "x\r\r\nid: 9",
            bytes: "event: log\ndata: x\ndata: \ndata: id: 9\n\n",
            parsed_id: None,
            parsed_event: Some("log"),
            parsed_data: "x\n\nid: 9",
        },
        Case {
            id: None,
            event: "empty",
            data: "",
            bytes: "event: empty\ndata: \n\n",
            parsed_id: None,
            parsed_event: Some("empty"),
            parsed_data: "",
        },
        Case {
            id: None,
            event: "",
            data: "  indented",
            bytes: "data:   indented\n\n",
            parsed_id: None,
            parsed_event: None,
            parsed_data: "  indented",
        },
        Case {
            id: None,
            event: "progress\n\ndata: evil",
            data: "1",
            bytes: "event: progressdata: evil\ndata: 1\n\n",
            parsed_id: None,
            parsed_event: Some("progressdata: evil"),
            parsed_data: "1",
        },
        Case {
            id: None,
            event: "a\r\nretry: 1",
            data: "1",
            bytes: "event: aretry: 1\ndata: 1\n\n",
            parsed_id: None,
            parsed_event: Some("aretry: 1"),
            parsed_data: "1",
        },
        Case {
            id: Some("e-2\r\nevent: evil\0"),
            event: "log",
            data: "1",
            bytes: "id: e-2event: evil\nevent: log\ndata: 1\n\n",
            parsed_id: Some("e-2event: evil"),
            parsed_event: Some("log"),
            parsed_data: "1",
        },
    ];

    for case in cases {
        let message = SseMessage::new(case.id.map(str::to_owned), case.event, case.data.to_owned());
        let text = std::str::from_utf8(message.bytes()).expect("encoding is UTF-8");
        assert_eq!(
            text, case.bytes,
            "encoding of {:?} {:?} {:?}",
            case.id, case.event, case.data
        );

        let frames = parse_frames(text);
        assert_eq!(frames.len(), 1, "one event for data {:?}", case.data);
        let frame = &frames[0];
        assert_eq!(frame.id.as_deref(), case.parsed_id);
        assert_eq!(frame.event.as_deref(), case.parsed_event);
        assert_eq!(frame.data.as_deref(), Some(case.parsed_data));
        assert_eq!(frame.retry, None);
        assert!(frame.other_fields.is_empty(), "no extra field in {text:?}");

        assert_eq!(
            message.id.as_deref(),
            case.parsed_id,
            "stored id is sanitized"
        );
        assert_eq!(
            Some(message.event.as_str()),
            Some(case.parsed_event.unwrap_or(""))
        );
        assert_eq!(message.data, case.data, "stored data is the original text");
    }
}

#[tokio::test]
async fn broadcast_shares_one_encoding() {
    within(async {
        let sse = hub(16, 16);
        let (_, mut first) = sse.add_client(&channels(&["jobs"]), None);
        let (_, mut second) = sse.add_client(&channels(&["jobs"]), None);

        sse.broadcast("jobs", "progress", &json!({ "jobId": "j1", "percent": 10 }));

        let a = next(&mut first).await;
        let b = next(&mut second).await;
        assert!(Arc::ptr_eq(&a, &b), "clients share one message");
        assert_eq!(a.id.as_deref(), Some(format!("{}-1", sse.epoch()).as_str()));
        assert_eq!(a.event, "progress");
        assert_eq!(a.data, r#"{"jobId":"j1","percent":10}"#);
    })
    .await;
}

#[tokio::test]
async fn ids_share_one_counter_across_channels() {
    within(async {
        let sse = hub(16, 16);
        let (client, mut stream) = sse.add_client(&channels(&["a", "b"]), None);

        sse.broadcast("a", "one", &json!(1));
        sse.broadcast("b", "two", &json!(2));
        assert!(sse.send_to(client, "three", &json!(3)));
        sse.broadcast_all("four", &json!(4));

        for sequence in 1..=4 {
            let message = next(&mut stream).await;
            let expected = format!("{}-{sequence}", sse.epoch());
            assert_eq!(message.id.as_deref(), Some(expected.as_str()));
        }
    })
    .await;
}

#[tokio::test]
async fn replay_after_reconnect_follows_channels() {
    within(async {
        let sse = hub(16, 16);
        let (_, mut stream) = sse.add_client(&channels(&["a"]), None);
        sse.broadcast("a", "seen", &json!(1));
        let seen = next(&mut stream).await;
        drop(stream);

        sse.broadcast("a", "missed", &json!(2));
        sse.broadcast("b", "other-channel", &json!(3));
        sse.broadcast_all("everyone", &json!(4));
        sse.broadcast_many(&["b", "a"], "many", &json!(5));

        let (_, mut stream) = sse.add_client(&channels(&["a"]), seen.id.as_deref());
        sse.broadcast("a", "live", &json!(6));

        assert_eq!(next_data(&mut stream).await, json!(2));
        assert_eq!(next_data(&mut stream).await, json!(4));
        assert_eq!(next_data(&mut stream).await, json!(5));
        assert_eq!(next_data(&mut stream).await, json!(6));
    })
    .await;
}

#[tokio::test]
async fn broadcast_without_clients_is_replayed() {
    within(async {
        let sse = hub(16, 16);
        sse.broadcast("job:j1", "completed", &json!({ "jobId": "j1" }));
        assert_eq!(sse.client_count(), 0);

        let start = format!("{}-0", sse.epoch());
        let (_, mut stream) = sse.add_client(&channels(&["job:j1"]), Some(&start));
        let message = next(&mut stream).await;
        assert_eq!(message.event, "completed");
    })
    .await;
}

#[tokio::test]
async fn resync_for_ids_that_cannot_replay() {
    within(async {
        let sse = hub(16, 4);
        for n in 0..10 {
            sse.broadcast("a", "tick", &json!(n));
        }
        let epoch = sse.epoch().to_owned();
        let current = format!("{epoch}-10");
        let foreign = if epoch == "0000000000000000" {
            "1111111111111111-3"
        } else {
            "0000000000000000-3"
        };
        let cases = [
            (foreign.to_owned(), "epoch_changed"),
            (format!("{epoch}-2"), "expired"),
            (format!("{epoch}-99"), "unknown_id"),
            ("not-an-id".to_owned(), "epoch_changed"),
            ("garbage".to_owned(), "invalid_id"),
            (format!("{epoch}-x"), "invalid_id"),
            (String::new(), "invalid_id"),
        ];

        for (last_event_id, reason) in cases {
            let (_, mut stream) = sse.add_client(&channels(&["a"]), Some(&last_event_id));
            let message = next(&mut stream).await;
            assert_eq!(
                message.event, RESYNC_EVENT,
                "event for last id {last_event_id:?}"
            );
            assert_eq!(
                message.id.as_deref(),
                Some(current.as_str()),
                "id for last id {last_event_id:?}"
            );
            let data: serde_json::Value =
                serde_json::from_str(&message.data).expect("resync data is JSON");
            assert_eq!(
                data,
                json!({ "reason": reason }),
                "reason for last id {last_event_id:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn replay_at_ring_boundary_needs_no_resync() {
    within(async {
        let sse = hub(16, 4);
        for n in 1..=10 {
            sse.broadcast("a", "tick", &json!(n));
        }

        // Messages 7 to 10 are in the ring, so a client that saw 6 missed
        // nothing the ring lacks.
        let last = format!("{}-6", sse.epoch());
        let (_, mut stream) = sse.add_client(&channels(&["a"]), Some(&last));
        for n in 7..=10 {
            assert_eq!(next_data(&mut stream).await, json!(n));
        }

        let current = format!("{}-10", sse.epoch());
        let (_, mut stream) = sse.add_client(&channels(&["a"]), Some(&current));
        sse.broadcast("a", "tick", &json!(11));
        assert_eq!(next_data(&mut stream).await, json!(11));
    })
    .await;
}

#[tokio::test]
async fn resync_id_allows_later_replay() {
    within(async {
        let sse = hub(16, 16);
        sse.broadcast("a", "tick", &json!(1));
        let (_, mut stream) = sse.add_client(&channels(&["a"]), Some("stale-1"));
        let resync = next(&mut stream).await;
        assert_eq!(resync.event, RESYNC_EVENT);
        drop(stream);

        sse.broadcast("a", "tick", &json!(2));
        let (_, mut stream) = sse.add_client(&channels(&["a"]), resync.id.as_deref());
        assert_eq!(next_data(&mut stream).await, json!(2));
    })
    .await;
}

#[tokio::test]
async fn empty_ring_replays_nothing() {
    within(async {
        let sse = hub(16, 0);
        sse.broadcast("a", "tick", &json!(1));
        sse.broadcast("a", "tick", &json!(2));

        let current = format!("{}-2", sse.epoch());
        let (_, mut stream) = sse.add_client(&channels(&["a"]), Some(&current));
        sse.broadcast("a", "tick", &json!(3));
        assert_eq!(next_data(&mut stream).await, json!(3));

        let older = format!("{}-1", sse.epoch());
        let (_, mut stream) = sse.add_client(&channels(&["a"]), Some(&older));
        assert_eq!(next(&mut stream).await.event, RESYNC_EVENT);
    })
    .await;
}

#[tokio::test]
async fn broadcast_many_reaches_each_client_once() {
    within(async {
        let sse = hub(16, 16);
        let (_, mut both) = sse.add_client(&channels(&["job:j1", "jobs"]), None);
        let (_, mut jobs_only) = sse.add_client(&channels(&["jobs"]), None);
        let (_, mut unrelated) = sse.add_client(&channels(&["job:j2"]), None);

        sse.broadcast_many(&["job:j1", "jobs"], "progress", &json!("many"));
        sse.broadcast_all("marker", &json!("marker"));

        assert_eq!(next_data(&mut both).await, json!("many"));
        assert_eq!(next_data(&mut both).await, json!("marker"));
        assert_eq!(next_data(&mut jobs_only).await, json!("many"));
        assert_eq!(next_data(&mut jobs_only).await, json!("marker"));
        assert_eq!(next_data(&mut unrelated).await, json!("marker"));

        // The ring contains the message once, so a replay has it once too.
        let start = format!("{}-0", sse.epoch());
        let (_, mut replayed) = sse.add_client(&channels(&["job:j1", "jobs"]), Some(&start));
        assert_eq!(next_data(&mut replayed).await, json!("many"));
        assert_eq!(next_data(&mut replayed).await, json!("marker"));
    })
    .await;
}

#[tokio::test]
async fn slow_client_is_disconnected() {
    within(async {
        let sse = hub(2, 16);
        let (slow_id, mut slow) = sse.add_client(&channels(&["jobs"]), None);
        let (_, mut fast) = sse.add_client(&channels(&["jobs"]), None);
        assert_eq!(sse.client_count(), 2);

        for n in 0..6 {
            sse.broadcast("jobs", "tick", &json!(n));
            assert_eq!(next_data(&mut fast).await, json!(n));
            if n < 2 {
                assert_eq!(sse.client_count(), 2, "slow client fits {n} messages");
            }
        }
        assert_eq!(sse.client_count(), 1, "slow client was removed");
        assert!(!sse.send_to(slow_id, "tick", &json!("late")));
        assert!(!sse.subscribe(slow_id, "other"));

        // The slow client's stream yields what it had queued, then ends.
        assert_eq!(next_data(&mut slow).await, json!(0));
        assert_eq!(next_data(&mut slow).await, json!(1));
        assert!(slow.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn full_queue_disconnects_on_send_to() {
    within(async {
        let sse = hub(1, 16);
        let (client, mut stream) = sse.add_client(&[], None);

        assert!(sse.send_to(client, "first", &json!(1)));
        assert!(!sse.send_to(client, "second", &json!(2)));
        assert_eq!(sse.client_count(), 0);
        assert_eq!(next_data(&mut stream).await, json!(1));
        assert!(stream.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn client_count_drops_when_stream_dropped() {
    within(async {
        let sse = hub(16, 16);
        let (_, first) = sse.add_client(&channels(&["a"]), None);
        let (_, second) = sse.add_client(&channels(&["a", "b"]), None);
        assert_eq!(sse.client_count(), 2);

        drop(first);
        assert_eq!(sse.client_count(), 1);
        drop(second);
        assert_eq!(sse.client_count(), 0);

        // Broadcasting to the channels of removed clients still works.
        sse.broadcast("a", "tick", &json!(1));
    })
    .await;
}

#[tokio::test]
async fn remove_client_ends_stream() {
    within(async {
        let sse = hub(16, 16);
        let (client, mut stream) = sse.add_client(&channels(&["a"]), None);
        sse.broadcast("a", "tick", &json!(1));

        sse.remove_client(client);
        assert_eq!(sse.client_count(), 0);
        assert!(!sse.unsubscribe(client, "a"));
        assert_eq!(next_data(&mut stream).await, json!(1));
        assert!(stream.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_change_channels() {
    within(async {
        let sse = hub(16, 16);
        let (client, mut stream) = sse.add_client(&[], None);

        assert!(sse.subscribe(client, "a"));
        assert!(!sse.subscribe(client, "a"), "already on the channel");
        sse.broadcast("a", "tick", &json!("subscribed"));
        assert_eq!(next_data(&mut stream).await, json!("subscribed"));

        assert!(sse.unsubscribe(client, "a"));
        assert!(!sse.unsubscribe(client, "a"), "no longer on the channel");
        sse.broadcast("a", "tick", &json!("after unsubscribe"));
        assert!(sse.send_to(client, "marker", &json!("marker")));
        assert_eq!(next_data(&mut stream).await, json!("marker"));
    })
    .await;
}

#[tokio::test]
async fn send_to_unknown_client_fails() {
    within(async {
        let sse = hub(16, 16);
        let (client, stream) = sse.add_client(&[], None);
        drop(stream);

        assert!(!sse.send_to(client, "tick", &json!(1)));
        assert!(!sse.subscribe(client, "a"));
    })
    .await;
}

#[test]
fn epochs_differ_between_hubs() {
    let first = hub(1, 1);
    let second = hub(1, 1);
    assert_ne!(first.epoch(), second.epoch());
    assert!(
        !first.epoch().contains('-'),
        "the epoch ends at the first dash"
    );
}
