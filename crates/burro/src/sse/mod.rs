//! Server-Sent Events: a hub of clients that follow channels, with event
//! ids, bounded per-client queues, replay after reconnect and keep-alive.

mod client;
mod hub;
mod message;
mod response;
mod state;

pub use client::ClientStream;
pub use hub::{
    ClientId, Sse, SseConfig, DEFAULT_CLIENT_QUEUE, DEFAULT_KEEP_ALIVE, DEFAULT_RETRY,
    DEFAULT_RING, RESYNC_EVENT,
};
pub use message::SseMessage;

#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod tests;
