use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::json;
use tokio::sync::{mpsc, Notify};

use super::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("test did not finish within its timeout")
}

fn bus(history: usize, queue: usize) -> Events {
    Events::new(EventsConfig { history, queue })
}

/// Receives from `receiver` until every sender is gone.
async fn drain<T>(mut receiver: mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut items = Vec::new();
    while let Some(item) = receiver.recv().await {
        items.push(item);
    }
    items
}

#[test]
fn pattern_matching_table() {
    let cases = [
        ("job.completed", "job.completed", true),
        ("job.completed", "job.failed", false),
        ("job.completed", "job.completed.extra", false),
        ("job.completed", "job", false),
        ("job.*.completed", "job.resize-image.completed", true),
        ("job.*.completed", "job.a.b.completed", true),
        ("job.*.completed", "job..completed", true),
        ("job.*.completed", "job.resize-image.failed", false),
        ("job.*.completed", "job.completed", false),
        ("job.*", "job.a.b", true),
        ("job.*", "job.", true),
        ("job.*", "job", false),
        ("job.*", "jobs.a", false),
        ("*", "", true),
        ("*", "anything.at.all", true),
        ("*.failed", "job.x.failed", true),
        ("*.failed", "job.x.failed.not", false),
        ("a*a", "a", false),
        ("a*a", "aa", true),
        ("a*b*c", "a-c-b-c", true),
        ("a*b*c", "a-c-c", false),
        ("a**c", "abc", true),
        ("", "", true),
        ("", "a", false),
        ("job.ext*.log", "job.external.log", true),
        ("é*ü", "é.ü", true),
    ];

    for (pattern, name, expected) in cases {
        assert_eq!(
            pattern_matches(pattern, name),
            expected,
            "pattern {pattern:?} against name {name:?}"
        );
    }
}

#[tokio::test]
async fn slow_handler_receives_every_event_in_order() {
    within(async {
        const COUNT: u64 = 2_000;
        let events = bus(10, 16);
        let (sender, receiver) = mpsc::unbounded_channel();

        events.on("job.*", move |event| {
            let sender = sender.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                sender.send(event.data["n"].as_u64().expect("n is a number"))?;
                Ok(())
            }
        });
        for n in 0..COUNT {
            events.emit("job.progress", json!({ "n": n })).await;
        }
        drop(events);

        let received = drain(receiver).await;
        let expected: Vec<u64> = (0..COUNT).collect();
        assert_eq!(received, expected);
    })
    .await;
}

#[tokio::test]
async fn emit_waits_while_queue_is_full() {
    within(async {
        let events = bus(10, 2);
        let mut subscription = events.subscribe("*");

        events.emit("first", json!(1)).await;
        events.emit("second", json!(2)).await;
        let mut third = Box::pin(events.emit("third", json!(3)));
        assert!(
            (&mut third).now_or_never().is_none(),
            "emit into a full queue must wait"
        );

        assert_eq!(
            subscription.recv().await.expect("first event").name,
            "first"
        );
        third.await;
        assert_eq!(
            subscription.recv().await.expect("second event").name,
            "second"
        );
        assert_eq!(
            subscription.recv().await.expect("third event").name,
            "third"
        );
    })
    .await;
}

#[tokio::test]
async fn off_stops_deliveries() {
    within(async {
        let events = bus(10, 16);
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let id = events.on("job.*", move |event| {
            let sender = sender.clone();
            async move {
                sender.send(event.name.clone())?;
                Ok(())
            }
        });

        events.emit("job.a", json!(null)).await;
        assert_eq!(receiver.recv().await.as_deref(), Some("job.a"));

        assert!(events.off(id), "first off removes the subscription");
        assert!(!events.off(id), "second off finds nothing to remove");
        events.emit("job.b", json!(null)).await;

        // The handler task ends, dropping the handler and its sender, so the
        // channel closes without delivering `job.b`.
        assert_eq!(receiver.recv().await, None);
    })
    .await;
}

#[tokio::test]
async fn off_skips_queued_events() {
    within(async {
        let events = bus(10, 16);
        let gate = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (sender, receiver) = mpsc::unbounded_channel();
        let handler_gate = Arc::clone(&gate);
        let handler_started = Arc::clone(&started);

        let id = events.on("*", move |event| {
            let sender = sender.clone();
            let gate = Arc::clone(&handler_gate);
            let started = Arc::clone(&handler_started);
            async move {
                if event.name == "first" {
                    started.notify_one();
                    gate.notified().await;
                }
                sender.send(event.name.clone())?;
                Ok(())
            }
        });

        events.emit("first", json!(null)).await;
        started.notified().await;
        events.emit("queued-1", json!(null)).await;
        events.emit("queued-2", json!(null)).await;
        assert!(events.off(id));
        gate.notify_one();

        assert_eq!(drain(receiver).await, vec!["first".to_owned()]);
    })
    .await;
}

#[tokio::test]
async fn once_fires_once() {
    within(async {
        let events = bus(10, 16);
        let (sender, receiver) = mpsc::unbounded_channel();
        let id = events.once("job.*", move |event| async move {
            sender.send(event.name.clone())?;
            Ok(())
        });
        assert_eq!(events.subscription_count(), 1);

        events.emit("other", json!(null)).await;
        events.emit("job.a", json!(null)).await;
        events.emit("job.b", json!(null)).await;

        assert_eq!(drain(receiver).await, vec!["job.a".to_owned()]);
        assert_eq!(events.subscription_count(), 0);
        assert!(
            !events.off(id),
            "a fired once subscription is already removed"
        );
    })
    .await;
}

#[tokio::test]
async fn failing_handlers_do_not_stop_deliveries() {
    within(async {
        let events = bus(10, 16);
        let (sender, mut receiver) = mpsc::unbounded_channel::<(&'static str, u64)>();

        let erring = sender.clone();
        events.on("job.*", move |event| {
            let sender = erring.clone();
            async move {
                let n = event.data.as_u64().unwrap_or_default();
                sender.send(("erring", n))?;
                anyhow::ensure!(n != 1, "handler failure for event {n}");
                Ok(())
            }
        });
        let panicking = sender.clone();
        events.on("job.*", move |event| {
            let sender = panicking.clone();
            async move {
                let n = event.data.as_u64().unwrap_or_default();
                assert!(n != 1, "handler panic for event {n}");
                sender.send(("panicking", n))?;
                Ok(())
            }
        });
        let healthy = sender.clone();
        events.on("job.*", move |event| {
            let sender = healthy.clone();
            async move {
                sender.send(("healthy", event.data.as_u64().unwrap_or_default()))?;
                Ok(())
            }
        });
        drop(sender);

        for n in 1..=3 {
            events.emit("job.tick", json!(n)).await;
        }

        let mut seen = Vec::new();
        while seen.len() < 8 {
            seen.push(receiver.recv().await.expect("handler output"));
        }
        let by = |handler: &str| -> Vec<u64> {
            seen.iter()
                .filter(|(name, _)| *name == handler)
                .map(|(_, n)| *n)
                .collect()
        };
        assert_eq!(by("erring"), vec![1, 2, 3]);
        assert_eq!(by("panicking"), vec![2, 3]);
        assert_eq!(by("healthy"), vec![1, 2, 3]);
    })
    .await;
}

#[tokio::test]
async fn history_is_bounded() {
    within(async {
        let events = bus(5, 16);
        for n in 0..12 {
            events.emit(format!("e{n}"), json!(n)).await;
        }

        let names: Vec<String> = events
            .history()
            .iter()
            .map(|event| event.name.clone())
            .collect();
        assert_eq!(names, ["e7", "e8", "e9", "e10", "e11"]);

        let none = bus(0, 16);
        none.emit("e", json!(null)).await;
        assert!(none.history().is_empty());
    })
    .await;
}

#[tokio::test]
async fn subscription_receives_matching_events() {
    within(async {
        let events = bus(10, 16);
        let mut subscription = events.subscribe("job.*.completed");
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64;

        events
            .emit("job.resize.completed", json!({ "jobId": "1" }))
            .await;
        events
            .emit("job.resize.failed", json!({ "jobId": "2" }))
            .await;
        events
            .emit("job.thumb.completed", json!({ "jobId": "3" }))
            .await;

        let first = subscription.recv().await.expect("first event");
        assert_eq!(first.name, "job.resize.completed");
        assert_eq!(first.data, json!({ "jobId": "1" }));
        assert!(first.timestamp_ms >= before, "timestamp is taken at emit");
        let second = subscription.recv().await.expect("second event");
        assert_eq!(second.name, "job.thumb.completed");
        assert!(subscription.try_recv().is_none());
    })
    .await;
}

#[tokio::test]
async fn dropped_subscription_unsubscribes() {
    within(async {
        let events = bus(10, 1);
        let subscription = events.subscribe("*");
        assert_eq!(events.subscription_count(), 1);

        drop(subscription);
        assert_eq!(events.subscription_count(), 0);

        // With a queue of one event, these emits would wait forever if the
        // subscription were still there.
        for n in 0..5 {
            events.emit("tick", json!(n)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn subscription_ends_when_bus_is_dropped() {
    within(async {
        let events = bus(10, 4);
        let mut subscription = events.subscribe("*");
        events.emit("last", json!(null)).await;
        drop(events);

        assert_eq!(
            subscription.recv().await.expect("queued event").name,
            "last"
        );
        assert!(subscription.recv().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn batch_keeps_order_per_subscription() {
    within(async {
        let events = bus(10, 16);
        let mut only_a = events.subscribe("a.*");
        let mut all = events.subscribe("*");
        let (sender, receiver) = mpsc::unbounded_channel();
        events.once("*", move |event| async move {
            sender.send(event.data.clone())?;
            Ok(())
        });

        let mut batch = EventBatch::new();
        for (name, n) in [("a.x", 1), ("a.x", 2), ("b.x", 3), ("a.y", 4), ("a.y", 5)] {
            batch.push(name, json!(n), 7);
        }
        assert_eq!(batch.len(), 5);
        events.emit_batch(&mut batch).await;
        assert!(batch.is_empty(), "emitting takes the events out of the batch");

        let mut seen_a = Vec::new();
        while let Some(event) = only_a.try_recv() {
            seen_a.push(event.data.clone());
        }
        assert_eq!(seen_a, [json!(1), json!(2), json!(4), json!(5)]);
        let mut seen_all = Vec::new();
        while let Some(event) = all.try_recv() {
            assert_eq!(event.timestamp_ms, 7);
            seen_all.push(event.data.clone());
        }
        assert_eq!(seen_all, [json!(1), json!(2), json!(3), json!(4), json!(5)]);
        assert_eq!(drain(receiver).await, [json!(1)], "a once subscription gets only the first event of a batch");
        let history: Vec<_> = events.history().iter().map(|event| event.data.clone()).collect();
        assert_eq!(history, [json!(1), json!(2), json!(3), json!(4), json!(5)]);
    })
    .await;
}

#[tokio::test]
async fn oversized_batch_waits_and_loses_nothing() {
    within(async {
        let events = bus(4, 2);
        let mut subscription = events.subscribe("job.*");
        let mut batch = EventBatch::new();
        for n in 0..10 {
            batch.push("job.progress", json!(n), 0);
        }
        let mut emit = Box::pin(events.emit_batch(&mut batch));
        assert!((&mut emit).now_or_never().is_none(), "a batch larger than the queue must wait for the reader");

        let reader = async {
            let mut seen = Vec::new();
            while seen.len() < 10 {
                seen.push(subscription.recv().await.expect("event").data.clone());
            }
            seen
        };
        let ((), seen) = tokio::join!(emit, reader);
        assert_eq!(seen, (0..10).map(|n| json!(n)).collect::<Vec<_>>());
        let history: Vec<_> = events.history().iter().map(|event| event.data.clone()).collect();
        assert_eq!(history, [json!(6), json!(7), json!(8), json!(9)], "the history keeps the last events of the batch");
    })
    .await;
}

#[tokio::test]
async fn held_events_count_against_queue() {
    within(async {
        let events = bus(10, 4);
        let mut subscription = events.subscribe("*");
        let mut batch = EventBatch::new();
        for n in 0..4 {
            batch.push("tick", json!(n), 0);
        }
        events.emit_batch(&mut batch).await;

        // The reader takes the chunk of four and has used one of them: the
        // other three still fill the queue.
        assert_eq!(subscription.recv().await.expect("event").data, json!(0));
        let mut fifth = Box::pin(events.emit("tick", json!(4)));
        assert!((&mut fifth).now_or_never().is_none(), "the events the reader holds must count against the queue");

        for n in 1..4 {
            assert_eq!(subscription.try_recv().expect("held event").data, json!(n));
        }
        fifth.await;
        assert_eq!(subscription.recv().await.expect("event").data, json!(4));
    })
    .await;
}

#[tokio::test]
async fn waiting_emit_ends_on_drop() {
    within(async {
        let events = bus(10, 1);
        let subscription = events.subscribe("*");
        events.emit("first", json!(1)).await;
        let mut second = Box::pin(events.emit("second", json!(2)));
        assert!((&mut second).now_or_never().is_none(), "emit into a full queue must wait");

        drop(subscription);
        second.await;
        let names: Vec<_> = events.history().iter().map(|event| event.name.clone()).collect();
        assert_eq!(names, ["first", "second"]);
    })
    .await;
}

#[tokio::test]
async fn handler_emits_into_own_pattern() {
    within(async {
        let events = bus(10, 4);
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let bus_for_handler = events.clone();
        events.on("t.*", move |event| {
            let events = bus_for_handler.clone();
            let sender = sender.clone();
            async move {
                sender.send(event.name.clone())?;
                if event.name == "t.first" {
                    // The other events of the batch still fill the queue,
                    // but this event's room is free again.
                    events.emit("t.echo", json!(null)).await;
                }
                Ok(())
            }
        });

        let mut batch = EventBatch::new();
        for _ in 0..4 {
            batch.push("t.first", json!(null), 0);
        }
        events.emit_batch(&mut batch).await;

        let mut seen = Vec::new();
        while seen.len() < 8 {
            seen.push(receiver.recv().await.expect("handler output"));
        }
        assert_eq!(seen.iter().filter(|name| *name == "t.first").count(), 4);
        assert_eq!(seen.iter().filter(|name| *name == "t.echo").count(), 4);
    })
    .await;
}
