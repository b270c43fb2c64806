#!/usr/bin/env python3
"""Test worker: sends a progress line with jobId "someone-else", then completes.

The foreign line goes over a second connection that the worker opens itself.
The worker half-closes that connection and waits up to 3 s for the server
to close its side, so the server has read the line before the worker
completes.
"""

import json
import socket
import time

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


def connect(address):
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        return socket.create_connection((host, int(port)), timeout=3)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.connect(address)
    return sock


def handler(job):
    message = {
        "type": "progress",
        "jobId": "someone-else",
        "timestamp": int(time.time() * 1000),
        "percent": 42,
        "message": "sent by {}".format(job.job_id),
    }
    with connect(job.socket_path) as sock:
        sock.sendall(json.dumps(message).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
    return {"foreignLineSent": True}


if __name__ == "__main__":
    run_job(handler)
