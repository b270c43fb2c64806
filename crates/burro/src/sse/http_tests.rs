//! End-to-end tests: an axum server on a loopback port, read with reqwest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::json;

use super::tests::{parse_frames, within, Frame};
use super::*;

type BodyStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads complete events from a streaming response body.
struct EventReader {
    body: BodyStream,
    buffer: String,
}

impl EventReader {
    async fn next_frame(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                let mut frames = parse_frames(&text);
                assert_eq!(frames.len(), 1, "one event in {text:?}");
                return frames.remove(0);
            }
            let chunk = self
                .body
                .next()
                .await
                .expect("event stream ended early")
                .expect("reading the event stream failed");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("event stream is UTF-8"));
        }
    }

    /// Returns the next event that is not a keep-alive comment.
    async fn next_event(&mut self) -> Frame {
        loop {
            let frame = self.next_frame().await;
            if frame.comments.is_empty() {
                return frame;
            }
        }
    }
}

async fn events_route(
    State(sse): State<Sse>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let channels: Vec<String> = query
        .get("channels")
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());

    let (_, stream) = sse.add_client(&channels, last_event_id);
    sse.response(stream)
}

async fn serve(sse: Sse) -> SocketAddr {
    let app = Router::new()
        .route("/events", get(events_route))
        .with_state(sse);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let address = listener.local_addr().expect("listener address");
    tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("test server failed");
    });
    address
}

async fn connect(
    address: SocketAddr,
    channels: &str,
    last_event_id: Option<&str>,
) -> (HeaderMap, EventReader) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("building the HTTP client");
    let mut request = client.get(format!("http://{address}/events?channels={channels}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("connecting to the test server");
    assert_eq!(response.status(), reqwest::StatusCode::OK);

    let headers = response.headers().clone();
    let reader = EventReader {
        body: Box::pin(response.bytes_stream()),
        buffer: String::new(),
    };
    (headers, reader)
}

fn config(keep_alive: Duration) -> SseConfig {
    SseConfig {
        client_queue: 64,
        ring: 64,
        keep_alive,
        retry: Duration::from_millis(2500),
    }
}

/// Polls `condition` until it is true. The caller's timeout bounds the wait.
async fn wait_until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn http_stream_carries_retry_ids_events_and_data() {
    within(async {
        let sse = Sse::new(config(Duration::from_secs(3600)));
        let address = serve(sse.clone()).await;
        let (headers, mut reader) = connect(address, "jobs,job:j1", None).await;

        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        let first = reader.next_frame().await;
        assert_eq!(first.retry.as_deref(), Some("2500"));
        assert_eq!(first.data, None);

        sse.broadcast("jobs", "progress", &json!({ "jobId": "j1", "percent": 50 }));
        sse.broadcast(
            "job:j1",
            "completed",
            &json!({ "jobId": "j1", "result": { "ok": true } }),
        );
        sse.broadcast("job:j2", "completed", &json!({ "jobId": "j2" }));
        sse.broadcast_all("log", &json!({ "message": "line one\nline two" }));

        let expected = [
            (1, "progress", json!({ "jobId": "j1", "percent": 50 })),
            (
                2,
                "completed",
                json!({ "jobId": "j1", "result": { "ok": true } }),
            ),
            (4, "log", json!({ "message": "line one\nline two" })),
        ];
        for (sequence, event, data) in expected {
            let frame = reader.next_event().await;
            assert_eq!(frame.id, Some(format!("{}-{sequence}", sse.epoch())));
            assert_eq!(frame.event.as_deref(), Some(event));
            let received: serde_json::Value =
                serde_json::from_str(frame.data.as_deref().expect("event has data"))
                    .expect("data is JSON");
            assert_eq!(received, data);
        }
    })
    .await;
}

#[tokio::test]
async fn http_replay_after_reconnect() {
    within(async {
        let sse = Sse::new(config(Duration::from_secs(3600)));
        let address = serve(sse.clone()).await;

        let (_, mut reader) = connect(address, "job:j1", None).await;
        reader.next_frame().await;
        sse.broadcast("job:j1", "progress", &json!(1));
        let seen = reader.next_event().await;
        drop(reader);

        sse.broadcast("job:j1", "progress", &json!(2));
        sse.broadcast("job:j2", "progress", &json!("other job"));
        sse.broadcast("job:j1", "completed", &json!(3));

        let (_, mut reader) = connect(address, "job:j1", seen.id.as_deref()).await;
        assert!(
            reader.next_frame().await.retry.is_some(),
            "retry comes first"
        );
        sse.broadcast("job:j1", "log", &json!(4));

        for (event, data) in [("progress", "2"), ("completed", "3"), ("log", "4")] {
            let frame = reader.next_event().await;
            assert_eq!(frame.event.as_deref(), Some(event));
            assert_eq!(frame.data.as_deref(), Some(data));
        }
    })
    .await;
}

#[tokio::test]
async fn http_resync_for_foreign_epoch() {
    within(async {
        let sse = Sse::new(config(Duration::from_secs(3600)));
        let address = serve(sse.clone()).await;
        sse.broadcast("jobs", "progress", &json!(1));

        let (_, mut reader) = connect(address, "jobs", Some("0123abcd-1")).await;
        reader.next_frame().await;
        let frame = reader.next_event().await;
        assert_eq!(frame.event.as_deref(), Some(RESYNC_EVENT));
        assert_eq!(frame.id, Some(format!("{}-1", sse.epoch())));
        assert_eq!(frame.data.as_deref(), Some(r#"{"reason":"epoch_changed"}"#));
    })
    .await;
}

#[tokio::test]
async fn http_keep_alive_comment_after_silence() {
    within(async {
        let sse = Sse::new(config(Duration::from_millis(50)));
        let address = serve(sse.clone()).await;
        let (_, mut reader) = connect(address, "jobs", None).await;
        reader.next_frame().await;

        let frame = reader.next_frame().await;
        assert_eq!(frame.comments, ["keep-alive"]);
        assert_eq!(frame.data, None);

        sse.broadcast("jobs", "progress", &json!(1));
        let frame = reader.next_event().await;
        assert_eq!(frame.event.as_deref(), Some("progress"));
    })
    .await;
}

#[tokio::test]
async fn http_disconnect_removes_client() {
    within(async {
        // Keep-alive writes make the server notice the closed connection.
        let sse = Sse::new(config(Duration::from_millis(20)));
        let address = serve(sse.clone()).await;
        let (_, mut reader) = connect(address, "jobs", None).await;
        reader.next_frame().await;
        assert_eq!(sse.client_count(), 1);

        drop(reader);
        wait_until(|| sse.client_count() == 0).await;
    })
    .await;
}
