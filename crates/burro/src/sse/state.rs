//! The hub's state behind its lock: clients, the channel index, the shared
//! sequence counter and the replay ring.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::message::SseMessage;

/// The clients that a message goes to.
pub(super) enum Audience<'a> {
    All,
    Channels(&'a [&'a str]),
    Client(u64),
}

/// Reason a reconnecting client gets a `resync` event instead of a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ResyncReason {
    /// The last event id does not have the form `<epoch>-<sequence>`.
    InvalidId,
    /// The last event id comes from another hub instance, such as the server
    /// process before a restart.
    EpochChanged,
    /// Messages after the last event id were dropped from the ring.
    Expired,
    /// The last event id is newer than any message of this hub.
    UnknownId,
}

impl ResyncReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::InvalidId => "invalid_id",
            Self::EpochChanged => "epoch_changed",
            Self::Expired => "expired",
            Self::UnknownId => "unknown_id",
        }
    }
}

/// A message kept for replay, with the channels it was broadcast to.
struct RingEntry {
    sequence: u64,
    /// `None` for a message broadcast to every client.
    channels: Option<Box<[String]>>,
    message: Arc<SseMessage>,
}

struct Client {
    sender: mpsc::Sender<Arc<SseMessage>>,
    channels: HashSet<String>,
}

pub(super) struct State {
    ring_capacity: usize,
    /// Sequence number of the newest message. One counter serves every
    /// channel, because a browser keeps one last event id per connection.
    sequence: u64,
    /// Highest sequence number whose message can no longer be replayed.
    /// A client whose last event id is at least this has missed nothing
    /// that the ring lacks.
    expired_through: u64,
    ring: VecDeque<RingEntry>,
    clients: HashMap<u64, Client>,
    channels: HashMap<String, HashSet<u64>>,
}

/// Outcome of one delivery.
pub(super) struct Delivery {
    /// Clients removed because their queue was full.
    pub(super) overflowed: Vec<u64>,
}

impl State {
    pub(super) fn new(ring_capacity: usize) -> Self {
        Self {
            ring_capacity,
            sequence: 0,
            expired_through: 0,
            ring: VecDeque::with_capacity(ring_capacity.min(4096)),
            clients: HashMap::new(),
            channels: HashMap::new(),
        }
    }

    pub(super) fn sequence(&self) -> u64 {
        self.sequence
    }

    pub(super) fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub(super) fn has_client(&self, client: u64) -> bool {
        self.clients.contains_key(&client)
    }

    /// Advances the shared counter and returns the new sequence number.
    pub(super) fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    /// Checks that the ring still has every message newer than
    /// `last_sequence`, a sequence number of this hub's epoch.
    pub(super) fn check_replay(&self, last_sequence: u64) -> Result<(), ResyncReason> {
        if last_sequence > self.sequence {
            Err(ResyncReason::UnknownId)
        } else if last_sequence < self.expired_through {
            Err(ResyncReason::Expired)
        } else {
            Ok(())
        }
    }

    /// Returns the ring's messages newer than `last_sequence` that were sent
    /// to every client or to one of `channels`, oldest first.
    pub(super) fn replay(
        &self,
        last_sequence: u64,
        channels: &HashSet<String>,
    ) -> VecDeque<Arc<SseMessage>> {
        let start = self
            .ring
            .partition_point(|entry| entry.sequence <= last_sequence);
        self.ring
            .range(start..)
            .filter(|entry| match &entry.channels {
                None => true,
                Some(targets) => targets.iter().any(|channel| channels.contains(channel)),
            })
            .map(|entry| Arc::clone(&entry.message))
            .collect()
    }

    pub(super) fn add_client(
        &mut self,
        client: u64,
        sender: mpsc::Sender<Arc<SseMessage>>,
        channels: HashSet<String>,
    ) {
        for channel in &channels {
            self.channels
                .entry(channel.clone())
                .or_default()
                .insert(client);
        }
        self.clients.insert(client, Client { sender, channels });
    }

    /// Removes a client. Dropping its queue's sender ends its stream once
    /// the queued messages are taken.
    pub(super) fn remove_client(&mut self, client: u64) -> bool {
        let Some(removed) = self.clients.remove(&client) else {
            return false;
        };
        for channel in &removed.channels {
            self.leave_channel(client, channel);
        }
        true
    }

    pub(super) fn subscribe(&mut self, client: u64, channel: &str) -> bool {
        let Some(entry) = self.clients.get_mut(&client) else {
            return false;
        };
        if !entry.channels.insert(channel.to_owned()) {
            return false;
        }
        self.channels
            .entry(channel.to_owned())
            .or_default()
            .insert(client);
        true
    }

    pub(super) fn unsubscribe(&mut self, client: u64, channel: &str) -> bool {
        let Some(entry) = self.clients.get_mut(&client) else {
            return false;
        };
        if !entry.channels.remove(channel) {
            return false;
        }
        self.leave_channel(client, channel);
        true
    }

    /// Removes `client` from the index of `channel`, and drops the channel's
    /// entry when it has no client left, so that per-job channels do not
    /// accumulate.
    fn leave_channel(&mut self, client: u64, channel: &str) {
        if let Some(members) = self.channels.get_mut(channel) {
            members.remove(&client);
            if members.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// Keeps a broadcast message for replay, dropping the oldest one when the
    /// ring is full.
    pub(super) fn store(
        &mut self,
        sequence: u64,
        channels: Option<&[&str]>,
        message: &Arc<SseMessage>,
    ) {
        if self.ring_capacity == 0 {
            self.expired_through = sequence;
            return;
        }
        if self.ring.len() == self.ring_capacity {
            if let Some(oldest) = self.ring.pop_front() {
                self.expired_through = oldest.sequence;
            }
        }
        self.ring.push_back(RingEntry {
            sequence,
            channels: channels.map(|names| names.iter().map(|name| (*name).to_owned()).collect()),
            message: Arc::clone(message),
        });
    }

    /// Queues `message` for every client in `audience` without waiting, and
    /// removes each client whose queue is full.
    pub(super) fn deliver(
        &mut self,
        audience: Audience<'_>,
        message: &Arc<SseMessage>,
    ) -> Delivery {
        let recipients: Vec<u64> = match audience {
            Audience::All => self.clients.keys().copied().collect(),
            Audience::Client(client) => vec![client],
            Audience::Channels([channel]) => self
                .channels
                .get(*channel)
                .map(|members| members.iter().copied().collect())
                .unwrap_or_default(),
            // A client on several of the channels is collected once.
            Audience::Channels(channels) => channels
                .iter()
                .filter_map(|channel| self.channels.get(*channel))
                .flatten()
                .copied()
                .collect::<HashSet<u64>>()
                .into_iter()
                .collect(),
        };

        let mut overflowed = Vec::new();
        let mut closed = Vec::new();
        for client in recipients {
            let Some(entry) = self.clients.get(&client) else {
                continue;
            };
            match entry.sender.try_send(Arc::clone(message)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => overflowed.push(client),
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(client),
            }
        }

        for client in overflowed.iter().chain(&closed) {
            self.remove_client(*client);
        }
        Delivery { overflowed }
    }
}
