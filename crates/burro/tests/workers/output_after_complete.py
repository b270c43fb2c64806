#!/usr/bin/env python3
"""Test worker: sends started and completed ({"ok": true}) on its socket,
then prints data.lines lines of about 100 bytes (default 10000) to standard
output and exits."""

import json
import os
import socket
import sys

payload = json.loads(sys.stdin.readline() or "{}")
lines = int((payload.get("data") or {}).get("lines", 10000))
job_id = os.environ["DONKEYLABS_JOB_ID"]
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect(os.environ["DONKEYLABS_SOCKET_PATH"])
for message in ({"type": "started", "jobId": job_id}, {"type": "completed", "jobId": job_id, "result": {"ok": True}}):
    connection.sendall((json.dumps(message) + "\n").encode())
pad = "x" * 90
for i in range(lines):
    print("line {} {}".format(i, pad))
