//! The in-process event bus: named events with JSON data, delivered to
//! pattern subscriptions through bounded queues.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::FutureExt;

use super::pattern::Pattern;
use super::queue::{queue, QueueReceiver, QueueSender};
use super::subscription::Subscription;

/// Default number of events kept by [`Events::history`].
pub const DEFAULT_HISTORY: usize = 1000;

/// Default capacity of each subscription's queue, in events.
pub const DEFAULT_QUEUE: usize = 1024;

/// One emitted event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Event name, such as `job.completed` or `job.resize-image.failed`.
    pub name: String,
    /// Event payload.
    pub data: serde_json::Value,
    /// Time of the emit, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The node that emitted the event, when it came from another node
    /// through the database; `None` for events emitted in this process.
    pub origin: Option<String>,
}

/// Events gathered by one task and emitted together with
/// [`Events::emit_batch`].
#[derive(Debug, Default)]
pub struct EventBatch {
    events: Vec<Event>,
}

impl EventBatch {
    /// Creates an empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an event emitted in this process at `timestamp_ms`.
    pub fn push(&mut self, name: impl Into<String>, data: serde_json::Value, timestamp_ms: i64) {
        self.events.push(Event {
            name: name.into(),
            data,
            timestamp_ms,
            origin: None,
        });
    }

    /// Returns the number of events waiting in the batch.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Returns true when no event waits in the batch.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Limits of an [`Events`] bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// Number of most recent events kept for [`Events::history`]. 0 keeps
    /// none. Default [`DEFAULT_HISTORY`].
    pub history: usize,
    /// Capacity of each subscription's queue, in events. When a queue is
    /// full, [`Events::emit`] waits for it to drain. Events that a pull
    /// [`Subscription`] has taken give their room back in groups: at the
    /// latest after 64 of them, or when it has taken every event emitted
    /// together with them. A handler's events give their room back one by
    /// one as its calls start. 0 is treated as 1. Default [`DEFAULT_QUEUE`].
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            history: DEFAULT_HISTORY,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// Identifier of one subscription, unique within its [`Events`] bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// The event bus. Clones share one bus.
///
/// Every subscription has its own bounded queue. [`emit`](Self::emit) waits
/// while a matching subscription's queue is full, so a slow subscriber slows
/// the emitter down instead of losing events or growing memory without bound.
/// Events emitted one after another by one task reach every subscription in
/// that order. Events emitted concurrently from several tasks have no
/// defined order among themselves.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Bus>,
}

/// State shared by the clones of [`Events`] and, weakly, by each
/// [`Subscription`].
pub(super) struct Bus {
    config: EventsConfig,
    next_id: AtomicU64,
    subscribers: Mutex<BTreeMap<u64, Subscriber>>,
    history: Mutex<VecDeque<Arc<Event>>>,
}

struct Subscriber {
    pattern: Pattern,
    sender: QueueSender,
    /// Removes the subscription at its first match.
    once: bool,
    /// Cleared by `off`, so a handler task skips events already queued.
    active: Arc<AtomicBool>,
}

impl Events {
    /// Creates a bus with the limits in `config`.
    pub fn new(config: EventsConfig) -> Self {
        let config = EventsConfig {
            history: config.history,
            queue: config.queue.max(1),
        };
        Self {
            inner: Arc::new(Bus {
                config,
                next_id: AtomicU64::new(1),
                subscribers: Mutex::new(BTreeMap::new()),
                history: Mutex::new(VecDeque::with_capacity(config.history.min(1024))),
            }),
        }
    }

    /// Calls `handler` for every event whose name matches `pattern`, in emit
    /// order, on a task of its own.
    ///
    /// The task awaits each handler call before it starts the next, so one
    /// subscription never runs two handler calls at once. A handler that
    /// returns an error or panics is logged with `tracing::warn!`, and the
    /// next event is delivered as usual.
    ///
    /// Deadlock hazard: [`emit`](Self::emit) waits while a matching queue is
    /// full, and this subscription's queue drains only between handler
    /// calls. A handler that emits, and awaits that emit, into a name that
    /// its own pattern matches therefore waits forever once its queue is
    /// full. A cycle of handlers that emit into each other's patterns has the
    /// same hazard. Such a handler should emit from a spawned task instead.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, because the handler runs
    /// on a spawned task.
    pub fn on<F, Fut>(&self, pattern: &str, handler: F) -> SubscriptionId
    where
        F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let runtime = runtime_handle("Events::on");
        let (id, mut receiver, active) = self.inner.register(pattern, false, true);

        runtime.spawn(async move {
            while let Some(event) = receiver.recv().await {
                if !active.load(Ordering::Acquire) {
                    break;
                }
                run_handler(&event, async { handler(Arc::clone(&event)).await }).await;
            }
        });
        id
    }

    /// Calls `handler` for the first event whose name matches `pattern`, on a
    /// task of its own, then removes the subscription.
    ///
    /// Errors and panics of the handler are logged as for [`on`](Self::on),
    /// which also describes the deadlock hazard that applies here.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime.
    pub fn once<F, Fut>(&self, pattern: &str, handler: F) -> SubscriptionId
    where
        F: FnOnce(Arc<Event>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let runtime = runtime_handle("Events::once");
        let (id, mut receiver, active) = self.inner.register(pattern, true, true);

        runtime.spawn(async move {
            let Some(event) = receiver.recv().await else {
                return;
            };
            if active.load(Ordering::Acquire) {
                run_handler(&event, async { handler(Arc::clone(&event)).await }).await;
            }
        });
        id
    }

    /// Removes a subscription made with [`on`](Self::on),
    /// [`once`](Self::once) or [`subscribe`](Self::subscribe).
    ///
    /// After this returns, the handler is not called for any event whose
    /// call has not started yet, including events already in the queue. A
    /// call already running finishes.
    ///
    /// Returns `false` when the subscription was already removed, which
    /// includes a `once` subscription that has matched an event.
    pub fn off(&self, id: SubscriptionId) -> bool {
        self.inner.remove(id)
    }

    /// Records an event in the history and delivers it to every subscription
    /// whose pattern matches `name`.
    ///
    /// Waits while a matching subscription's queue is full.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe. When the future is dropped before it completes, the
    /// event is in the history and has reached some matching subscriptions
    /// but not others.
    pub async fn emit(&self, name: impl Into<String>, data: serde_json::Value) {
        self.emit_at(name, data, now_ms()).await;
    }

    /// Like [`emit`](Self::emit), with the event's time given by the
    /// caller, who read the clock once for a batch of events.
    pub async fn emit_at(&self, name: impl Into<String>, data: serde_json::Value, timestamp_ms: i64) {
        self.deliver(Event {
            name: name.into(),
            data,
            timestamp_ms,
            origin: None,
        })
        .await;
    }

    /// Emits an event that another node emitted first. Subscribers receive
    /// it like a local one, with `origin` set, so forwarders can skip it.
    pub async fn emit_remote(&self, origin: &str, name: impl Into<String>, data: serde_json::Value) {
        self.deliver(Event {
            name: name.into(),
            data,
            timestamp_ms: now_ms(),
            origin: Some(origin.to_string()),
        })
        .await;
    }

    /// Emits the events of `batch` in order, as [`emit_at`](Self::emit_at)
    /// would one by one, and leaves the batch empty.
    ///
    /// The history and the subscriptions are locked once for the batch
    /// instead of once per event, and each matching queue receives the
    /// batch's events back to back, so a waiting subscriber wakes once for
    /// many of them.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`emit`](Self::emit).
    pub async fn emit_batch(&self, batch: &mut EventBatch) {
        if batch.events.is_empty() {
            return;
        }
        self.deliver_all(batch.events.drain(..)).await;
    }

    async fn deliver(&self, event: Event) {
        self.deliver_all(std::iter::once(event)).await;
    }

    /// Records `events` in the history and sends each run of events with
    /// the same name to the queues that name matches. A `once`
    /// subscription gets only the first event of the run.
    async fn deliver_all(&self, events: impl Iterator<Item = Event>) {
        let events: Vec<Arc<Event>> = events.map(Arc::new).collect();
        self.inner.record(&events);

        let mut start = 0;
        while start < events.len() {
            let name = &events[start].name;
            let end = start + events[start..].iter().take_while(|event| event.name == *name).count();
            for (sender, once) in self.inner.matching_senders(name) {
                let run = if once { &events[start..=start] } else { &events[start..end] };
                // An error means the subscription was removed after the
                // senders were collected, so the run has nowhere to go.
                let _ = sender.send(run).await;
            }
            start = end;
        }
    }

    /// Creates a pull subscription for events whose name matches `pattern`.
    ///
    /// Events wait in the subscription's bounded queue until
    /// [`Subscription::recv`] takes them, and [`emit`](Self::emit) waits
    /// while that queue is full, so a subscription that is never read stalls
    /// the emitters of matching events. Dropping the subscription removes it.
    pub fn subscribe(&self, pattern: &str) -> Subscription {
        let (id, receiver, _active) = self.inner.register(pattern, false, false);
        Subscription::new(id, receiver, Arc::downgrade(&self.inner))
    }

    /// Returns the most recent events, oldest first, at most
    /// [`EventsConfig::history`] of them.
    pub fn history(&self) -> Vec<Arc<Event>> {
        lock(&self.inner.history).iter().cloned().collect()
    }

    /// Returns the number of live subscriptions of every kind.
    pub fn subscription_count(&self) -> usize {
        lock(&self.inner.subscribers).len()
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("config", &self.inner.config)
            .field("subscriptions", &self.subscription_count())
            .finish()
    }
}

impl Bus {
    /// Adds a subscription. `handler` is true for the queue of an `on` or
    /// `once` handler task.
    fn register(
        &self,
        pattern: &str,
        once: bool,
        handler: bool,
    ) -> (SubscriptionId, QueueReceiver, Arc<AtomicBool>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A handler task takes one event per handler call, so its events
        // give their room back one by one; see `Events::on`.
        let (sender, receiver) = queue(self.config.queue, handler);
        let active = Arc::new(AtomicBool::new(true));
        let subscriber = Subscriber {
            pattern: Pattern::new(pattern),
            sender,
            once,
            active: Arc::clone(&active),
        };

        lock(&self.subscribers).insert(id, subscriber);
        (SubscriptionId(id), receiver, active)
    }

    pub(super) fn remove(&self, id: SubscriptionId) -> bool {
        let removed = lock(&self.subscribers).remove(&id.0);
        match removed {
            Some(subscriber) => {
                subscriber.active.store(false, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Records `events` in the history. The events they push out are freed
    /// after the lock is released, because freeing an event's data takes
    /// longer than the lock needs to be held.
    fn record(&self, events: &[Arc<Event>]) {
        if self.config.history == 0 {
            return;
        }
        let mut evicted = Vec::with_capacity(events.len().min(self.config.history));
        {
            let mut history = lock(&self.history);
            for event in events {
                if history.len() == self.config.history {
                    evicted.extend(history.pop_front());
                }
                history.push_back(Arc::clone(event));
            }
        }
        drop(evicted);
    }

    /// Collects the queues that `name` goes to, each with whether it is a
    /// `once` subscription, and removes the `once` subscriptions among them
    /// so that no later event matches them.
    fn matching_senders(&self, name: &str) -> Vec<(QueueSender, bool)> {
        let mut subscribers = lock(&self.subscribers);
        let mut senders = Vec::new();

        subscribers.retain(|_, subscriber| {
            if subscriber.sender.is_closed() {
                return false;
            }
            if !subscriber.pattern.matches(name) {
                return true;
            }
            senders.push((subscriber.sender.clone(), subscriber.once));
            !subscriber.once
        });
        senders
    }
}

/// Awaits one handler call and logs its error or panic.
async fn run_handler<Fut>(event: &Event, call: Fut)
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    // The handler owns nothing of this task's state that a panic could leave
    // half updated, so continuing after an unwind is sound.
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(event = %event.name, error = %format_args!("{error:#}"), "event handler failed");
        }
        Err(payload) => {
            tracing::warn!(event = %event.name, error = panic_message(&payload), "event handler panicked");
        }
    }
}

fn panic_message(payload: &Box<dyn Any + Send>) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}

fn runtime_handle(caller: &str) -> tokio::runtime::Handle {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle,
        Err(error) => panic!("{caller} must be called inside a Tokio runtime: {error}"),
    }
}

fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
        // A clock set before 1970 gives a negative timestamp.
        Err(error) => -i64::try_from(error.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Locks `mutex` and ignores poisoning, because no code that runs while one
/// of these locks is held can leave its data half updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
