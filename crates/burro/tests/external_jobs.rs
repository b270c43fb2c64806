//! End-to-end tests of external jobs: real shims, real worker processes,
//! real sockets and a real SQLite file.

mod common;

use burro::config::Transport;
use burro::jobs::EnqueueOptions;
use burro::store::JobStatus;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn once() -> EnqueueOptions {
    EnqueueOptions {
        max_attempts: Some(1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_job_completes_with_result() {
    let server = start(vec![("py", external("python3", "complete.py"))]).await;
    let id = server.core().jobs.enqueue("py", json!({"x": 1}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"echo": {"x": 1}})));
    assert_eq!(job.attempts, 1);
    assert!(job.external);
    assert_eq!(job.progress.percent, Some(50.0));
    assert!(job.completed_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_job_completes_with_result() {
    let server = start(vec![("sh", external("bash", "complete.sh"))]).await;
    let id = server.core().jobs.enqueue("sh", json!({"steps": 4}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"ok": true, "steps": 4})));
    assert_eq!(job.progress.percent, Some(50.0));
    assert_eq!(job.progress.message.as_deref(), Some("half"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_job_completes_without_message_pipe() {
    let server = start_with(
        |config| {
            config.external.message_fd = false;
            config.external_jobs.insert("sh".into(), external("bash", "complete.sh"));
        },
        |_| {},
    )
    .await;
    let id = server.core().jobs.enqueue("sh", json!({"steps": 2}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"ok": true, "steps": 2})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_completes() {
    let server = start_with(
        |config| {
            config.external.transport = Transport::Tcp;
            config.external.tcp_port_range = [41000, 41999];
            config.external_jobs.insert("py".into(), external("python3", "complete.py"));
        },
        |_| {},
    )
    .await;
    let id = server.core().jobs.enqueue("py", json!("tcp"), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"echo": "tcp"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_three_fails() {
    let server = start(vec![("exit", external("bash", "exit_code.sh"))]).await;
    let id = server.core().jobs.enqueue("exit", json!({"code": 3}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("process exited with code 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_zero_without_message_completes_without_result() {
    let server = start(vec![("exit", external("bash", "exit_code.sh"))]).await;
    let id = server.core().jobs.enqueue("exit", json!({"code": 0}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_by_signal_fails() {
    let server = start(vec![("sig", external("bash", "self_signal.sh"))]).await;
    let id = server.core().jobs.enqueue("sig", json!({}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("process killed by signal SIGKILL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_not_found_fails_with_reason() {
    let server = start(vec![(
        "missing",
        burro::config::ExternalJobConfig {
            command: "/nonexistent/worker".into(),
            ..Default::default()
        },
    )])
    .await;
    let id = server.core().jobs.enqueue("missing", json!({}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap();
    assert!(error.contains("/nonexistent/worker"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_job_goes_stale_then_is_killed() {
    let mut hang = external("bash", "hang.sh");
    hang.heartbeat_timeout = Some(Duration::from_millis(600));
    let server = start(vec![("hang", hang)]).await;
    let mut stale = server.core().events.subscribe("job.stale");
    let id = server.core().jobs.enqueue("hang", json!({}), once()).await.unwrap();

    let event = within(WAIT, stale.recv()).await.expect("job.stale emitted");
    assert_eq!(event.data["jobId"], json!(id));
    assert_eq!(event.data["name"], json!("hang"));
    assert!(event.data["timeSinceHeartbeat"].as_u64().unwrap() >= 600);

    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("heartbeat timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_long_job() {
    let mut long = external("python3", "sleep_long.py");
    long.timeout = Some(Duration::from_millis(800));
    let server = start(vec![("long", long)]).await;
    let id = server.core().jobs.enqueue("long", json!({"seconds": 60}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("timed out after 800 ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_timeout_overrides_job_timeout() {
    let server = start(vec![("long", external("python3", "sleep_long.py"))]).await;
    let options = EnqueueOptions {
        max_attempts: Some(1),
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let id = server.core().jobs.enqueue("long", json!({"seconds": 60}), options).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.error.as_deref(), Some("timed out after 500 ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_process_group() {
    let server = start(vec![("gc", external("bash", "grandchild.sh"))]).await;
    let pid_file = server.dir.path().join("grandchild.pid");
    let id = server
        .core()
        .jobs
        .enqueue("gc", json!({"pidFile": pid_file.display().to_string()}), once())
        .await
        .unwrap();
    let grandchild: i32 = within(WAIT, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(process_exists(grandchild));
    let running = server.wait_for(&id, "pid recorded", |job| job.pid.is_some()).await;
    let leader = running.pid.unwrap() as i32;

    match server.core().jobs.cancel(&id).await.unwrap() {
        burro::jobs::CancelResult::Requested(job) => assert_eq!(job.status, JobStatus::Running),
        other => panic!("expected a cancel request, got {other:?}"),
    }
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Cancelled);

    // The shim reaps every process it started, so neither the leader nor the
    // grandchild remains, not even as a zombie.
    within(WAIT, async {
        while process_exists(grandchild) || process_exists(leader) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_leaving_process_group_is_terminated() {
    let server = start(vec![("daemon", external("bash", "fork_daemon.sh"))]).await;
    let pid_file = server.dir.path().join("daemon.pid");
    let id = server
        .core()
        .jobs
        .enqueue("daemon", json!({"pidFile": pid_file.display().to_string()}), once())
        .await
        .unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    let daemon: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    within(WAIT, async {
        while process_exists(daemon) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_job_retries_until_max_attempts() {
    let server = start(vec![("fail", external("python3", "fail_always.py"))]).await;
    let mut events = server.core().events.subscribe("job.*");
    let options = EnqueueOptions {
        max_attempts: Some(3),
        ..Default::default()
    };
    let id = server.core().jobs.enqueue("fail", json!({}), options).await.unwrap();

    let mut retrying = Vec::new();
    let mut failed = Vec::new();
    within(WAIT, async {
        while failed.is_empty() {
            let event = events.recv().await.unwrap();
            match event.name.as_str() {
                "job.retrying" => retrying.push(event.data.clone()),
                "job.failed" => failed.push(event.data.clone()),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(retrying.len(), 2, "{retrying:?}");
    assert_eq!(retrying[0]["attempt"], json!(1));
    assert_eq!(retrying[1]["attempt"], json!(2));
    assert!(retrying[0]["error"].as_str().unwrap().contains("boom attempt"));
    assert!(retrying[0]["runAt"].is_string());
    assert_eq!(failed[0]["jobId"], json!(id));
    assert!(failed[0]["stack"].as_str().unwrap().contains("Traceback"));

    let job = server.core().jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempts, 3);
    assert!(job.error.unwrap().contains("boom attempt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_job_id_is_rejected() {
    let server = start(vec![("foreign", external("python3", "foreign_id.py"))]).await;
    let mut progress = server.core().events.subscribe("job.external.progress");
    let id = server.core().jobs.enqueue("foreign", json!({}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    while let Some(event) = progress.try_recv() {
        assert_ne!(event.data["jobId"], json!("someone-else"));
        assert_eq!(event.data["jobId"], json!(id));
        assert_ne!(event.data["percent"], json!(66), "the foreign line must not count for this job");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_line_closes_only_its_connection() {
    let server = start_with(
        |config| {
            config.external.max_message_bytes = 1024;
            config.external_jobs.insert("big".into(), external("python3", "oversize.py"));
        },
        |_| {},
    )
    .await;
    let id = server.core().jobs.enqueue("big", json!({"bytes": 4096}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_text_round_trips() {
    let server = start(vec![("echo", external("bash", "echo_text.sh"))]).await;
    let mut events = server.core().events.subscribe("job.external.*");
    let text = "quote \" backslash \\ newline \n tab \t bell \u{7} unicode é ✓ 日本 $HOME `cmd` 'single'";
    let id = server.core().jobs.enqueue("echo", json!({"text": text}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"text": text})));

    let mut progress_message = None;
    let mut log_message = None;
    while let Some(event) = events.try_recv() {
        match event.name.as_str() {
            "job.external.progress" => progress_message = event.data["message"].as_str().map(str::to_string),
            "job.external.log" if event.data["stream"] == json!("log") => log_message = event.data["message"].as_str().map(str::to_string),
            _ => {}
        }
    }
    assert_eq!(progress_message.as_deref(), Some(text));
    assert_eq!(log_message.as_deref(), Some(text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_sees_one_completion_after_all_progress() {
    let server = start(vec![("flood", external("python3", "flood_progress.py"))]).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Value)>::new()));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = std::sync::Mutex::new(Some(done_tx));
    {
        let seen = seen.clone();
        server.core().events.on("job.*", move |event| {
            let seen = seen.clone();
            let finished = event.name == "job.completed" || event.name == "job.failed";
            let done = if finished { done_tx.lock().unwrap().take() } else { None };
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                seen.lock().unwrap().push((event.name.clone(), event.data.clone()));
                if let Some(done) = done {
                    let _ = done.send(());
                }
                Ok(())
            }
        });
    }
    let count = 20_000;
    let id = server.core().jobs.enqueue("flood", json!({"count": count}), once()).await.unwrap();
    within(Duration::from_secs(240), done_rx).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);

    let seen = seen.lock().unwrap();
    let completions: Vec<usize> = seen.iter().enumerate().filter(|(_, (name, _))| name == "job.completed").map(|(i, _)| i).collect();
    assert_eq!(completions.len(), 1, "exactly one job.completed");
    let completed = &seen[completions[0]].1;
    assert_eq!(completed["result"], json!({"sent": count}));
    let progress: Vec<usize> = seen.iter().enumerate().filter(|(_, (name, _))| name == "job.external.progress").map(|(i, _)| i).collect();
    assert_eq!(progress.len(), count, "every progress message delivered");
    assert!(completions[0] > *progress.last().unwrap(), "completion comes after the last progress");
    assert_eq!(seen[*progress.last().unwrap()].1["message"], json!((count - 1).to_string()));
}

/// Returns the names of the spool files in the server's exit directory.
fn spool_files(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.dir.path().join("exits"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".spool"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_waits_for_busy_server() {
    let server = start(vec![("flood", external("python3", "flood_progress.py"))]).await;
    // A subscription that is not read: once its queue is full, the server
    // stops taking frames from the shim, and the shim's memory fills up.
    let mut progress = server.core().events.subscribe("job.external.progress");
    // About 3 MB of frames, far more than the shim keeps in memory.
    let count = 30_000;
    let id = server.core().jobs.enqueue("flood", json!({"count": count}), once()).await.unwrap();
    let stalled_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < stalled_until {
        let spools = spool_files(&server);
        assert!(spools.is_empty(), "the shim spooled while the server was connected: {spools:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = server.core().jobs.get(&id).await.unwrap().expect("job exists");
    assert_eq!(job.status, JobStatus::Running, "the job should wait for the server, not finish");

    let mut received = 0;
    while received < count {
        let event = within(WAIT, progress.recv()).await.expect("the bus is open");
        if event.data["jobId"] == id.as_str() {
            assert_eq!(event.data["message"], json!(received.to_string()), "progress arrives in order");
            received += 1;
        }
    }
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert!(spool_files(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_flood_is_acknowledged() {
    // Heartbeats are acknowledged late, but a flood of them must still be
    // acknowledged before the shim's 512 KiB of unacknowledged frames fill
    // up. A full shim stops reading from the job, and the job would hang.
    let server = start(vec![("flood", external("python3", "flood_progress.py"))]).await;
    // About 20,000 heartbeats of some 100 bytes each, after one progress message.
    let id = server.core().jobs.enqueue("flood", json!({"count": 1, "heartbeats": 20_000}), once()).await.unwrap();
    let job = within(Duration::from_secs(60), server.wait_finished(&id)).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"sent": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_messages_survive_busy_server_at_exit() {
    let server = start(vec![("flood", external("python3", "flood_progress.py"))]).await;
    // The server takes no frames once the queue of this unread subscription
    // is full (1,024 events). The shim then keeps 512 KiB of frames and
    // queues 256 more items, so the job's last output lines wait in the
    // pipe when the job exits. The shim must read them after the exit,
    // however long the server stays busy.
    let mut progress = server.core().events.subscribe("job.external.progress");
    let (count, lines) = (1_600, 3_000);
    let data = json!({"count": count, "pad": 900, "stdout": lines});
    let id = server.core().jobs.enqueue("flood", data, once()).await.unwrap();
    wait_exited(server.wait_pid(&id).await).await;
    // The shim reads what is left for at most a second after the exit.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut received = 0;
    while received < count {
        let event = within(WAIT, progress.recv()).await.expect("the bus is open");
        if event.data["jobId"] == id.as_str() {
            let message = event.data["message"].as_str().unwrap_or_default();
            assert_eq!(message.split(' ').next(), Some(received.to_string().as_str()), "progress arrives in order");
            received += 1;
        }
    }
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"sent": count})));
    let output: Vec<String> = server.core().jobs.logs().read(&id, None).into_iter().filter(|entry| entry.stream == "stdout").map(|entry| entry.message).collect();
    let expected: Vec<String> = (0..lines).map(|i| format!("out {i}")).collect();
    assert_eq!(output.len(), expected.len(), "every stdout line reaches the job log");
    assert!(output == expected, "stdout lines arrive whole and in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_causes_no_false_stale() {
    let mut flood = external("python3", "flood_progress.py");
    flood.heartbeat_timeout = Some(Duration::from_secs(1));
    let server = start(vec![("flood", flood)]).await;
    let mut stale = server.core().events.subscribe("job.stale");
    // A handler that takes 20 ms per event: once its queue of 1,024 is full,
    // the server processes one message every 20 ms. Each processed message
    // is a sign of life, so the job must never look silent.
    server.core().events.on("job.external.progress", |_| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    });
    let count = 1_200;
    let id = server.core().jobs.enqueue("flood", json!({"count": count}), once()).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"sent": count})));
    let event = tokio::time::timeout(Duration::from_millis(100), stale.recv()).await;
    assert!(event.is_err(), "false job.stale: {:?}", event.ok().flatten().map(|event| event.data.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_keeps_the_shim_waiting() {
    // A shim whose job has exited waits `shim_linger` after the last
    // acknowledgement, then leaves an exit record and exits. A handler that
    // takes 20 ms per event delays a batch of 256 events by about 5 s. So
    // the server must acknowledge while the batch waits, or the job is lost.
    let server = start_with(
        |config| {
            config.external.shim_linger = Duration::from_secs(2);
            config.external_jobs.insert("flood".into(), external("python3", "flood_progress.py"));
        },
        |_| {},
    )
    .await;

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let handled = Arc::new(AtomicUsize::new(0));
    // Set once the job has ended, so the events still queued drain quickly.
    let fast = Arc::new(AtomicBool::new(false));
    let (counter, fast_handler) = (handled.clone(), fast.clone());
    server.core().events.on("job.external.progress", move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        let slow = !fast_handler.load(Ordering::Relaxed);
        async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    });

    let count = 2_000;
    let id = server.core().jobs.enqueue("flood", json!({"count": count, "pad": 300}), once()).await.unwrap();
    let job = within(Duration::from_secs(120), server.wait_finished(&id)).await;
    fast.store(true, Ordering::Relaxed);
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"sent": count})));

    within(Duration::from_secs(30), async {
        while handled.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(handled.load(Ordering::Relaxed), count, "every progress event reaches the handler once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_after_completed_does_not_stall() {
    let server = start(vec![("chatty", external("python3", "output_after_complete.py"))]).await;
    // About 1 MB of output after `completed`. The server acknowledges no
    // frame after the terminal message until the job exits, so the shim
    // takes at most 512 KiB of it. The job is stopped `kill_grace` after
    // its terminal message, and then the attempt must end at once.
    let id = server.core().jobs.enqueue("chatty", json!({"lines": 10_000}), once()).await.unwrap();
    // Well below the shim's linger of 30 s, after which a stalled shim
    // would give up and leave an exit record.
    let job = within(Duration::from_secs(10), server.wait_finished(&id)).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert_eq!(job.result, Some(json!({"ok": true})));
    let output = server.core().jobs.logs().read(&id, None).into_iter().filter(|entry| entry.stream == "stdout").count();
    assert!(output > 0, "the output read before the job stopped reaches the job log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_trivial_jobs_complete() {
    let server = start_with(
        |config| {
            config.jobs.concurrency = 20;
            config.external_jobs.insert("trivial".into(), external("python3", "trivial.py"));
        },
        |_| {},
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(server.core().jobs.enqueue("trivial", json!({"i": i}), once()).await.unwrap());
    }
    for id in &ids {
        let job = server.wait_finished(id).await;
        assert_eq!(job.status, JobStatus::Completed, "job {id}: {:?}", job.error);
        assert_eq!(job.result, Some(json!({"ok": true})));
    }
    let page = server
        .core()
        .jobs
        .list(burro::store::ListQuery {
            status: Some(JobStatus::Completed),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_two_job_receives_cancel_message() {
    let server = start(vec![("aware", external("python3", "cancel_aware.py"))]).await;
    let marker = server.dir.path().join("cancel.marker");
    let id = server
        .core()
        .jobs
        .enqueue("aware", json!({"markerFile": marker.display().to_string()}), once())
        .await
        .unwrap();
    server.wait_for(&id, "progress reported", |job| job.progress.percent == Some(1.0)).await;
    server.core().jobs.cancel(&id).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "cancel seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ignoring_cancel_is_killed_after_grace() {
    let server = start_with(
        |config| {
            config.external.cancel_grace = Duration::from_millis(300);
            config.external_jobs.insert("stubborn".into(), external("python3", "sleep_long.py"));
        },
        |_| {},
    )
    .await;
    let id = server.core().jobs.enqueue("stubborn", json!({"seconds": 60}), once()).await.unwrap();
    let running = server.wait_for(&id, "started and heartbeating", |job| job.last_heartbeat.is_some()).await;
    let pid = running.pid.expect("pid recorded") as i32;
    server.core().jobs.cancel(&id).await.unwrap();
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.attempts, 1);
    within(WAIT, async {
        while process_exists(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A reader who gets a progress event and then reads the running job finds
/// that progress or newer, also when the server emits a read's events in
/// several batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_progress_not_older() {
    let server = start(vec![("flood", external("python3", "flood_progress.py"))]).await;
    let mut progress = server.core().events.subscribe("job.external.progress");
    let id = server.core().jobs.enqueue("flood", json!({"count": 30000, "pad": 100}), once()).await.unwrap();

    let mut checks = 0;
    let mut older = Vec::new();
    while let Ok(Some(mut event)) = tokio::time::timeout(Duration::from_secs(10), progress.recv()).await {
        while let Some(next) = progress.try_recv() {
            event = next;
        }
        let sent = event.data["percent"].as_f64().expect("percent");
        let job = server.core().jobs.get(&id).await.unwrap().expect("job");
        // The job's end replaces its live progress with the stored one, so
        // only reads of a running job below 99 % are compared.
        if job.status != JobStatus::Running || sent >= 99.0 {
            break;
        }
        checks += 1;
        let read = job.progress.percent.unwrap_or(-1.0);
        if read < sent {
            older.push((sent, read));
        }
    }
    let job = server.wait_finished(&id).await;
    assert_eq!(job.status, JobStatus::Completed, "error: {:?}", job.error);
    assert!(checks > 10, "only {checks} reads happened while the job ran");
    assert!(older.is_empty(), "{} of {checks} reads showed older progress than a delivered event, e.g. (event, read) {:?}", older.len(), &older[..older.len().min(5)]);
}
