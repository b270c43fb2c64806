"""Job-side wrapper for burro external jobs (the Donkeylabs external-job protocol).

burro starts a job process with the environment variables DONKEYLABS_JOB_ID,
DONKEYLABS_JOB_NAME, DONKEYLABS_SOCKET_PATH and DONKEYLABS_TCP_PORT, and
writes one JSON line to its standard input::

    {"jobId": "...", "name": "...", "data": <any JSON>, "socketPath": "..."}

``socketPath`` is the path of a Unix socket, or ``tcp://127.0.0.1:PORT`` with
the TCP transport. The job reports back over that socket with
newline-delimited JSON messages. This module does all of that for you::

    from donkeylabs_job import DonkeylabsJob, run_job

    def resize(job: DonkeylabsJob):
        images = job.data["images"]
        for index, image in enumerate(images):
            job.progress(index * 100 / len(images), "resizing", image=image)
        return {"resized": len(images)}

    if __name__ == "__main__":
        run_job(resize)

``run_job`` sends ``started``, heartbeats on a background thread, and sends
``completed`` with the handler's return value, or ``failed`` with the
exception text and traceback (then the process exits with status 1).

Cancellation: the ``started`` message announces protocol 2, so the server
sends ``{"type": "cancel", "reason": ...}`` on the connection instead of
signalling the process at once. A reader thread then sets
``job.cancel_requested`` and calls the callbacks registered with
``job.on_cancel``. The server sends SIGTERM to the process group if the job
is still running after its cancel grace period.

Connection loss: when a write fails because the connection broke, the
wrapper reconnects to the same address, retrying with a backoff that grows
from 0.05 s to 1 s for up to ``reconnect_timeout`` seconds (30 by default).
Meanwhile the thread that was sending waits, and so does every other thread
that sends. The message whose write failed is then sent again in full on the
new connection. Lines that the kernel had already accepted before the break
was detected may be lost. When the timeout runs out, the message is dropped
with a note on standard error. After that, each later message makes one
connection attempt and is dropped if it fails. ``completed`` and ``failed``
are the exception: they always get the full retry window. The new
connection does not announce protocol 2 again, so a cancel after a
reconnect arrives as SIGTERM.

Only the standard library is used; Python 3.8 or newer.
"""

import json
import math
import numbers
import os
import socket
import sys
import threading
import time
import traceback

__all__ = ["DonkeylabsJob", "run_job", "PayloadError", "LOG_LEVELS", "PROTOCOL_VERSION"]
__version__ = "0.1.0"

#: Value of ``protocol`` in ``started``: this wrapper reads server messages.
PROTOCOL_VERSION = 2

#: Levels accepted by :meth:`DonkeylabsJob.log`.
LOG_LEVELS = ("debug", "info", "warn", "error")

#: Seconds to keep reconnecting before a message is dropped.
DEFAULT_RECONNECT_TIMEOUT = 30.0

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_CONNECT_TIMEOUT = 5.0

# A server line longer than this without a newline is discarded, so a broken
# peer cannot make the reader thread grow without bound.
_MAX_SERVER_LINE = 1 << 20


class PayloadError(ValueError):
    """The job payload on standard input is missing or invalid."""


def _now_ms():
    return int(time.time() * 1000)


def _warn(text):
    # Standard error is captured by the server as the job's error log.
    try:
        print("donkeylabs_job: " + text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _parse_address(address):
    """Return ``(family, target)`` for a Unix path or ``tcp://host:port``."""
    if address.startswith("tcp://"):
        host, separator, port_text = address[len("tcp://"):].rpartition(":")
        if not separator or not port_text.isdigit():
            raise ValueError("invalid TCP address {!r}: expected tcp://HOST:PORT".format(address))
        host = host.strip("[]") or "127.0.0.1"
        return socket.AF_INET6 if ":" in host else socket.AF_INET, (host, int(port_text))
    if not address:
        raise ValueError("empty socket path")
    return socket.AF_UNIX, address


def _open_socket(address):
    family, target = _parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(_CONNECT_TIMEOUT)
        sock.connect(target)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def _encode(message):
    """Serialise one message as a UTF-8 JSON line."""
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (for example from undecodable file names) cannot be
        # encoded as UTF-8. The UTF-16 round trip turns them into U+FFFD.
        cleaned = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        encoded = cleaned.encode("utf-8")
    return encoded + b"\n"


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("{} must be a number, got {!r}".format(name, value))
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError("{} must be a finite number, got {!r}".format(name, value))
    return value


class DonkeylabsJob:
    """One running job: its payload and the connection to the server.

    Attributes:
        job_id: the job id (``jobId`` in the payload).
        name: the registered job name.
        data: the enqueued JSON value, decoded.
        socket_path: the Unix socket path or ``tcp://host:port`` address.
        cancel_requested: a :class:`threading.Event` set when the server sends
            ``cancel``.
        cancel_reason: the ``reason`` of that cancel message, or None.

    Every sending method is thread-safe. After :meth:`complete` or
    :meth:`fail`, every sending method does nothing.
    """

    def __init__(self, job_id, name, data, socket_path, reconnect_timeout=DEFAULT_RECONNECT_TIMEOUT):
        self.job_id = job_id
        self.name = name
        self.data = data
        self.socket_path = socket_path
        self.cancel_requested = threading.Event()
        self.cancel_reason = None

        self._reconnect_timeout = reconnect_timeout
        self._send_lock = threading.Lock()
        self._sock = None
        # True after a reconnect window ran out without a connection.
        self._offline = False
        # "completed" or "failed" once a terminal message was sent.
        self._outcome = None

        self._cancel_lock = threading.Lock()
        self._cancel_received = False
        self._cancel_callbacks = []

        self._stop = threading.Event()
        self._heartbeat_thread = None

    # Construction ---------------------------------------------------------

    @classmethod
    def from_payload(cls, payload, environ=None, **options):
        """Build a job from the decoded payload object.

        Missing fields fall back to the DONKEYLABS_* environment variables.

        Raises:
            PayloadError: when the payload is not an object or no job id or
                socket address can be found.
        """
        environ = os.environ if environ is None else environ
        if not isinstance(payload, dict):
            raise PayloadError("the job payload must be a JSON object, got {}".format(type(payload).__name__))

        job_id = payload.get("jobId") or environ.get("DONKEYLABS_JOB_ID")
        if not job_id:
            raise PayloadError("the job payload has no jobId and DONKEYLABS_JOB_ID is not set")
        name = payload.get("name") or environ.get("DONKEYLABS_JOB_NAME", "")

        address = payload.get("socketPath") or environ.get("DONKEYLABS_SOCKET_PATH")
        if not address and environ.get("DONKEYLABS_TCP_PORT"):
            address = "tcp://127.0.0.1:" + environ["DONKEYLABS_TCP_PORT"]
        if not address:
            raise PayloadError(
                "the job payload has no socketPath and neither DONKEYLABS_SOCKET_PATH "
                "nor DONKEYLABS_TCP_PORT is set"
            )
        return cls(job_id, name, payload.get("data"), address, **options)

    @classmethod
    def from_stdin(cls, stream=None, **options):
        """Read the payload line from standard input and build a job.

        Raises:
            PayloadError: when the input is empty or not a JSON object.
        """
        if stream is None:
            if sys.stdin is None:
                raise PayloadError("standard input is closed, so there is no job payload to read")
            stream = sys.stdin.buffer
        line = stream.readline()
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        if not line.strip():
            raise PayloadError("no job payload on standard input (expected one JSON line)")
        try:
            payload = json.loads(line)
        except ValueError as exc:
            raise PayloadError("the job payload is not valid JSON: {}".format(exc)) from None
        return cls.from_payload(payload, **options)

    # Connection -----------------------------------------------------------

    def connect(self):
        """Connect to the server, retrying for up to the reconnect timeout.

        Raises:
            OSError: when no connection could be made in that time.
            ValueError: when the address is malformed.
        """
        _parse_address(self.socket_path)
        deadline = time.monotonic() + self._reconnect_timeout
        backoff = _FIRST_BACKOFF
        with self._send_lock:
            while True:
                try:
                    self._attach(_open_socket(self.socket_path))
                    return
                except OSError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    time.sleep(min(backoff, remaining))
                    backoff = min(backoff * 2, _MAX_BACKOFF)

    def start_heartbeat(self, interval):
        """Start a daemon thread that sends ``heartbeat`` every ``interval`` seconds."""
        if interval <= 0:
            raise ValueError("heartbeat interval must be positive, got {!r}".format(interval))
        if self._heartbeat_thread is not None:
            return
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, args=(interval,), name="donkeylabs-heartbeat", daemon=True
        )
        self._heartbeat_thread.start()

    def close(self):
        """Stop the heartbeat and close the connection. Safe to call twice."""
        self._stop.set()
        with self._send_lock:
            self._detach()
        thread = self._heartbeat_thread
        if thread is not None and thread is not threading.current_thread():
            # The thread wakes from Event.wait at once; it can only be slower
            # while a send is in progress.
            thread.join(timeout=1.0)

    # Messages -------------------------------------------------------------

    def progress(self, percent, message=None, **data):
        """Send ``progress`` with ``percent``, a number from 0 to 100.

        Keyword arguments become the message's ``data`` object.
        """
        fields = {"percent": _number(percent, "percent")}
        if message is not None:
            fields["message"] = str(message)
        if data:
            fields["data"] = data
        self._send("progress", fields)

    def log(self, level, message, **data):
        """Send ``log`` with ``level`` debug, info, warn (or warning) or error."""
        if level == "warning":
            level = "warn"
        if level not in LOG_LEVELS:
            raise ValueError("invalid log level {!r}: expected one of {}".format(level, ", ".join(LOG_LEVELS)))
        fields = {"level": level, "message": str(message)}
        if data:
            fields["data"] = data
        self._send("log", fields)

    def debug(self, message, **data):
        self.log("debug", message, **data)

    def info(self, message, **data):
        self.log("info", message, **data)

    def warn(self, message, **data):
        self.log("warn", message, **data)

    def error(self, message, **data):
        self.log("error", message, **data)

    def heartbeat(self):
        """Send ``heartbeat``. The background heartbeat thread calls this."""
        self._send("heartbeat", {})

    def complete(self, result=None):
        """Send ``completed`` with ``result``, any JSON-serialisable value.

        Raises:
            TypeError, ValueError: when ``result`` cannot be serialised. No
                message is sent then, so the job can still fail.
        """
        self._send("completed", {"result": result}, terminal=True)

    def fail(self, error, stack=None):
        """Send ``failed`` with the error text and an optional stack trace."""
        fields = {"error": str(error)}
        if stack is not None:
            fields["stack"] = str(stack)
        self._send("failed", fields, terminal=True)

    @property
    def finished(self):
        """True once ``completed`` or ``failed`` was sent."""
        return self._outcome is not None

    @property
    def outcome(self):
        """``"completed"``, ``"failed"`` or None while the job runs."""
        return self._outcome

    # Cancellation ---------------------------------------------------------

    def on_cancel(self, callback):
        """Register ``callback(reason)`` to run when the server sends ``cancel``.

        Callbacks run on the reader thread, so they should be short (set a
        flag, terminate a child process). An exception in a callback is
        printed to standard error and otherwise ignored. The callbacks
        registered before the cancel arrived have all run by the time
        ``cancel_requested`` is set. A callback registered after the cancel
        arrived runs at once, in the calling thread.
        """
        with self._cancel_lock:
            already_cancelled = self._cancel_received
            if not already_cancelled:
                self._cancel_callbacks.append(callback)
        if already_cancelled:
            self._run_cancel_callback(callback)
        return callback

    def _handle_cancel(self, reason):
        with self._cancel_lock:
            if self._cancel_received:
                return
            self._cancel_received = True
            self.cancel_reason = reason
            callbacks = list(self._cancel_callbacks)
            self._cancel_callbacks.clear()
        for callback in callbacks:
            self._run_cancel_callback(callback)
        # Set last, so a thread woken by the event sees every callback's effect.
        self.cancel_requested.set()

    def _run_cancel_callback(self, callback):
        try:
            callback(self.cancel_reason)
        except Exception:
            _warn("an on_cancel callback raised an exception:\n" + traceback.format_exc().rstrip())

    # Internals ------------------------------------------------------------

    def _send_started(self):
        self._send("started", {"protocol": PROTOCOL_VERSION})

    def _send(self, kind, fields, terminal=False):
        message = {"type": kind, "jobId": self.job_id, "timestamp": _now_ms()}
        message.update(fields)
        # Serialise before taking the lock, so an invalid value raises in the
        # caller without marking the job finished.
        line = _encode(message)
        with self._send_lock:
            if self._outcome is not None:
                return False
            if terminal:
                self._outcome = kind
                self._stop.set()
            return self._write_line(line, kind, terminal)

    def _write_line(self, line, kind, terminal):
        """Write one line, reconnecting when the connection broke. Lock held."""
        deadline = None
        backoff = _FIRST_BACKOFF
        while True:
            if self._sock is not None:
                try:
                    self._sock.sendall(line)
                    return True
                except OSError as exc:
                    _warn("connection to {} lost while sending {} ({}), reconnecting".format(self.socket_path, kind, exc))
                    self._detach()

            if deadline is None:
                window = self._reconnect_timeout if terminal or not self._offline else 0.0
                deadline = time.monotonic() + window
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._give_up(kind)
                time.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, _MAX_BACKOFF)

            try:
                sock = _open_socket(self.socket_path)
            except OSError:
                if time.monotonic() >= deadline:
                    return self._give_up(kind)
                continue
            if self._offline:
                _warn("reconnected to {}".format(self.socket_path))
            self._offline = False
            self._attach(sock)

    def _give_up(self, kind):
        if kind in ("completed", "failed"):
            _warn(
                "could not reconnect to {} within {:g} s, so {} was not delivered".format(
                    self.socket_path, self._reconnect_timeout, kind
                )
            )
        elif not self._offline:
            _warn(
                "could not reconnect to {} within {:g} s, so {} was dropped. Each later message "
                "makes one connection attempt and is dropped if it fails".format(
                    self.socket_path, self._reconnect_timeout, kind
                )
            )
        self._offline = True
        return False

    def _attach(self, sock):
        self._sock = sock
        reader = threading.Thread(
            target=self._read_server_messages, args=(sock,), name="donkeylabs-reader", daemon=True
        )
        reader.start()

    def _detach(self):
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            # shutdown wakes the reader thread blocked in recv; queued data
            # is still delivered to the server before the FIN.
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _read_server_messages(self, sock):
        pending = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            while True:
                line, newline, rest = pending.partition(b"\n")
                if not newline:
                    break
                pending = rest
                self._handle_server_line(line)
            if len(pending) > _MAX_SERVER_LINE:
                _warn("discarding a server line longer than {} bytes".format(_MAX_SERVER_LINE))
                pending = b""

    def _handle_server_line(self, line):
        if not line.strip():
            return
        try:
            message = json.loads(line.decode("utf-8"))
        except ValueError:
            _warn("ignoring a server line that is not valid JSON: {!r}".format(line[:200]))
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "cancel":
            reason = message.get("reason")
            self._handle_cancel(None if reason is None else str(reason))
        # Other types are reserved for later protocol versions and ignored.

    def _heartbeat_loop(self, interval):
        while not self._stop.wait(interval):
            try:
                self.heartbeat()
            except Exception:
                _warn("heartbeat failed:\n" + traceback.format_exc().rstrip())


def run_job(handler, heartbeat_interval=5.0, reconnect_timeout=DEFAULT_RECONNECT_TIMEOUT):
    """Run ``handler(job)`` as a burro external job.

    Reads the payload from standard input, connects, sends ``started``,
    heartbeats every ``heartbeat_interval`` seconds, then sends ``completed``
    with the handler's return value unless the handler already called
    ``job.complete`` or ``job.fail``.

    If the handler raises an exception, ``failed`` is sent with the exception
    text and traceback and the process exits with status 1; it also exits
    with status 1 when the handler called ``job.fail``. A payload or
    connection error at start exits with status 2 and a message on standard
    error. SystemExit and KeyboardInterrupt pass through unchanged.
    """
    try:
        job = DonkeylabsJob.from_stdin(reconnect_timeout=reconnect_timeout)
        job.connect()
    except (PayloadError, ValueError, OSError) as exc:
        _warn("cannot start the job: {}".format(exc))
        sys.exit(2)

    job._send_started()
    job.start_heartbeat(heartbeat_interval)
    try:
        result = handler(job)
        job.complete(result)
    except Exception as exc:
        job.fail(str(exc) or type(exc).__name__, traceback.format_exc())
    finally:
        job.close()

    if job.outcome == "failed":
        sys.exit(1)
