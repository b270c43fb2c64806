#!/usr/bin/env python3
"""Test worker: reports progress 10 "own progress", then heartbeats every
0.2 s until the file data.releaseFile exists, and completes with
{"released": true}. A cancel ends it by SIGTERM."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    job.progress(10, "own progress")
    release = job.data["releaseFile"]
    while not os.path.exists(release):
        time.sleep(0.05)
    return {"released": True}


if __name__ == "__main__":
    run_job(handler, heartbeat_interval=0.2)
