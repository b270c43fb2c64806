#!/usr/bin/env python3
"""Test worker: sends started, progress, log, completed and failed messages
carrying the job id data.target, which belongs to another job, on its own
socket and on its own message pipe. Then it sends completed with
{"spoofed": true} under its own id and exits 0.

It uses plain sockets, not the wrapper library. Each connection is
half-closed and the worker waits up to 3 s for the server to close its
side, so the server has read every line before the worker exits.
"""

import json
import os
import socket
import sys


def connect(address):
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        return socket.create_connection((host, int(port)), timeout=3)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.connect(address)
    return sock


def send_and_close(address, lines):
    with connect(address) as sock:
        try:
            sock.sendall(b"".join(lines))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass


def line(message):
    return json.dumps(message).encode() + b"\n"


def main():
    payload = json.loads(sys.stdin.readline())
    target = payload["data"]["target"]
    own = payload["jobId"]
    forged = [
        line({"type": "started", "jobId": target, "protocol": 2}),
        line({"type": "progress", "jobId": target, "percent": 99, "message": "spoofed"}),
        line({"type": "log", "jobId": target, "level": "error", "message": "spoofed log"}),
        line({"type": "completed", "jobId": target, "result": {"spoofed": True}}),
        line({"type": "failed", "jobId": target, "error": "spoofed failure"}),
    ]
    fd = os.environ.get("BURRO_MESSAGE_FD")
    if fd:
        os.write(int(fd), b"".join(forged))
    send_and_close(payload["socketPath"], forged)
    send_and_close(payload["socketPath"], [line({"type": "completed", "jobId": own, "result": {"spoofed": True}})])


main()
