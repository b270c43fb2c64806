#!/usr/bin/env python3
"""Logs the numbers 1 to data.count, one message each (followed by data.pad
filler characters), data.delay seconds apart, then returns {"count": N}, or
fails with "failed on purpose" when data.fail is true."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))
from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    count = int(job.data.get("count", 10))
    delay = float(job.data.get("delay", 0.05))
    padding = " " + "x" * int(job.data.get("pad", 0)) if job.data.get("pad") else ""
    for number in range(1, count + 1):
        job.info(str(number) + padding)
        job.progress(number * 100 / count, str(number))
        time.sleep(delay)
    if job.data.get("fail"):
        raise RuntimeError("failed on purpose")
    return {"count": count}


run_job(handler, heartbeat_interval=0.5)
