#!/usr/bin/env python3
"""Test worker: sends one line of data.bytes bytes (default 2048), then completes.

It uses plain sockets, not the wrapper library, and sends no started or
heartbeat. The line is a valid progress message padded to exactly
data.bytes bytes, not counting its newline (a shorter minimum when
data.bytes is below the size of the bare message). It goes on its own
connection. Then, on a fresh connection, it sends data.after log
messages (default 0), numbered "after 1", "after 2" and so on, and then
completed with {"afterOversize": true}, unless data.complete is false, in
which case it exits 0 without a terminal message. With data.sleep, it
waits that many seconds after the long line. Each connection is half-closed and the
worker waits up to 3 s for the server to close it.
"""

import json
import socket
import sys
import time


def connect(address):
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        return socket.create_connection((host, int(port)), timeout=3)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.connect(address)
    return sock


def send_and_close(address, line):
    """Send one line; the server may close the connection part-way."""
    with connect(address) as sock:
        try:
            sock.sendall(line)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass


def main():
    payload = json.loads(sys.stdin.readline())
    data = payload.get("data") or {}
    size = int(data.get("bytes", 2048))
    address = payload["socketPath"]

    message = {
        "type": "progress",
        "jobId": payload["jobId"],
        "timestamp": int(time.time() * 1000),
        "percent": 1,
        "message": "",
    }
    bare = len(json.dumps(message, separators=(",", ":")).encode())
    message["message"] = "x" * max(size - bare, 0)
    send_and_close(address, json.dumps(message, separators=(",", ":")).encode() + b"\n")
    time.sleep(float(data.get("sleep", 0)))

    lines = []
    for number in range(1, int(data.get("after", 0)) + 1):
        log = {"type": "log", "jobId": payload["jobId"], "level": "info", "message": f"after {number}"}
        lines.append(json.dumps(log).encode() + b"\n")
    if data.get("complete", True):
        completed = {
            "type": "completed",
            "jobId": payload["jobId"],
            "timestamp": int(time.time() * 1000),
            "result": {"afterOversize": True},
        }
        lines.append(json.dumps(completed).encode() + b"\n")
    if lines:
        send_and_close(address, b"".join(lines))


if __name__ == "__main__":
    main()
