#!/usr/bin/env python3
"""Test worker: heartbeats every 0.2 s, sleeps data.seconds (default 60), then completes.

It ignores cancel messages, so a cancel ends it only through SIGTERM after
the server's cancel grace period.
"""

import time

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    seconds = float((job.data or {}).get("seconds", 60))
    time.sleep(seconds)
    return {"slept": seconds}


if __name__ == "__main__":
    run_job(handler, heartbeat_interval=0.2)
