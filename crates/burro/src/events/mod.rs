//! The event bus: job lifecycle events such as `job.completed`, delivered in
//! order to handlers and pull subscriptions that match their names.
//!
//! Subscriptions take exact names or patterns in which `*` matches any run of
//! characters, dots included. Each subscription has a bounded queue, and
//! emitting waits while a matching queue is full, so no event is lost or
//! reordered and memory stays bounded.

mod bus;
mod pattern;
mod queue;
mod subscription;

pub use bus::{Event, EventBatch, Events, EventsConfig, SubscriptionId, DEFAULT_HISTORY, DEFAULT_QUEUE};
pub use pattern::{pattern_matches, Pattern};
pub use subscription::Subscription;

#[cfg(test)]
mod tests;
