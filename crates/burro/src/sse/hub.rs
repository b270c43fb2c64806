//! The SSE hub: clients, channels, event ids and replay.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::client::ClientStream;
use super::message::{MessageBody, SseMessage};
use super::state::{Audience, Delivery, ResyncReason, State};

/// Default capacity of each client's queue, in messages.
pub const DEFAULT_CLIENT_QUEUE: usize = 1024;

/// Default number of broadcast messages kept for replay.
pub const DEFAULT_RING: usize = 4096;

/// Default interval of silence after which a keep-alive comment is sent.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Default reconnection delay sent to browsers in the `retry:` field.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);

/// Name of the event that requests a reconnecting client to reload its state.
pub const RESYNC_EVENT: &str = "resync";

/// Limits and timings of an [`Sse`] hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseConfig {
    /// Capacity of each client's queue, in messages. A client whose queue is
    /// full when a message arrives is disconnected. 0 is treated as 1.
    /// Default [`DEFAULT_CLIENT_QUEUE`].
    pub client_queue: usize,
    /// Number of most recent broadcast messages kept for replay to clients
    /// that reconnect with `Last-Event-ID`. 0 keeps none. Default
    /// [`DEFAULT_RING`].
    pub ring: usize,
    /// Interval of silence after which a `: keep-alive` comment is sent, so
    /// that proxies do not close an idle stream. Zero sends none. Default
    /// [`DEFAULT_KEEP_ALIVE`].
    pub keep_alive: Duration,
    /// Reconnection delay sent to browsers in the `retry:` field, in
    /// milliseconds. Default [`DEFAULT_RETRY`].
    pub retry: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            client_queue: DEFAULT_CLIENT_QUEUE,
            ring: DEFAULT_RING,
            keep_alive: DEFAULT_KEEP_ALIVE,
            retry: DEFAULT_RETRY,
        }
    }
}

/// Identifier of one client of a hub.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClientId(pub(super) u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The Server-Sent Events hub. Clones share one hub.
///
/// Clients follow channels such as `job:<id>` or `jobs`. Every broadcast
/// gets the id `<epoch>-<sequence>`, where the epoch is fixed for this hub
/// instance and one sequence counter serves all channels, because a browser
/// keeps a single last event id per connection even when that connection
/// follows several channels.
///
/// Broadcasting never waits. Each message is serialized once and shared by
/// every client that receives it. A client whose bounded queue is full is
/// disconnected instead of growing the server's memory, and it resumes with
/// `Last-Event-ID` from the replay ring.
#[derive(Clone)]
pub struct Sse {
    pub(super) inner: Arc<Hub>,
}

pub(super) struct Hub {
    pub(super) config: SseConfig,
    epoch: String,
    next_client: AtomicU64,
    state: Mutex<State>,
}

/// Messages that a new client's stream yields before the live ones.
enum Start {
    Live,
    Replay(VecDeque<Arc<SseMessage>>),
    Resync { reason: ResyncReason, sequence: u64 },
}

impl Sse {
    /// Creates a hub with a new random epoch.
    pub fn new(config: SseConfig) -> Self {
        let config = SseConfig {
            client_queue: config.client_queue.max(1),
            ..config
        };
        Self {
            inner: Arc::new(Hub {
                config,
                epoch: format!("{:016x}", rand::random::<u64>()),
                next_client: AtomicU64::new(1),
                state: Mutex::new(State::new(config.ring)),
            }),
        }
    }

    /// Returns the epoch, the part of every event id before the `-`.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// Registers a client on `channels` and returns the stream of its
    /// messages.
    ///
    /// Without `last_event_id` the stream starts with the next message. With
    /// an id of this hub whose successors are all still in the ring, the
    /// stream first yields the missed messages of its channels, in order.
    /// Otherwise it first yields one [`RESYNC_EVENT`] event that requests the
    /// client to reload its state. Its data is `{"reason": R}`, where R is
    /// `invalid_id` (not of the form `<epoch>-<sequence>`), `epoch_changed`
    /// (another hub instance, such as the server before a restart),
    /// `expired` (missed messages were dropped from the ring) or
    /// `unknown_id` (newer than any message of this hub). The resync event
    /// carries the current id, so a later reconnect replays from there.
    ///
    /// Dropping the stream removes the client.
    pub fn add_client(
        &self,
        channels: &[String],
        last_event_id: Option<&str>,
    ) -> (ClientId, ClientStream) {
        let client = self.inner.next_client.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(self.inner.config.client_queue);
        let channels: HashSet<String> = channels.iter().cloned().collect();

        // Registering under the same lock as the replay means that every
        // message reaches the client exactly once, by replay or live.
        let mut state = self.inner.lock();
        let start = match last_event_id {
            None => Start::Live,
            Some(id) => self.inner.start_after(&state, id, &channels),
        };
        state.add_client(client, sender, channels);
        drop(state);

        let first = match start {
            Start::Live => VecDeque::new(),
            Start::Replay(messages) => {
                tracing::debug!(
                    client_id = client,
                    replayed = messages.len(),
                    "sse client replays missed messages"
                );
                messages
            }
            Start::Resync { reason, sequence } => {
                tracing::debug!(
                    client_id = client,
                    reason = reason.as_str(),
                    "sse client must resync"
                );
                let data = json!({ "reason": reason.as_str() }).to_string();
                let id = self.inner.event_id(sequence);
                VecDeque::from([Arc::new(SseMessage::new(Some(id), RESYNC_EVENT, data))])
            }
        };

        let id = ClientId(client);
        (
            id,
            ClientStream::new(id, first, receiver, Arc::downgrade(&self.inner)),
        )
    }

    /// Adds `channel` to a client's channels. Messages broadcast to it
    /// earlier are not replayed.
    ///
    /// Returns `false` when the client is unknown or already on `channel`.
    pub fn subscribe(&self, client: ClientId, channel: &str) -> bool {
        self.inner.lock().subscribe(client.0, channel)
    }

    /// Removes `channel` from a client's channels.
    ///
    /// Returns `false` when the client is unknown or not on `channel`.
    pub fn unsubscribe(&self, client: ClientId, channel: &str) -> bool {
        self.inner.lock().unsubscribe(client.0, channel)
    }

    /// Sends one message to every client on `channel` and keeps it in the
    /// ring, even when the channel has no client.
    pub fn broadcast(&self, channel: &str, event: &str, data: &serde_json::Value) {
        self.inner.publish(Some(&[channel]), event, data);
    }

    /// Sends one message to every client on any of `channels`, once per
    /// client even when it is on several of them, and keeps it once in the
    /// ring.
    pub fn broadcast_many(&self, channels: &[&str], event: &str, data: &serde_json::Value) {
        self.inner.publish(Some(channels), event, data);
    }

    /// Sends one message to every client and keeps it in the ring, where it
    /// is replayed to any reconnecting client.
    pub fn broadcast_all(&self, event: &str, data: &serde_json::Value) {
        self.inner.publish(None, event, data);
    }

    /// Sends a message to one client. It gets an id from the shared counter
    /// but is not kept in the ring, so it is never replayed.
    ///
    /// Returns `false` when the client is unknown, or when its queue is full,
    /// in which case the client is disconnected.
    pub fn send_to(&self, client: ClientId, event: &str, data: &serde_json::Value) -> bool {
        self.inner.send_to(client.0, event, data)
    }

    /// Removes a client. Its stream yields the messages already queued, then
    /// ends.
    pub fn remove_client(&self, client: ClientId) {
        self.inner.remove(client.0);
    }

    /// Returns the number of connected clients.
    pub fn client_count(&self) -> usize {
        self.inner.lock().client_count()
    }
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sse")
            .field("epoch", &self.inner.epoch)
            .field("config", &self.inner.config)
            .field("clients", &self.client_count())
            .finish()
    }
}

impl Hub {
    /// Locks the state and ignores poisoning, because no code that runs
    /// while the lock is held can leave the state half updated.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn event_id(&self, sequence: u64) -> String {
        format!("{}-{}", self.epoch, sequence)
    }

    fn parse_event_id(&self, id: &str) -> Result<u64, ResyncReason> {
        let (epoch, sequence) = id.split_once('-').ok_or(ResyncReason::InvalidId)?;
        if epoch != self.epoch {
            return Err(ResyncReason::EpochChanged);
        }
        sequence.parse().map_err(|_| ResyncReason::InvalidId)
    }

    /// Decides what a client that reconnects with `last_event_id` receives
    /// before the live messages.
    fn start_after(&self, state: &State, last_event_id: &str, channels: &HashSet<String>) -> Start {
        let checked = self
            .parse_event_id(last_event_id)
            .and_then(|last| state.check_replay(last).map(|()| last));

        match checked {
            Ok(last) => Start::Replay(state.replay(last, channels)),
            Err(reason) => Start::Resync {
                reason,
                sequence: state.sequence(),
            },
        }
    }

    /// Numbers, stores and delivers one broadcast. `channels` is `None` for
    /// a broadcast to every client.
    fn publish(&self, channels: Option<&[&str]>, event: &str, data: &serde_json::Value) {
        // Serialize and encode before taking the lock, once for all clients.
        let body = MessageBody::new(event, data.to_string());

        let mut state = self.lock();
        let sequence = state.next_sequence();
        let message = Arc::new(body.into_message(Some(self.event_id(sequence))));
        state.store(sequence, channels, &message);
        let audience = match channels {
            Some(channels) => Audience::Channels(channels),
            None => Audience::All,
        };
        let delivery = state.deliver(audience, &message);
        drop(state);

        self.log_overflow(&delivery);
    }

    fn send_to(&self, client: u64, event: &str, data: &serde_json::Value) -> bool {
        let body = MessageBody::new(event, data.to_string());

        let mut state = self.lock();
        if !state.has_client(client) {
            return false;
        }
        let sequence = state.next_sequence();
        let message = Arc::new(body.into_message(Some(self.event_id(sequence))));
        let delivery = state.deliver(Audience::Client(client), &message);
        let delivered = state.has_client(client);
        drop(state);

        self.log_overflow(&delivery);
        delivered
    }

    pub(super) fn remove(&self, client: u64) {
        if self.lock().remove_client(client) {
            tracing::debug!(client_id = client, "sse client removed");
        }
    }

    fn log_overflow(&self, delivery: &Delivery) {
        for client in &delivery.overflowed {
            tracing::info!(
                client_id = client,
                queue_capacity = self.config.client_queue,
                "disconnected sse client because its queue is full"
            );
        }
    }
}
