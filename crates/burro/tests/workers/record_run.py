#!/usr/bin/env python3
"""Test worker: appends its job id to the file named by RUNS_FILE, one line
per run, then sleeps data.first_seconds on the first run of its job and
data.seconds on later runs (both default 0), heartbeating, and completes with
the number of runs of its job so far.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    path = os.environ["RUNS_FILE"]
    # One write with O_APPEND: lines of concurrent runs never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (job.job_id + "\n").encode())
    finally:
        os.close(fd)
    with open(path) as runs:
        count = sum(1 for line in runs if line.strip() == job.job_id)
    data = job.data or {}
    seconds = float(data.get("first_seconds" if count == 1 else "seconds", 0))
    job.progress(50, f"run {count}")
    time.sleep(seconds)
    return {"runs": count, "pid": os.getpid()}


if __name__ == "__main__":
    run_job(handler, heartbeat_interval=0.2)
