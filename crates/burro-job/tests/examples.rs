//! Runs the example jobs against a socket that the test listens on, the way
//! burro's shim runs them, and checks the lines they send.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const JOB_ID: &str = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";

/// Returns the path of a compiled example. `cargo test` builds the
/// examples before it runs the tests.
fn example(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug/examples").join(name);
    assert!(
        path.exists(),
        "missing example binary {}: build it with `cargo build -p burro-job --examples --features tokio`",
        path.display()
    );
    path
}

/// Either kind of listener the shim offers.
enum Listener {
    Unix(UnixListener, tempfile::TempDir),
    Tcp(TcpListener),
}

impl Listener {
    fn unix() -> Listener {
        let dir = tempfile::Builder::new().prefix("bj").tempdir_in("/tmp").unwrap();
        let listener = UnixListener::bind(dir.path().join("job.sock")).unwrap();
        listener.set_nonblocking(true).unwrap();
        Listener::Unix(listener, dir)
    }

    fn tcp() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Listener::Tcp(listener)
    }

    fn address(&self) -> String {
        match self {
            Listener::Unix(_, dir) => dir.path().join("job.sock").display().to_string(),
            Listener::Tcp(listener) => format!("tcp://{}", listener.local_addr().unwrap()),
        }
    }

    /// Accepts one connection, or panics when none comes in time.
    fn accept(&self, child: &mut Child) -> Connection {
        let deadline = Instant::now() + WAIT;
        loop {
            let accepted: std::io::Result<Box<dyn Stream>> = match self {
                Listener::Unix(listener, _) => listener.accept().map(|(stream, _)| Box::new(stream) as Box<dyn Stream>),
                Listener::Tcp(listener) => listener.accept().map(|(stream, _)| Box::new(stream) as Box<dyn Stream>),
            };
            match accepted {
                Ok(stream) => {
                    stream.prepare();
                    let writer = stream.clone_box();
                    return Connection {
                        reader: BufReader::new(stream),
                        writer,
                    };
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!("the job exited with {status} before connecting");
                    }
                    assert!(Instant::now() < deadline, "the job did not connect within {WAIT:?}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => panic!("accept failed: {error}"),
            }
        }
    }
}

trait Stream: Read + Write + Send {
    fn prepare(&self);
    fn clone_box(&self) -> Box<dyn Stream>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn prepare(&self) {
        self.set_nonblocking(false).unwrap();
        self.set_read_timeout(Some(WAIT)).unwrap();
    }
    fn clone_box(&self) -> Box<dyn Stream> {
        Box::new(self.try_clone().unwrap())
    }
}

impl Stream for std::net::TcpStream {
    fn prepare(&self) {
        self.set_nonblocking(false).unwrap();
        self.set_read_timeout(Some(WAIT)).unwrap();
    }
    fn clone_box(&self) -> Box<dyn Stream> {
        Box::new(self.try_clone().unwrap())
    }
}

struct Connection {
    reader: BufReader<Box<dyn Stream>>,
    writer: Box<dyn Stream>,
}

impl Connection {
    /// Reads the next line, checks the field order of its head, and returns
    /// it parsed, with `timestamp` checked and removed.
    fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).expect("reading a job line") == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "unterminated line {line:?}");
        let mut value: Value = serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line:?}"));
        let kind = value["type"].as_str().expect("type").to_string();
        let head = format!("{{\"type\":\"{kind}\",\"jobId\":\"{JOB_ID}\",\"timestamp\":");
        assert!(line.starts_with(&head), "line does not start with {head:?}: {line:?}");
        let timestamp = value.as_object_mut().unwrap().remove("timestamp").unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let timestamp = timestamp.as_u64().expect("integer timestamp");
        assert!(
            now_ms.abs_diff(timestamp) < 60_000,
            "timestamp {timestamp} far from {now_ms}"
        );
        Some(value)
    }

    /// Returns the next message that is not a heartbeat.
    fn next_message(&mut self) -> Option<Value> {
        loop {
            let value = self.next()?;
            if value["type"] != "heartbeat" {
                return Some(value);
            }
        }
    }

    fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
    }
}

/// A started example with its connection.
struct Run {
    child: Child,
    connection: Connection,
    _listener: Listener,
}

impl Run {
    fn start(name: &str, data: Value, listener: Listener) -> Run {
        let mut child = spawn_with_payload(
            name,
            &json!({"jobId": JOB_ID, "name": name, "data": data, "socketPath": listener.address()}).to_string(),
        );
        let connection = listener.accept(&mut child);
        Run {
            child,
            connection,
            _listener: listener,
        }
    }

    fn expect(&mut self, expected: Value) {
        let got = self.connection.next_message().expect("another message");
        assert_eq!(got, expected);
    }

    fn expect_end(mut self) -> ExitStatus {
        if let Some(extra) = self.connection.next_message() {
            panic!("unexpected message after the outcome: {extra}");
        }
        wait(&mut self.child)
    }
}

fn spawn_with_payload(name: &str, payload: &str) -> Child {
    let mut child = Command::new(example(name))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(payload.as_bytes()).unwrap();
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    child
}

fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            panic!("the job did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn message(kind: &str, fields: Value) -> Value {
    let mut value = json!({"type": kind, "jobId": JOB_ID});
    value
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    value
}

#[test]
fn progress_demo_reports_each_step_and_completes() {
    let mut run = Run::start("progress_demo", json!({"steps": 4, "delay": 0}), Listener::unix());
    run.expect(message("started", json!({"protocol": 2})));
    for step in 1..=4 {
        run.expect(message(
            "progress",
            json!({"percent": f64::from(step) * 25.0, "message": format!("step {step} of 4")}),
        ));
        run.expect(message(
            "log",
            json!({"level": "info", "message": format!("finished step {step}")}),
        ));
    }
    run.expect(message(
        "completed",
        json!({"result": {"steps": 4, "language": "rust"}}),
    ));
    assert!(run.expect_end().success());
}

#[test]
fn progress_demo_over_tcp() {
    let mut run = Run::start("progress_demo", json!({"steps": 1, "delay": 0}), Listener::tcp());
    run.expect(message("started", json!({"protocol": 2})));
    run.expect(message("progress", json!({"percent": 100.0, "message": "step 1 of 1"})));
    run.expect(message("log", json!({"level": "info", "message": "finished step 1"})));
    run.expect(message(
        "completed",
        json!({"result": {"steps": 1, "language": "rust"}}),
    ));
    assert!(run.expect_end().success());
}

#[test]
fn progress_demo_stops_early_on_cancel() {
    let mut run = Run::start("progress_demo", json!({"steps": 1000, "delay": 0.05}), Listener::unix());
    run.expect(message("started", json!({"protocol": 2})));
    run.expect(message(
        "progress",
        json!({"percent": 0.1, "message": "step 1 of 1000"}),
    ));
    run.connection.send(&format!(
        "{{\"type\":\"cancel\",\"jobId\":\"{JOB_ID}\",\"reason\":\"cancel requested\"}}\n"
    ));
    let done = loop {
        let got = run.connection.next_message().expect("a message");
        match got["type"].as_str().unwrap() {
            "progress" => {}
            "log" if got["level"] == "info" => {}
            "log" => {
                assert_eq!(got["level"], "warn", "{got}");
                break got["message"].as_str().unwrap().to_string();
            }
            other => panic!("unexpected {other}: {got}"),
        }
    };
    let steps: u64 = done
        .strip_prefix("cancelled after ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(steps < 1000, "{done}");
    run.expect(message(
        "completed",
        json!({"result": {"steps": steps, "language": "rust"}}),
    ));
    assert!(run.expect_end().success());
}

#[test]
fn cancel_aware_waits_for_the_cancel_message() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let mut run = Run::start(
        "cancel_aware",
        json!({"markerFile": marker.display().to_string()}),
        Listener::unix(),
    );
    run.expect(message("started", json!({"protocol": 2})));
    run.expect(message(
        "progress",
        json!({"percent": 1.0, "message": "waiting for cancel"}),
    ));
    // Not cancelled yet: the job keeps waiting.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "the job exited before the cancel"
    );
    assert!(!marker.exists());
    // Lines the job does not know, split across writes, come first.
    run.connection.send("{\"type\":\"later\"}\n\nnot json\n{\"type\":\"can");
    run.connection.send(&format!("cel\",\"jobId\":\"{JOB_ID}\"}}\n"));
    run.expect(message("completed", json!({"result": {"cancelled": true}})));
    assert!(run.expect_end().success());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "cancel seen");
}

#[test]
fn handler_error_sends_failed_and_exits_one() {
    let mut run = Run::start("cancel_aware", json!({}), Listener::unix());
    run.expect(message("started", json!({"protocol": 2})));
    let failed = run.connection.next_message().expect("failed");
    assert_eq!(failed["type"], "failed");
    assert_eq!(
        failed["error"],
        "the job data does not have the expected shape: missing field `markerFile`"
    );
    assert!(failed["stack"].as_str().unwrap().starts_with("Data("), "{failed}");
    assert_eq!(run.expect_end().code(), Some(1));
}

#[test]
fn missing_payload_exits_two() {
    let mut child = spawn_with_payload("progress_demo", "");
    assert_eq!(wait(&mut child).code(), Some(2));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("no job payload"), "{stderr}");
}

#[test]
fn invalid_address_exits_two() {
    let payload = json!({"jobId": JOB_ID, "name": "x", "data": {}, "socketPath": "tcp://nowhere"});
    let mut child = spawn_with_payload("progress_demo", &payload.to_string());
    assert_eq!(wait(&mut child).code(), Some(2));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("invalid socket address"), "{stderr}");
}

#[cfg(feature = "tokio")]
#[test]
fn async_demo_completes() {
    let mut run = Run::start("async_demo", json!({"count": 2, "delay": 0}), Listener::unix());
    run.expect(message("started", json!({"protocol": 2})));
    run.expect(message("progress", json!({"percent": 50.0})));
    run.expect(message("progress", json!({"percent": 100.0})));
    run.expect(message("log", json!({"level": "info", "message": "counting finished"})));
    run.expect(message("completed", json!({"result": {"counted": 2}})));
    assert!(run.expect_end().success());
}

#[cfg(feature = "tokio")]
#[test]
fn async_demo_stops_on_cancel() {
    let mut run = Run::start("async_demo", json!({"count": 1000, "delay": 0.05}), Listener::tcp());
    run.expect(message("started", json!({"protocol": 2})));
    run.expect(message("progress", json!({"percent": 0.1})));
    run.connection
        .send(&format!("{{\"type\":\"cancel\",\"jobId\":\"{JOB_ID}\"}}\n"));
    let counted = loop {
        let got = run.connection.next_message().expect("a message");
        if got["type"] == "completed" {
            break got["result"]["counted"].as_u64().unwrap();
        }
    };
    assert!(counted < 1000);
    assert!(run.expect_end().success());
}
