"""Tests for donkeylabs_job: real worker processes against real listeners.

Each test starts a Unix (or TCP) listener, runs a worker script in a child
Python process with the payload on its standard input, and checks the exact
JSON lines that arrive. Run with:

    python3 -m unittest discover -s clients/python/tests -v
"""

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parents[1]
JOB_ID = "job-0123"
JOB_NAME = "resize-image"
TIMEOUT = 10.0


class Connection:
    """One accepted connection; every line read is parsed and recorded."""

    def __init__(self, server, sock, index):
        self.server = server
        self.sock = sock
        self.index = index
        self.lines = queue.Queue()
        self.eof = threading.Event()
        self.raw_lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        reader = self.sock.makefile("rb")
        try:
            for raw in reader:
                self.raw_lines.append(raw)
                self.server.record(self, raw)
        except OSError:
            pass
        finally:
            self.eof.set()

    def send_line(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def send_raw(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class FakeServer:
    """A listener standing in for burro's job socket."""

    def __init__(self, directory, transport="unix"):
        self.directory = directory
        self.transport = transport
        self.messages = queue.Queue()
        self.connections = queue.Queue()
        self.all_connections = []
        self._count = 0
        self._lock = threading.Lock()
        self.path = os.path.join(directory, "job_{}.sock".format(JOB_ID))
        self.listen()

    @property
    def address(self):
        if self.transport == "tcp":
            return "tcp://127.0.0.1:{}".format(self.port)
        return self.path

    def listen(self):
        if self.transport == "tcp":
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", getattr(self, "port", 0)))
            self.port = listener.getsockname()[1]
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.path)
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop_listening(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        if self.transport == "unix" and os.path.exists(self.path):
            os.unlink(self.path)

    def _accept(self, listener):
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                connection = Connection(self, sock, self._count)
                self._count += 1
                self.all_connections.append(connection)
            self.connections.put(connection)

    def record(self, connection, raw):
        self.messages.put((connection, raw))

    def next_connection(self, timeout=TIMEOUT):
        try:
            return self.connections.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no connection within {} s".format(timeout)) from None

    def next_message(self, timeout=TIMEOUT, skip_heartbeats=True):
        """Return (connection, decoded message) for the next line received."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                connection, raw = self.messages.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise AssertionError("no message within {} s".format(timeout)) from None
            if not raw.endswith(b"\n"):
                raise AssertionError("line without newline: {!r}".format(raw))
            message = json.loads(raw.decode("utf-8"))
            if skip_heartbeats and message.get("type") == "heartbeat":
                continue
            return connection, message

    def close(self):
        self.stop_listening()
        for connection in self.all_connections:
            connection.close()


def worker_source(body):
    header = "import os, sys, json, time\nsys.path.insert(0, {!r})\nfrom donkeylabs_job import run_job, DonkeylabsJob\n".format(
        str(CLIENT_DIR)
    )
    return header + textwrap.dedent(body)


class WorkerTestCase(unittest.TestCase):
    transport = "unix"

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="dlj-")
        self.server = FakeServer(self.tmp.name, self.transport)
        self.processes = []

    def tearDown(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
            process.stderr.close()
        self.server.close()
        self.tmp.cleanup()

    def start_worker(self, body, data=None, env=None, pass_fds=(), payload=None):
        script = os.path.join(self.tmp.name, "worker_{}.py".format(len(self.processes)))
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(worker_source(body))
        full_env = dict(os.environ)
        full_env.update(
            {
                "DONKEYLABS_JOB_ID": JOB_ID,
                "DONKEYLABS_JOB_NAME": JOB_NAME,
                "DONKEYLABS_SOCKET_PATH": self.server.path if self.transport == "unix" else "",
                "DONKEYLABS_TCP_PORT": str(self.server.port) if self.transport == "tcp" else "",
            }
        )
        full_env.update(env or {})
        process = subprocess.Popen(
            [sys.executable, script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            pass_fds=pass_fds,
        )
        self.processes.append(process)
        if payload is None:
            payload = json.dumps(
                {"jobId": JOB_ID, "name": JOB_NAME, "data": data, "socketPath": self.server.address},
                ensure_ascii=False,
            ).encode("utf-8") + b"\n"
        process.stdin.write(payload)
        process.stdin.close()
        return process

    def wait_exit(self, process, timeout=TIMEOUT):
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("worker still running after {} s".format(timeout)) from None

    def stderr_of(self, process):
        self.wait_exit(process)
        return process.stderr.read().decode("utf-8", "replace")

    def expect(self, kind, timeout=TIMEOUT):
        connection, message = self.server.next_message(timeout)
        self.assertEqual(message.get("type"), kind, "unexpected message {!r}".format(message))
        return connection, message

    def assert_envelope(self, message, started_ms):
        self.assertEqual(message["jobId"], JOB_ID)
        self.assertIsInstance(message["timestamp"], int)
        self.assertGreaterEqual(message["timestamp"], started_ms)
        self.assertLessEqual(message["timestamp"], int(time.time() * 1000))

    def assert_no_more_messages(self, wait=0.2):
        try:
            connection, message = self.server.next_message(timeout=wait, skip_heartbeats=False)
        except AssertionError:
            return
        self.fail("unexpected extra message {!r}".format(message))

    def strip(self, message):
        return {key: value for key, value in message.items() if key not in ("jobId", "timestamp")}

    def go_pipe(self):
        """Return (read_fd, write_fd) of a pipe the worker blocks on."""
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, write_fd)
        return read_fd, write_fd


class MessageTests(WorkerTestCase):
    def test_messages_have_exact_fields(self):
        started_ms = int(time.time() * 1000)
        process = self.start_worker(
            """
            def handler(job):
                job.progress(25, "quarter", step=1, name="a")
                job.progress(50)
                job.progress(62.5, "five eighths")
                job.info("hello", key="value")
                job.debug("dbg")
                job.warn("careful")
                job.error("bad")
                job.log("warning", "alias")
                return {"ok": True, "list": [1, 2]}

            run_job(handler, heartbeat_interval=3600)
            """
        )
        expected = [
            {"type": "started", "protocol": 2},
            {"type": "progress", "percent": 25, "message": "quarter", "data": {"step": 1, "name": "a"}},
            {"type": "progress", "percent": 50},
            {"type": "progress", "percent": 62.5, "message": "five eighths"},
            {"type": "log", "level": "info", "message": "hello", "data": {"key": "value"}},
            {"type": "log", "level": "debug", "message": "dbg"},
            {"type": "log", "level": "warn", "message": "careful"},
            {"type": "log", "level": "error", "message": "bad"},
            {"type": "log", "level": "warn", "message": "alias"},
            {"type": "completed", "result": {"ok": True, "list": [1, 2]}},
        ]
        connections = set()
        for want in expected:
            connection, message = self.server.next_message(skip_heartbeats=False)
            connections.add(connection.index)
            self.assert_envelope(message, started_ms)
            self.assertEqual(self.strip(message), want)
        self.assertEqual(self.wait_exit(process), 0)
        self.assertEqual(connections, {0}, "all messages should use one connection")
        self.assertTrue(self.server.all_connections[0].eof.wait(TIMEOUT), "worker did not close its connection")
        self.assert_no_more_messages()

    def test_payload_fields_are_exposed(self):
        data = {"text": "naïve ☃", "nested": {"list": [1, 2.5, None, True]}, "empty": {}}
        self.start_worker(
            """
            def handler(job):
                return {"id": job.job_id, "name": job.name, "data": job.data, "address": job.socket_path}

            run_job(handler, heartbeat_interval=3600)
            """,
            data=data,
        )
        self.expect("started")
        _, message = self.expect("completed")
        self.assertEqual(
            message["result"],
            {"id": JOB_ID, "name": JOB_NAME, "data": data, "address": self.server.path},
        )

    def test_none_result_is_sent_as_null(self):
        self.start_worker("run_job(lambda job: None, heartbeat_interval=3600)")
        self.expect("started")
        _, message = self.expect("completed")
        self.assertIn("result", message)
        self.assertIsNone(message["result"])

    def test_text_is_escaped_and_utf8(self):
        nasty = 'quote " backslash \\ newline \n tab \t bell \x07 nul \x00 del \x7f ü ☃ 😀 \u2028'
        process = self.start_worker(
            """
            def handler(job):
                text = job.data["text"]
                job.progress(1, text, text=text)
                job.info(text)
                job.info("lone \\udcff surrogate")
                return text

            run_job(handler, heartbeat_interval=3600)
            """,
            data={"text": nasty},
        )
        self.expect("started")
        _, progress = self.expect("progress")
        self.assertEqual(progress["message"], nasty)
        self.assertEqual(progress["data"], {"text": nasty})
        _, log = self.expect("log")
        self.assertEqual(log["message"], nasty)
        _, surrogate = self.expect("log")
        self.assertEqual(surrogate["message"], "lone \ufffd surrogate")
        _, completed = self.expect("completed")
        self.assertEqual(completed["result"], nasty)
        self.assertEqual(self.wait_exit(process), 0)
        for raw in self.server.all_connections[0].raw_lines:
            self.assertEqual(raw.count(b"\n"), 1, "a message spans more than one line: {!r}".format(raw))
            raw.decode("utf-8")

    def test_calls_after_complete_are_ignored(self):
        process = self.start_worker(
            """
            def handler(job):
                job.complete({"first": 1})
                job.progress(99, "late")
                job.info("late")
                job.complete({"second": 2})
                job.fail("late failure")
                return {"returned": 3}

            run_job(handler, heartbeat_interval=3600)
            """
        )
        self.expect("started")
        _, message = self.expect("completed")
        self.assertEqual(message["result"], {"first": 1})
        self.assertEqual(self.wait_exit(process), 0)
        self.assert_no_more_messages()


class FailureTests(WorkerTestCase):
    def test_exception_sends_failed_and_exits_1(self):
        process = self.start_worker(
            """
            def handler(job):
                job.progress(10, "before")
                raise ValueError("bad input ü")

            run_job(handler, heartbeat_interval=3600)
            """
        )
        self.expect("started")
        self.expect("progress")
        _, message = self.expect("failed")
        self.assertEqual(message["error"], "bad input ü")
        self.assertIn("Traceback (most recent call last)", message["stack"])
        self.assertIn("in handler", message["stack"])
        self.assertIn("ValueError: bad input ü", message["stack"])
        self.assertEqual(set(message), {"type", "jobId", "timestamp", "error", "stack"})
        self.assertEqual(self.wait_exit(process), 1)
        self.assert_no_more_messages()

    def test_exception_without_text_uses_class_name(self):
        process = self.start_worker(
            """
            def handler(job):
                raise KeyError

            run_job(handler, heartbeat_interval=3600)
            """
        )
        self.expect("started")
        _, message = self.expect("failed")
        self.assertEqual(message["error"], "KeyError")
        self.assertEqual(self.wait_exit(process), 1)

    def test_explicit_fail_sends_failed_and_exits_1(self):
        process = self.start_worker(
            """
            def handler(job):
                job.fail("cannot decode", "frame 7")
                return {"ignored": True}

            run_job(handler, heartbeat_interval=3600)
            """
        )
        self.expect("started")
        _, message = self.expect("failed")
        self.assertEqual(self.strip(message), {"type": "failed", "error": "cannot decode", "stack": "frame 7"})
        self.assertEqual(self.wait_exit(process), 1)
        self.assert_no_more_messages()

    def test_fail_without_stack_omits_field(self):
        self.start_worker(
            """
            def handler(job):
                job.fail(RuntimeError("disk full"))

            run_job(handler, heartbeat_interval=3600)
            """
        )
        self.expect("started")
        _, message = self.expect("failed")
        self.assertEqual(self.strip(message), {"type": "failed", "error": "disk full"})

    def test_unserialisable_result_fails_job(self):
        process = self.start_worker("run_job(lambda job: {1, 2}, heartbeat_interval=3600)")
        self.expect("started")
        _, message = self.expect("failed")
        self.assertIn("not JSON serializable", message["error"])
        self.assertEqual(self.wait_exit(process), 1)

    def test_invalid_arguments_raise(self):
        self.start_worker(
            """
            def handler(job):
                errors = []
                for call in (
                    lambda: job.progress(float("nan")),
                    lambda: job.progress("50"),
                    lambda: job.progress(True),
                    lambda: job.log("loud", "x"),
                    lambda: job.info("x", value=object()),
                ):
                    try:
                        call()
                    except (TypeError, ValueError) as exc:
                        errors.append(type(exc).__name__)
                job.progress(50)
                return errors

            run_job(handler, heartbeat_interval=3600)
            """
        )
        self.expect("started")
        _, progress = self.expect("progress")
        self.assertEqual(progress["percent"], 50)
        _, message = self.expect("completed")
        self.assertEqual(message["result"], ["ValueError", "TypeError", "TypeError", "ValueError", "TypeError"])

    def test_missing_payload_exits_2(self):
        process = self.start_worker("run_job(lambda job: 1)", payload=b"")
        self.assertEqual(self.wait_exit(process), 2)
        self.assertIn("no job payload on standard input", self.stderr_of(process))

    def test_invalid_payload_exits_2(self):
        process = self.start_worker("run_job(lambda job: 1)", payload=b"{not json\n")
        self.assertEqual(self.wait_exit(process), 2)
        self.assertIn("not valid JSON", self.stderr_of(process))

    def test_unreachable_socket_exits_2(self):
        payload = json.dumps({"jobId": JOB_ID, "name": JOB_NAME, "data": None, "socketPath": self.server.path + ".missing"})
        process = self.start_worker(
            "run_job(lambda job: 1, reconnect_timeout=0.2)",
            payload=payload.encode() + b"\n",
        )
        self.assertEqual(self.wait_exit(process), 2)
        self.assertIn("cannot start the job", self.stderr_of(process))


class HeartbeatTests(WorkerTestCase):
    def test_heartbeats_arrive_until_completion(self):
        read_fd, write_fd = self.go_pipe()
        started_ms = int(time.time() * 1000)
        process = self.start_worker(
            """
            def handler(job):
                os.read(int(os.environ["GO_FD"]), 1)
                return "done"

            run_job(handler, heartbeat_interval=0.05)
            """,
            env={"GO_FD": str(read_fd)},
            pass_fds=(read_fd,),
        )
        os.close(read_fd)
        self.expect("started")
        stamps = []
        while len(stamps) < 3:
            _, message = self.server.next_message(skip_heartbeats=False)
            self.assertEqual(self.strip(message), {"type": "heartbeat"})
            self.assert_envelope(message, started_ms)
            stamps.append(message["timestamp"])
        self.assertEqual(stamps, sorted(stamps))
        os.write(write_fd, b"x")
        while True:
            _, message = self.server.next_message(skip_heartbeats=False)
            if message["type"] != "heartbeat":
                break
        self.assertEqual(message["type"], "completed")
        self.assertEqual(self.wait_exit(process), 0)
        self.assert_no_more_messages(wait=0.3)

    def test_exit_is_prompt_with_long_interval(self):
        process = self.start_worker("run_job(lambda job: {'ok': True}, heartbeat_interval=3600)")
        self.expect("started")
        self.expect("completed")
        completed_at = time.monotonic()
        self.assertEqual(self.wait_exit(process), 0)
        self.assertLess(time.monotonic() - completed_at, 2.0, "worker waited for its heartbeat thread")
        self.assertTrue(self.server.all_connections[0].eof.wait(TIMEOUT))

    def test_concurrent_writers_never_interleave(self):
        # Lines larger than the socket buffer make sendall block part-way,
        # which is when an unserialised heartbeat would land mid-line.
        count = 60
        size = 400000
        process = self.start_worker(
            """
            def handler(job):
                padding = "x" * %d
                for i in range(%d):
                    job.progress(i * 100 / %d, str(i), padding=padding)
                return {"sent": %d}

            run_job(handler, heartbeat_interval=0.001)
            """
            % (size, count, count, count)
        )
        self.expect("started")
        for i in range(count):
            _, message = self.expect("progress")
            self.assertEqual(message["message"], str(i))
            self.assertEqual(len(message["data"]["padding"]), size)
        _, message = self.expect("completed")
        self.assertEqual(message["result"], {"sent": count})
        self.assertEqual(self.wait_exit(process), 0)


class CancelTests(WorkerTestCase):
    def test_cancel_sets_event_and_runs_callbacks(self):
        process = self.start_worker(
            """
            def handler(job):
                calls = []
                job.on_cancel(lambda reason: calls.append(("first", reason)))

                @job.on_cancel
                def broken(reason):
                    raise RuntimeError("callback exploded")

                job.on_cancel(lambda reason: calls.append(("third", reason)))
                job.progress(1, "waiting")
                if not job.cancel_requested.wait(10):
                    return {"cancelled": False}
                job.on_cancel(lambda reason: calls.append(("late", reason)))
                return {"cancelled": True, "reason": job.cancel_reason, "calls": calls}

            run_job(handler, heartbeat_interval=3600)
            """
        )
        connection, started = self.expect("started")
        self.assertEqual(started["protocol"], 2)
        self.expect("progress")
        connection.send_raw(b"not json\n")
        connection.send_line({"type": "future-type", "x": 1})
        connection.send_line({"type": "cancel", "reason": "user request"})
        connection.send_line({"type": "cancel", "reason": "second cancel"})
        _, message = self.expect("completed")
        self.assertEqual(
            message["result"],
            {
                "cancelled": True,
                "reason": "user request",
                "calls": [["first", "user request"], ["third", "user request"], ["late", "user request"]],
            },
        )
        stderr = self.stderr_of(process)
        self.assertIn("on_cancel callback raised", stderr)
        self.assertIn("RuntimeError: callback exploded", stderr)
        self.assertIn("not valid JSON", stderr)
        self.assertEqual(process.returncode, 0)

    def test_cancel_split_across_reads(self):
        self.start_worker(
            """
            def handler(job):
                job.progress(1)
                return job.cancel_requested.wait(10)

            run_job(handler, heartbeat_interval=3600)
            """
        )
        connection, _ = self.expect("started")
        self.expect("progress")
        line = json.dumps({"type": "cancel", "reason": "split"}).encode() + b"\n"
        connection.send_raw(line[:7])
        time.sleep(0.05)  # makes the two halves arrive in separate reads
        connection.send_raw(line[7:])
        _, message = self.expect("completed")
        self.assertIs(message["result"], True)

    def test_server_closing_read_side_is_quiet(self):
        read_fd, write_fd = self.go_pipe()
        process = self.start_worker(
            """
            def handler(job):
                os.read(int(os.environ["GO_FD"]), 1)
                return "finished"

            run_job(handler, heartbeat_interval=3600)
            """,
            env={"GO_FD": str(read_fd)},
            pass_fds=(read_fd,),
        )
        os.close(read_fd)
        connection, _ = self.expect("started")
        # Half-close: the worker's reader sees EOF, but the server still reads.
        connection.sock.shutdown(socket.SHUT_WR)
        os.write(write_fd, b"x")
        _, message = self.expect("completed")
        self.assertEqual(message["result"], "finished")
        self.assertEqual(self.wait_exit(process), 0)
        self.assertEqual(self.stderr_of(process), "")


class TcpTests(WorkerTestCase):
    transport = "tcp"

    def test_tcp_transport(self):
        self.assertTrue(self.server.address.startswith("tcp://127.0.0.1:"))
        process = self.start_worker(
            """
            def handler(job):
                job.progress(30, "over tcp")
                job.cancel_requested.wait(10)
                return {"address": job.socket_path, "reason": job.cancel_reason}

            run_job(handler, heartbeat_interval=3600)
            """
        )
        connection, _ = self.expect("started")
        _, progress = self.expect("progress")
        self.assertEqual(self.strip(progress), {"type": "progress", "percent": 30, "message": "over tcp"})
        connection.send_line({"type": "cancel", "reason": "tcp cancel"})
        _, message = self.expect("completed")
        self.assertEqual(message["result"], {"address": self.server.address, "reason": "tcp cancel"})
        self.assertEqual(self.wait_exit(process), 0)

    def test_tcp_port_from_environment(self):
        payload = json.dumps({"jobId": JOB_ID, "name": JOB_NAME, "data": 7, "socketPath": ""}).encode() + b"\n"
        self.start_worker("run_job(lambda job: job.socket_path, heartbeat_interval=3600)", payload=payload)
        self.expect("started")
        _, message = self.expect("completed")
        self.assertEqual(message["result"], self.server.address)


class ReconnectTests(WorkerTestCase):
    def start_paused_worker(self, body, **options):
        read_fd, write_fd = self.go_pipe()
        process = self.start_worker(body, env={"GO_FD": str(read_fd)}, pass_fds=(read_fd,), **options)
        os.close(read_fd)
        return process, write_fd

    def test_resends_on_new_connection_after_close(self):
        process, go = self.start_paused_worker(
            """
            def handler(job):
                os.read(int(os.environ["GO_FD"]), 1)
                job.progress(50, "after break")
                return "done"

            run_job(handler, heartbeat_interval=3600)
            """
        )
        first, _ = self.expect("started")
        first.close()
        os.write(go, b"x")
        second, progress = self.expect("progress")
        self.assertNotEqual(second.index, first.index)
        self.assertEqual(progress["message"], "after break")
        third, completed = self.expect("completed")
        self.assertEqual(third.index, second.index)
        self.assertEqual(completed["result"], "done")
        self.assertEqual(self.wait_exit(process), 0)
        self.assertIn("reconnecting", self.stderr_of(process))

    def test_waits_for_server_to_come_back(self):
        process, go = self.start_paused_worker(
            """
            def handler(job):
                os.read(int(os.environ["GO_FD"]), 1)
                job.info("sent while the server was down")
                return "survived"

            run_job(handler, heartbeat_interval=3600)
            """
        )
        first, _ = self.expect("started")
        self.server.stop_listening()
        first.close()
        os.write(go, b"x")
        # The server stays away long enough for several failed connection attempts.
        time.sleep(0.5)
        self.assertIsNone(process.poll())
        self.server.listen()
        _, log = self.expect("log")
        self.assertEqual(log["message"], "sent while the server was down")
        _, completed = self.expect("completed")
        self.assertEqual(completed["result"], "survived")
        self.assertEqual(self.wait_exit(process), 0)

    def test_gives_up_after_timeout(self):
        process, go = self.start_paused_worker(
            """
            def handler(job):
                os.read(int(os.environ["GO_FD"]), 1)
                job.progress(10, "lost")
                job.progress(20, "lost too")
                return "never delivered"

            run_job(handler, heartbeat_interval=3600, reconnect_timeout=0.3)
            """
        )
        first, _ = self.expect("started")
        self.server.stop_listening()
        first.close()
        began = time.monotonic()
        os.write(go, b"x")
        self.assertEqual(self.wait_exit(process), 0)
        self.assertLess(time.monotonic() - began, 5.0)
        stderr = self.stderr_of(process)
        self.assertIn("progress was dropped", stderr)
        self.assertIn("completed was not delivered", stderr)
        self.assert_no_more_messages()


class LibraryApiTests(unittest.TestCase):
    """In-process checks of the parts that need no worker process."""

    def setUp(self):
        sys.path.insert(0, str(CLIENT_DIR))
        self.addCleanup(sys.path.remove, str(CLIENT_DIR))
        import donkeylabs_job

        self.module = donkeylabs_job

    def test_from_payload_falls_back_to_environment(self):
        environ = {"DONKEYLABS_JOB_ID": "j9", "DONKEYLABS_JOB_NAME": "n", "DONKEYLABS_SOCKET_PATH": "", "DONKEYLABS_TCP_PORT": "4100"}
        job = self.module.DonkeylabsJob.from_payload({"data": [1]}, environ=environ)
        self.assertEqual((job.job_id, job.name, job.data, job.socket_path), ("j9", "n", [1], "tcp://127.0.0.1:4100"))

    def test_from_payload_without_address_raises(self):
        with self.assertRaisesRegex(self.module.PayloadError, "no socketPath"):
            self.module.DonkeylabsJob.from_payload({"jobId": "j"}, environ={})

    def test_parse_address(self):
        parse = self.module._parse_address
        self.assertEqual(parse("/tmp/x.sock"), (socket.AF_UNIX, "/tmp/x.sock"))
        self.assertEqual(parse("tcp://127.0.0.1:5000"), (socket.AF_INET, ("127.0.0.1", 5000)))
        self.assertEqual(parse("tcp://[::1]:5000"), (socket.AF_INET6, ("::1", 5000)))
        with self.assertRaisesRegex(ValueError, "invalid TCP address"):
            parse("tcp://127.0.0.1")

    def test_on_cancel_after_cancel_runs_at_once(self):
        job = self.module.DonkeylabsJob("j", "n", None, "/nonexistent")
        job._handle_server_line(b'{"type":"cancel","reason":"r"}')
        self.assertTrue(job.cancel_requested.is_set())
        seen = []
        job.on_cancel(seen.append)
        self.assertEqual(seen, ["r"])


if __name__ == "__main__":
    unittest.main()
