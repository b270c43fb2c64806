//! Pull subscriptions: a queue of matching events that the owner reads.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::Stream;

use super::bus::{Bus, Event, SubscriptionId};
use super::queue::QueueReceiver;

/// A pull subscription made by [`Events::subscribe`](super::Events::subscribe).
///
/// It is also a [`Stream`] of the same events. Dropping it removes the
/// subscription from its bus.
#[must_use = "dropping a subscription removes it"]
pub struct Subscription {
    id: SubscriptionId,
    receiver: QueueReceiver,
    bus: Weak<Bus>,
}

impl Subscription {
    pub(super) fn new(
        id: SubscriptionId,
        receiver: QueueReceiver,
        bus: Weak<Bus>,
    ) -> Self {
        Self { id, receiver, bus }
    }

    /// Returns the identifier that [`Events::off`](super::Events::off)
    /// accepts.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// Waits for the next matching event.
    ///
    /// Returns `None` once the subscription was removed with `off` or every
    /// clone of its bus was dropped, and the queued events were taken.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: when the future is dropped before it completes, no event
    /// is lost.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        self.receiver.recv().await
    }

    /// Takes the next queued event without waiting. Returns `None` when the
    /// queue is empty or the subscription has ended.
    pub fn try_recv(&mut self) -> Option<Arc<Event>> {
        self.receiver.try_recv()
    }
}

impl Stream for Subscription {
    type Item = Arc<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().receiver.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.remove(self.id);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
