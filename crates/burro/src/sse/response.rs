//! The HTTP response that carries an event stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use super::hub::Sse;
use super::message::SseMessage;

const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// Asks nginx not to buffer the response, which would delay every event.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

impl Sse {
    /// Turns a stream of messages, usually a
    /// [`ClientStream`](super::ClientStream), into an HTTP response.
    ///
    /// The response has `content-type: text/event-stream` and
    /// `cache-control: no-cache`. Its body starts with a `retry:` field
    /// holding [`SseConfig::retry`](super::SseConfig::retry) in
    /// milliseconds, then carries each message's bytes, and sends a
    /// `: keep-alive` comment after each
    /// [`SseConfig::keep_alive`](super::SseConfig::keep_alive) without a
    /// message. The body ends when `stream` ends. When the HTTP client goes
    /// away, the body and with it `stream` are dropped.
    pub fn response<S>(&self, stream: S) -> Response
    where
        S: Stream<Item = Arc<SseMessage>> + Send + 'static,
    {
        let config = &self.inner.config;
        let body = EventStreamBody::new(Box::pin(stream), config.retry, config.keep_alive);

        (
            [
                (CONTENT_TYPE, "text/event-stream"),
                (CACHE_CONTROL, "no-cache"),
                (X_ACCEL_BUFFERING, "no"),
            ],
            Body::from_stream(body),
        )
            .into_response()
    }
}

type MessageStream = Pin<Box<dyn Stream<Item = Arc<SseMessage>> + Send>>;

/// The body chunks: the `retry:` field, then messages and keep-alive
/// comments.
struct EventStreamBody {
    retry: Option<Bytes>,
    messages: MessageStream,
    keep_alive: Option<KeepAlive>,
}

struct KeepAlive {
    interval: Duration,
    timer: Pin<Box<Sleep>>,
}

impl EventStreamBody {
    fn new(messages: MessageStream, retry: Duration, keep_alive: Duration) -> Self {
        let retry = Bytes::from(format!("retry: {}\n\n", retry.as_millis()));
        let keep_alive = (!keep_alive.is_zero()).then(|| KeepAlive {
            interval: keep_alive,
            timer: Box::pin(tokio::time::sleep(keep_alive)),
        });
        Self {
            retry: Some(retry),
            messages,
            keep_alive,
        }
    }
}

impl KeepAlive {
    fn restart(&mut self) {
        let deadline = Instant::now() + self.interval;
        self.timer.as_mut().reset(deadline);
    }
}

impl Stream for EventStreamBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(retry) = this.retry.take() {
            return Poll::Ready(Some(Ok(retry)));
        }

        match this.messages.as_mut().poll_next(cx) {
            Poll::Ready(Some(message)) => {
                if let Some(keep_alive) = &mut this.keep_alive {
                    keep_alive.restart();
                }
                Poll::Ready(Some(Ok(message.bytes().clone())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some(keep_alive) = &mut this.keep_alive else {
                    return Poll::Pending;
                };
                if keep_alive.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                keep_alive.restart();
                Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE_COMMENT))))
            }
        }
    }
}
