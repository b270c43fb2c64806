#!/usr/bin/env python3
# Sends one line that names another job, then completes normally.
import json
import os
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))
from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    path = os.environ["DONKEYLABS_SOCKET_PATH"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        line = {"type": "progress", "jobId": "someone-else", "timestamp": 0, "percent": 66, "message": "spoofed"}
        conn.sendall((json.dumps(line) + "\n").encode())
    return {"done": True}


run_job(handler)
