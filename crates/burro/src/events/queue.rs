//! The bounded queue between the bus and one subscription.
//!
//! Events travel in chunks: an emitter sends the events of one run as one
//! message, so the reader wakes once per chunk, not once per event. The
//! bound counts events, not chunks. A sender takes one permit of a
//! semaphore per event before it sends. The reader gives the permits back
//! as it takes the events out, at the latest every [`RETURN_EVERY`] events,
//! or at every event for a handler's queue. The events of a chunk that the
//! reader has received count until it takes them, so at most `capacity`
//! events wait in the queue and in the reader together.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Semaphore};

use super::bus::Event;

/// Events the reader takes before it gives their permits back, when its
/// chunk has more left.
const RETURN_EVERY: usize = 64;

/// Largest chunk sent as one message. Longer runs are split.
const MAX_CHUNK: usize = 4096;

/// Creates a queue of at most `capacity` events (at least one). With
/// `return_each`, the reader gives each event's room back as it takes the
/// event, so a handler may emit into its own queue unless that queue is
/// full of events waiting behind the one it handles.
pub(super) fn queue(capacity: usize, return_each: bool) -> (QueueSender, QueueReceiver) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(capacity));
    let (chunks_tx, chunks_rx) = mpsc::unbounded_channel();
    let sender = QueueSender {
        chunks: chunks_tx,
        room: Arc::clone(&room),
        chunk: capacity.min(MAX_CHUNK),
    };
    let receiver = QueueReceiver {
        chunks: chunks_rx,
        room,
        current: Vec::new().into_iter(),
        owed_permits: 0,
        return_every: if return_each { 1 } else { RETURN_EVERY },
    };
    (sender, receiver)
}

/// The sending half. Clones send into the same queue.
#[derive(Clone)]
pub(super) struct QueueSender {
    chunks: mpsc::UnboundedSender<Vec<Arc<Event>>>,
    room: Arc<Semaphore>,
    /// Events per chunk at most: the capacity, so a chunk can always get
    /// its permits, and never more than [`MAX_CHUNK`].
    chunk: usize,
}

/// The receiver is gone, so nothing sent after that is delivered.
#[derive(Debug)]
pub(super) struct Closed;

impl QueueSender {
    /// Sends `events` in order, waiting while the queue has no room for
    /// them.
    ///
    /// Returns [`Closed`] once the receiver is dropped. The events not sent
    /// by then are not delivered.
    pub(super) async fn send(&self, events: &[Arc<Event>]) -> Result<(), Closed> {
        for chunk in events.chunks(self.chunk) {
            // A chunk is at most the capacity and at most MAX_CHUNK, so the
            // count fits a u32 and can always be granted.
            let permits = self.room.acquire_many(chunk.len() as u32).await.map_err(|_| Closed)?;
            // The permits now belong to the events in the queue. The reader
            // adds them back as it takes the events.
            permits.forget();
            self.chunks.send(chunk.to_vec()).map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Returns true once the receiver is dropped.
    pub(super) fn is_closed(&self) -> bool {
        self.chunks.is_closed()
    }
}

/// The receiving half.
pub(super) struct QueueReceiver {
    chunks: mpsc::UnboundedReceiver<Vec<Arc<Event>>>,
    room: Arc<Semaphore>,
    /// The rest of the chunk received last.
    current: std::vec::IntoIter<Arc<Event>>,
    /// Events taken whose permits are not given back yet.
    owed_permits: usize,
    /// Events taken before their permits are given back, when the chunk
    /// has more left.
    return_every: usize,
}

impl QueueReceiver {
    /// Waits for the next event. Returns `None` once every sender is
    /// dropped and the queue is empty.
    ///
    /// Cancel safe: a chunk is kept as soon as it is received.
    pub(super) async fn recv(&mut self) -> Option<Arc<Event>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes the next event without waiting. Returns `None` when the queue
    /// is empty or closed.
    pub(super) fn try_recv(&mut self) -> Option<Arc<Event>> {
        if let Some(event) = self.take() {
            return Some(event);
        }
        let chunk = self.chunks.try_recv().ok()?;
        self.current = chunk.into_iter();
        self.take()
    }

    pub(super) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Event>>> {
        if let Some(event) = self.take() {
            return Poll::Ready(Some(event));
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                self.current = chunk.into_iter();
                Poll::Ready(self.take())
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes the next event of the current chunk and gives permits back
    /// when the chunk is used up or `return_every` events were taken.
    fn take(&mut self) -> Option<Arc<Event>> {
        let event = self.current.next()?;
        self.owed_permits += 1;
        if self.owed_permits >= self.return_every || self.current.len() == 0 {
            self.room.add_permits(self.owed_permits);
            self.owed_permits = 0;
        }
        Some(event)
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        // Senders waiting for room fail instead of waiting forever.
        self.room.close();
    }
}
