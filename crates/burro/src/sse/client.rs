//! The stream of messages for one client of the hub.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use super::hub::{ClientId, Hub};
use super::message::SseMessage;

/// The messages of one client, made by [`Sse::add_client`](super::Sse::add_client):
/// first the replayed or `resync` messages, then the live ones.
///
/// The stream ends after the client was removed, by
/// [`Sse::remove_client`](super::Sse::remove_client) or because its queue
/// was full, and its queued messages were taken. Dropping the stream removes
/// the client from the hub.
#[must_use = "dropping the stream removes the client"]
pub struct ClientStream {
    id: ClientId,
    first: VecDeque<Arc<SseMessage>>,
    receiver: mpsc::Receiver<Arc<SseMessage>>,
    hub: Weak<Hub>,
}

impl ClientStream {
    pub(super) fn new(
        id: ClientId,
        first: VecDeque<Arc<SseMessage>>,
        receiver: mpsc::Receiver<Arc<SseMessage>>,
        hub: Weak<Hub>,
    ) -> Self {
        Self {
            id,
            first,
            receiver,
            hub,
        }
    }

    /// Returns the id of this stream's client.
    pub fn id(&self) -> ClientId {
        self.id
    }
}

impl Stream for ClientStream {
    type Item = Arc<SseMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(message) = this.first.pop_front() {
            return Poll::Ready(Some(message));
        }
        this.receiver.poll_recv(cx)
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.remove(self.id.0);
        }
    }
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
