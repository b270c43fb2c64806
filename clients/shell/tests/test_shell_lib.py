"""Tests for donkeylabs-job.sh: real bash workers against real sockets and pipes.

Each test writes a bash script that sources the library, starts it with the
payload on standard input, and checks the exact JSON lines that arrive on a
Unix listener, a TCP listener or an inherited pipe (BURRO_MESSAGE_FD).
Tests that need socat, nc, jq or flock are skipped when the tool is missing.
Run with:

    python3 -m unittest discover -s clients/shell/tests -v
"""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "donkeylabs-job.sh"
BASH = shutil.which("bash")
JOB_ID = "job-42"
JOB_NAME = "shell-test"
TIMEOUT = 10.0

HAVE_SOCAT = shutil.which("socat") is not None
HAVE_NC = shutil.which("nc") is not None
HAVE_JQ = shutil.which("jq") is not None
HAVE_FLOCK = shutil.which("flock") is not None

# Every control character except NUL (which bash cannot hold), plus text that
# needs escaping or must pass through unchanged.
NASTY = (
    "".join(chr(code) for code in range(1, 32))
    + ' quote " backslash \\ slash / del \x7f latin ü snowman ☃ emoji 😀 \\u0041 end'
)


class LineCollector:
    """Parses lines from any number of byte streams into one queue."""

    def __init__(self):
        self.messages = queue.Queue()
        self.raw_lines = []

    def read_all(self, reader, label):
        """Record every line from ``reader`` until EOF, then close it."""
        try:
            for raw in reader:
                self.raw_lines.append(raw)
                self.messages.put((label, raw))
        except OSError:
            pass
        finally:
            reader.close()

    def follow(self, reader, label):
        """Record lines from ``reader`` on a background thread."""
        threading.Thread(target=self.read_all, args=(reader, label), daemon=True).start()

    def next(self, timeout=TIMEOUT, skip_heartbeats=True):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                label, raw = self.messages.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise AssertionError("no message within {} s".format(timeout)) from None
            if not raw.endswith(b"\n"):
                raise AssertionError("line without newline: {!r}".format(raw))
            message = json.loads(raw.decode("utf-8"))
            if skip_heartbeats and message.get("type") == "heartbeat":
                continue
            return message

    def drain(self, wait):
        """Return every message that arrives within ``wait`` seconds."""
        found = []
        while True:
            try:
                found.append(self.next(timeout=wait, skip_heartbeats=False))
            except AssertionError:
                return found


class Listener:
    """A Unix or TCP listener that feeds every accepted connection to a collector."""

    def __init__(self, collector, path=None):
        self.collector = collector
        if path is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
        self.sock.listen(64)
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            # The shell library opens one connection per message and closes
            # it, so reading each connection to EOF before accepting the next
            # keeps the messages in the order they were sent.
            connection.settimeout(TIMEOUT)
            reader = connection.makefile("rb")
            connection.close()
            self.collector.read_all(reader, "connection")

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ShellTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="dljsh-")
        self.dir = Path(self.tmp.name)
        self.socket_path = str(self.dir / "job_{}.sock".format(JOB_ID))
        self.collector = LineCollector()
        self.processes = []
        self.listeners = []

    def tearDown(self):
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.communicate()
        for listener in self.listeners:
            listener.close()
        self.tmp.cleanup()

    def listen_unix(self):
        listener = Listener(self.collector, self.socket_path)
        self.listeners.append(listener)
        return listener

    def listen_tcp(self):
        listener = Listener(self.collector)
        self.listeners.append(listener)
        return listener

    def tool_dir(self, *tools):
        """Return a directory holding only the named tools, for a bare PATH."""
        directory = self.dir / "bin-{}".format("-".join(tools) or "none")
        directory.mkdir(exist_ok=True)
        for tool in tools:
            target = sys.executable if tool == "python3" else shutil.which(tool)
            if target is None:
                self.skipTest("{} is not installed".format(tool))
            os.symlink(target, str(directory / tool))
        return str(directory)

    def run_script(
        self, body, data=None, args=(), env=None, payload=None, pass_fds=(), address=None, locale="C.UTF-8"
    ):
        script = self.dir / "job_{}.sh".format(len(self.processes))
        script.write_text(
            "set -euo pipefail\nsource {}\n{}".format(json.dumps(str(LIBRARY)), body), encoding="utf-8"
        )
        address = self.socket_path if address is None else address
        full_env = dict(os.environ)
        full_env.update(
            {
                "DONKEYLABS_JOB_ID": JOB_ID,
                "DONKEYLABS_JOB_NAME": JOB_NAME,
                "DONKEYLABS_SOCKET_PATH": "" if address.startswith("tcp://") else address,
                "DONKEYLABS_TCP_PORT": address.rpartition(":")[2] if address.startswith("tcp://") else "",
                "LANG": locale,
                "LC_ALL": locale,
                "TMPDIR": str(self.dir),
            }
        )
        full_env.pop("BURRO_MESSAGE_FD", None)
        full_env.update(env or {})
        process = subprocess.Popen(
            [BASH, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        self.processes.append(process)
        if payload is None:
            payload = (
                json.dumps(
                    {"jobId": JOB_ID, "name": JOB_NAME, "data": data, "socketPath": address},
                    ensure_ascii=False,
                    separators=(",", ":"),
                ).encode("utf-8")
                + b"\n"
            )
        try:
            process.stdin.write(payload)
            process.stdin.close()
        except BrokenPipeError:
            pass  # the script exited without reading its payload
        # communicate() must not touch the closed pipe.
        process.stdin = None
        return process

    def finish(self, process, timeout=TIMEOUT):
        """Wait for exit; return (status, stdout text, stderr text)."""
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "script still running, or a process it started still holds its output, after {} s".format(timeout)
            ) from None
        return process.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    def expect(self, kind):
        message = self.collector.next()
        self.assertEqual(message.get("type"), kind, "unexpected message {!r}".format(message))
        self.assertEqual(message["jobId"], JOB_ID)
        self.assertIsInstance(message["timestamp"], int)
        now = int(time.time() * 1000)
        self.assertTrue(now - 60000 < message["timestamp"] <= now, message["timestamp"])
        return {key: value for key, value in message.items() if key not in ("jobId", "timestamp")}

    @staticmethod
    def group_members(group):
        """Return (pid, command name) of each live process in a process group."""
        members = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/{}/stat".format(entry)) as handle:
                    stat = handle.read()
            except OSError:
                continue
            # The command name is in parentheses and may contain spaces, so
            # the other fields are counted from the closing parenthesis.
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            state, process_group = fields[0], int(fields[2])
            if process_group == group and state != "Z":
                members.append((int(entry), name))
        return members

    def wait_for_member(self, process, name):
        """Wait until a process called ``name`` runs in the script's group."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if any(member == name for _, member in self.group_members(process.pid)):
                return
            time.sleep(0.01)
        self.fail("no {} process in group {}".format(name, process.pid))

    def assert_group_gone(self, process):
        """Assert that no process of the script's group is left running."""
        # Zombies are ignored: init reaps orphans whenever it gets to them.
        deadline = time.monotonic() + 2.0
        while self.group_members(process.pid):
            if time.monotonic() > deadline:
                self.fail("still running in group {}: {}".format(process.pid, self.group_members(process.pid)))
            time.sleep(0.02)

    def assert_lines_well_formed(self):
        for raw in self.collector.raw_lines:
            self.assertEqual(raw.count(b"\n"), 1, raw)
            raw.decode("utf-8")


@unittest.skipUnless(HAVE_SOCAT, "socat is not installed")
class SocketMessageTests(ShellTestCase):
    def test_messages_have_exact_fields(self):
        self.listen_unix()
        process = self.run_script(
            """
            job_init 3600
            job_progress 0
            job_progress 25 "a quarter"
            job_progress 12.5 ""
            job_log info "plain log"
            job_log warning "alias"
            job_debug "dbg"
            job_info "several" "words"
            job_warn "careful"
            job_error "bad"
            job_complete '{"ok": true, "list": [1, 2]}'
            echo "not reached"
            """
        )
        expected = [
            {"type": "started"},
            {"type": "progress", "percent": 0},
            {"type": "progress", "percent": 25, "message": "a quarter"},
            {"type": "progress", "percent": 12.5, "message": ""},
            {"type": "log", "level": "info", "message": "plain log"},
            {"type": "log", "level": "warn", "message": "alias"},
            {"type": "log", "level": "debug", "message": "dbg"},
            {"type": "log", "level": "info", "message": "several words"},
            {"type": "log", "level": "warn", "message": "careful"},
            {"type": "log", "level": "error", "message": "bad"},
            {"type": "completed", "result": {"ok": True, "list": [1, 2]}},
        ]
        for want in expected:
            self.assertEqual(self.expect(want["type"]), want)
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        self.assertNotIn("not reached", stdout)
        self.assertEqual(self.collector.drain(0.2), [])

    def test_nasty_text_is_valid_json(self):
        for locale in ("C.UTF-8", "C"):
            with self.subTest(locale=locale):
                self.collector = LineCollector()
                self.socket_path = str(self.dir / "job_{}.sock".format(locale))
                self.listen_unix()
                process = self.run_script(
                    """
                    job_init 3600
                    text=$(job_data_get '.text'; printf x)
                    text=${text%$'\\nx'}
                    job_progress 10 "$text"
                    job_info "$1"
                    job_json_quote "$1" quoted
                    job_complete "{\\"text\\": $quoted}"
                    """,
                    data={"text": NASTY},
                    args=[NASTY],
                    locale=locale,
                )
                self.expect("started")
                self.assertEqual(self.expect("progress")["message"], NASTY)
                self.assertEqual(self.expect("log")["message"], NASTY)
                self.assertEqual(self.expect("completed")["result"], {"text": NASTY})
                status, _, stderr = self.finish(process)
                self.assertEqual(status, 0, stderr)
                self.assert_lines_well_formed()

    def test_invalid_utf8_is_replaced(self):
        cases = [
            (b"lone \xff byte", "lone \ufffd byte"),
            (b"cut \xc3 short", "cut \ufffd short"),
            (b"overlong \xc0\xaf", "overlong \ufffd\ufffd"),
            (b"surrogate \xed\xa0\x80!", "surrogate \ufffd\ufffd\ufffd!"),
            (b"truncated \xe2\x98x", "truncated \ufffd\ufffdx"),
            (b"too big \xf4\x90\x80\x80", "too big \ufffd\ufffd\ufffd\ufffd"),
            (b"valid \xe2\x98\x83 then \xfe", "valid \u2603 then \ufffd"),
        ]
        self.listen_unix()
        process = self.run_script(
            """
            job_init 3600
            for text in "$@"; do
                job_info "$text"
            done
            job_complete
            """,
            args=[raw for raw, _ in cases],
        )
        self.expect("started")
        for raw, want in cases:
            self.assertEqual(self.expect("log")["message"], want, raw)
        self.assertEqual(self.expect("completed"), {"type": "completed", "result": None})
        self.assertEqual(self.finish(process)[0], 0)
        self.assert_lines_well_formed()

    def test_percent_is_normalised(self):
        self.listen_unix()
        process = self.run_script(
            """
            job_init 3600
            for value in 007 +5 12.50 -3 1e2 0.25 000; do
                job_progress "$value"
            done
            job_progress abc "bad" || echo "abc status $?"
            job_progress 5% || echo "5% status $?"
            job_progress || echo "empty status $?"
            job_log loud "x" || echo "loud status $?"
            job_complete
            """
        )
        self.expect("started")
        for want in (7, 5, 12.5, -3, 100, 0.25, 0):
            self.assertEqual(self.expect("progress")["percent"], want)
        self.expect("completed")
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        self.assertEqual(
            stdout.splitlines(), ["abc status 2", "5% status 2", "empty status 2", "loud status 2"]
        )
        self.assertIn("invalid percent 'abc'", stderr)
        self.assertIn("invalid level 'loud'", stderr)

    def test_fail_sends_failed_and_exits_1(self):
        self.listen_unix()
        process = self.run_script(
            """
            job_init 3600
            trap 'job_info "after exit"' EXIT
            job_fail $'disk "full"\\n'
            """
        )
        self.expect("started")
        self.assertEqual(self.expect("failed"), {"type": "failed", "error": 'disk "full"\n'})
        status, _, stderr = self.finish(process)
        self.assertEqual(status, 1, stderr)
        self.assertEqual(self.collector.drain(0.2), [])

    def test_complete_accepts_multiline_json(self):
        self.listen_unix()
        process = self.run_script(
            """
            job_init 3600
            job_complete $'{\\n  "a": [1,\\r\\n 2],\\n\\t"b": "x"\\n}'
            """
        )
        self.expect("started")
        self.assertEqual(self.expect("completed")["result"], {"a": [1, 2], "b": "x"})
        self.assertEqual(self.finish(process)[0], 0)

    def test_tcp_transport(self):
        listener = self.listen_tcp()
        process = self.run_script(
            """
            job_init 3600
            job_progress 40 "over tcp"
            job_complete '"done"'
            """,
            address="tcp://127.0.0.1:{}".format(listener.port),
        )
        self.expect("started")
        self.assertEqual(self.expect("progress"), {"type": "progress", "percent": 40, "message": "over tcp"})
        self.assertEqual(self.expect("completed")["result"], "done")
        self.assertEqual(self.finish(process)[0], 0)

    def test_address_from_payload_when_environment_empty(self):
        self.listen_unix()
        process = self.run_script(
            """
            job_init 3600
            job_complete "$(job_json_quote "$DONKEYLABS_SOCKET_PATH")"
            """,
            env={"DONKEYLABS_SOCKET_PATH": "", "DONKEYLABS_JOB_ID": ""},
        )
        self.expect("started")
        self.assertEqual(self.expect("completed")["result"], self.socket_path)
        self.assertEqual(self.finish(process)[0], 0)

    def test_socket_path_with_special_characters(self):
        directory = self.dir / "odd, dir:name (1)"
        directory.mkdir()
        self.socket_path = str(directory / "job's.sock")
        self.listen_unix()
        process = self.run_script("job_init 3600\njob_complete 1\n")
        self.expect("started")
        self.assertEqual(self.expect("completed")["result"], 1)
        self.assertEqual(self.finish(process)[0], 0)

    def test_started_is_retried_until_server_listens(self):
        process = self.run_script(
            """
            job_init 3600
            job_complete '"late"'
            """,
            env={"DONKEYLABS_RETRY_SECONDS": "20"},
        )
        # The script finds no socket at first and retries with pauses.
        time.sleep(0.7)
        self.assertIsNone(process.poll())
        self.listen_unix()
        self.expect("started")
        self.assertEqual(self.expect("completed")["result"], "late")
        self.assertEqual(self.finish(process)[0], 0)

    def test_undeliverable_progress_is_dropped(self):
        process = self.run_script(
            """
            job_progress 10 "nobody listens" || echo "progress status $?"
            """,
            env={"DONKEYLABS_SOCKET_PATH": str(self.dir / "missing.sock")},
        )
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 0)
        self.assertEqual(stdout, "progress status 1\n")
        self.assertIn("could not deliver progress", stderr)


@unittest.skipUnless(HAVE_SOCAT, "socat is not installed")
class LifecycleTests(ShellTestCase):
    def test_heartbeats_arrive_and_stop_at_exit(self):
        self.listen_unix()
        os.mkfifo(str(self.dir / "go"))
        process = self.run_script(
            """
            job_init 0.05
            echo "heartbeat pid $_JOB_HEARTBEAT_PID"
            read -r -t 10 _ <"$GO_FIFO" || true
            job_complete
            """,
            env={"GO_FIFO": str(self.dir / "go")},
        )
        self.expect("started")
        beats = []
        while len(beats) < 3:
            message = self.collector.next(skip_heartbeats=False)
            self.assertEqual(set(message), {"type", "jobId", "timestamp"})
            self.assertEqual(message["type"], "heartbeat")
            beats.append(message["timestamp"])
        self.assertEqual(beats, sorted(beats))
        with open(str(self.dir / "go"), "w") as fifo:
            fifo.write("go\n")
        while self.collector.next(skip_heartbeats=False)["type"] == "heartbeat":
            pass
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        heartbeat_pid = int(stdout.split("heartbeat pid ")[1].split()[0])
        self.assertFalse(os.path.exists("/proc/{}".format(heartbeat_pid)), "heartbeat subshell outlived the job")
        self.assertEqual([m for m in self.collector.drain(0.3) if m["type"] == "heartbeat"], [])

    def test_exit_is_prompt_and_leaves_no_process(self):
        self.listen_unix()
        process = self.run_script("job_init 3600\njob_complete\n")
        self.expect("started")
        self.expect("completed")
        began = time.monotonic()
        status, _, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        self.assertLess(time.monotonic() - began, 2.0)
        self.assert_group_gone(process)

    def test_previous_exit_trap_still_runs(self):
        self.listen_unix()
        process = self.run_script(
            """
            trap 'echo "previous trap ran"' EXIT
            job_init 3600
            job_complete
            """
        )
        self.expect("started")
        self.expect("completed")
        status, stdout, _ = self.finish(process)
        self.assertEqual(status, 0)
        self.assertEqual(stdout, "previous trap ran\n")

    def test_term_trap_from_header_runs_cleanup(self):
        self.listen_unix()
        process = self.run_script(
            """
            job_init 0.05
            trap 'job_info "cleanup ran"; exit 143' TERM
            sleep 1000 &
            job_progress 5 "working"
            wait $!
            """
        )
        self.expect("started")
        self.expect("progress")
        # A signal sent before the child execs sleep may be lost, leaving
        # sleep running.
        self.wait_for_member(process, "sleep")
        os.killpg(process.pid, signal.SIGTERM)
        self.assertEqual(self.expect("log"), {"type": "log", "level": "info", "message": "cleanup ran"})
        status, _, _ = self.finish(process)
        self.assertEqual(status, 143)
        self.assert_group_gone(process)

    def test_term_without_trap_runs_exit_traps(self):
        self.listen_unix()
        process = self.run_script(
            """
            trap 'echo "previous trap ran"' EXIT
            job_init 0.05
            echo "heartbeat pid $_JOB_HEARTBEAT_PID"
            job_progress 5 "working"
            sleep 1000
            """
        )
        self.expect("started")
        self.expect("progress")
        # A signal sent before the child execs sleep may be lost, leaving
        # sleep running.
        self.wait_for_member(process, "sleep")
        os.killpg(process.pid, signal.SIGTERM)
        status, stdout, _ = self.finish(process)
        self.assertEqual(status, -signal.SIGTERM)
        self.assertTrue(stdout.endswith("previous trap ran\n"), stdout)
        self.assert_group_gone(process)

    def test_missing_payload_exits_1(self):
        process = self.run_script("job_init\n", payload=b"")
        status, _, stderr = self.finish(process)
        self.assertEqual(status, 1)
        self.assertIn("no job payload on standard input", stderr)

    def test_invalid_interval_exits_1(self):
        process = self.run_script("job_init 0\n")
        status, _, stderr = self.finish(process)
        self.assertEqual(status, 1)
        self.assertIn("invalid heartbeat interval '0'", stderr)


class PayloadTests(ShellTestCase):
    def data_of(self, payload, env=None):
        process = self.run_script(
            """
            _job_select_transport() { :; }
            _job_send() { :; }
            _job_start_heartbeat() { :; }
            job_init
            printf '%s|%s|%s|%s' "$DONKEYLABS_JOB_ID" "$DONKEYLABS_JOB_NAME" "$DONKEYLABS_SOCKET_PATH" "$DONKEYLABS_JOB_DATA"
            """,
            payload=payload,
            env=env,
        )
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        return stdout.split("|", 3)

    def test_data_bytes_are_kept_exactly(self):
        data = '{"n":1.50,"big":123456789012345678901234,"s":"a,\\"socketPath\\":\\"x","socketPath":"inner"}'
        payload = '{"jobId":"j1","name":"n1","data":' + data + ',"socketPath":"/tmp/s.sock"}\n'
        environment = {"DONKEYLABS_JOB_ID": "", "DONKEYLABS_JOB_NAME": "", "DONKEYLABS_SOCKET_PATH": ""}
        self.assertEqual(self.data_of(payload.encode(), environment), ["j1", "n1", "/tmp/s.sock", data])

    def test_other_field_order_uses_a_json_tool(self):
        payload = b'{ "socketPath": "/x", "data": {"k": [1, 2]}, "name": "n", "jobId": "j" }\n'
        tools = "jq" if HAVE_JQ else "python3"
        environment = {"PATH": self.tool_dir(tools)}
        job_id, _, _, data = self.data_of(payload, environment)
        self.assertEqual(job_id, JOB_ID)
        self.assertEqual(json.loads(data), {"k": [1, 2]})

    def test_python_fallback_reads_other_field_order(self):
        payload = b'{"data": "caf\xc3\xa9", "jobId": "j", "name": "n", "socketPath": "/x"}\n'
        _, _, _, data = self.data_of(payload, {"PATH": self.tool_dir("python3")})
        self.assertEqual(json.loads(data), "café")

    def test_no_json_tool_for_other_order_exits_1(self):
        process = self.run_script("job_init\n", payload=b'{"data": 1, "jobId": "j"}\n', env={"PATH": self.tool_dir()})
        status, _, stderr = self.finish(process)
        self.assertEqual(status, 1)
        self.assertIn("install jq (or python3)", stderr)


class DataGetTests(ShellTestCase):
    DATA = {
        "steps": 3,
        "name": "ünï \"q\"",
        "flag": False,
        "nested": {"list": [10, 20, 30], "k y": {"z": None}},
        "obj": {"a": 1, "b": [True, None]},
        "multi": "line one\nline two",
    }
    CASES = [
        (".steps // 5", "3"),
        (".missing // 5", "5"),
        (".missing // \"fallback text\"", "fallback text"),
        (".flag // 7", "7"),
        (".missing // .flag // 9", "9"),
        (".name", "ünï \"q\""),
        (".nested.list[1]", "20"),
        (".nested.list[-1]", "30"),
        (".nested.list[7]", "null"),
        ('.nested."k y".z', "null"),
        ('.nested["k y"]', '{"z":null}'),
        (".obj", '{"a":1,"b":[true,null]}'),
        (".missing.deeper", "null"),
        (".multi", "line one\nline two"),
    ]

    def query_all(self, env=None):
        process = self.run_script(
            """
            _job_select_transport() { :; }
            _job_send() { :; }
            _job_start_heartbeat() { :; }
            job_init
            for filter in "$@"; do
                job_data_get "$filter"
                printf '\\0'
            done
            """,
            data=self.DATA,
            args=[query for query, _ in self.CASES],
            env=env,
        )
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        return [chunk[:-1] if chunk.endswith("\n") else chunk for chunk in stdout.split("\0")[:-1]]

    @unittest.skipUnless(HAVE_JQ, "jq is not installed")
    def test_with_jq(self):
        results = self.query_all({"PATH": self.tool_dir("jq")})
        for (query, want), got in zip(self.CASES, results):
            self.assertEqual(got, want, query)

    def test_with_python_fallback(self):
        results = self.query_all({"PATH": self.tool_dir("python3")})
        for (query, want), got in zip(self.CASES, results):
            self.assertEqual(got, want, query)

    def test_python_fallback_rejects_other_syntax(self):
        process = self.run_script(
            """
            DONKEYLABS_JOB_DATA='{"a":[1,2]}'
            for filter in '.a | length' '.a[]' '..' '.a..b' 'keys'; do
                job_data_get "$filter" || echo "status $?"
            done
            job_data_get '.a[0]'
            """,
            env={"PATH": self.tool_dir("python3")},
        )
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        self.assertEqual(stdout.splitlines(), ["status 3"] * 5 + ["1"])
        self.assertIn("install jq for the rest", stderr)

    def test_without_jq_or_python_names_them(self):
        process = self.run_script(
            "DONKEYLABS_JOB_DATA='{}'\njob_data_get '.a' || echo \"status $?\"\n",
            env={"PATH": self.tool_dir()},
        )
        status, stdout, stderr = self.finish(process)
        self.assertEqual(stdout, "status 127\n")
        self.assertIn("install jq (or python3)", stderr)


class TransportTests(ShellTestCase):
    def test_no_transport_names_what_to_install(self):
        process = self.run_script("job_init\necho unreachable\n", env={"PATH": self.tool_dir()})
        status, stdout, stderr = self.finish(process)
        self.assertEqual(status, 1)
        self.assertEqual(stdout, "")
        self.assertIn("install socat (or netcat-openbsd", stderr)

    @unittest.skipUnless(HAVE_NC, "nc is not installed")
    def test_nc_transport(self):
        help_text = subprocess.run(["nc", "-h"], capture_output=True).stderr
        if b"-N" not in help_text:
            self.skipTest("this nc has no -N option")
        self.listen_unix()
        process = self.run_script(
            "job_init 3600\njob_info 'through nc'\njob_complete '[1]'\n",
            env={"PATH": self.tool_dir("nc")},
        )
        self.expect("started")
        self.assertEqual(self.expect("log")["message"], "through nc")
        self.assertEqual(self.expect("completed")["result"], [1])
        self.assertEqual(self.finish(process)[0], 0)

    @unittest.skipUnless(HAVE_FLOCK, "flock is not installed")
    def test_message_fd_serialises_writers(self):
        read_fd, write_fd = os.pipe()
        self.collector.follow(os.fdopen(read_fd, "rb"), "pipe")
        count = 40
        # Lines far larger than PIPE_BUF (4096 bytes), written while the
        # heartbeat subshell writes every 10 ms.
        process = self.run_script(
            """
            job_init 0.01
            printf -v padding '%*s' 100000 ''
            for ((i = 0; i < COUNT; i++)); do
                job_progress "$i" "$i$padding"
            done
            job_complete "{\\"lock\\": $(job_json_quote "$DONKEYLABS_JOB_LOCK")}"
            """,
            env={
                "BURRO_MESSAGE_FD": str(write_fd),
                "COUNT": str(count),
                "PATH": self.tool_dir("flock", "cat", "mktemp", "rm", "python3"),
            },
            address=str(self.dir / "unused.sock"),
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        self.expect("started")
        for i in range(count):
            message = self.expect("progress")
            self.assertEqual(message["percent"], i)
            self.assertEqual(message["message"], str(i) + " " * 100000)
        lock_file = self.expect("completed")["result"]["lock"]
        status, _, stderr = self.finish(process)
        self.assertEqual(status, 0, stderr)
        self.assertTrue(lock_file.startswith(str(self.dir)))
        self.assertFalse(os.path.exists(lock_file), "lock file left behind")
        self.assert_lines_well_formed()

    def test_message_fd_that_is_closed_falls_back(self):
        process = self.run_script(
            "job_init\n",
            env={"BURRO_MESSAGE_FD": "97", "PATH": self.tool_dir()},
        )
        status, _, stderr = self.finish(process)
        self.assertEqual(status, 1)
        self.assertIn("BURRO_MESSAGE_FD=97 is not an open file descriptor", stderr)
        self.assertIn("install socat", stderr)


if __name__ == "__main__":
    unittest.main()
