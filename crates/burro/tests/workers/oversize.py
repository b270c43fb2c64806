#!/usr/bin/env python3
# Sends one line of data.bytes bytes on its own connection, then completes
# on a fresh connection.
import json
import os
import socket
import sys
import time


def send(path, line):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        try:
            conn.sendall(line)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
        except OSError:
            pass


payload = json.loads(sys.stdin.readline())
job_id = payload["jobId"]
size = int((payload.get("data") or {}).get("bytes", 2048))
path = os.environ["DONKEYLABS_SOCKET_PATH"]
now = int(time.time() * 1000)
filler = "x" * size
send(path, (json.dumps({"type": "log", "jobId": job_id, "timestamp": now, "level": "info", "message": filler}) + "\n").encode())
send(path, (json.dumps({"type": "completed", "jobId": job_id, "timestamp": now, "result": {"after": "oversize"}}) + "\n").encode())
