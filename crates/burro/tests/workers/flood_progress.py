#!/usr/bin/env python3
"""Test worker: sends data.count progress messages (default 20000) as fast as it can.

Message i, counting from 0 to count - 1, has percent i * 100 / count and
message str(i), followed by a space and data.pad x's when data.pad is set.
Then it sends data.heartbeats heartbeats and prints data.stdout lines
"out <i>" to standard output. The result is {"sent": count}.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    count = int((job.data or {}).get("count", 20000))
    pad = int((job.data or {}).get("pad", 0))
    suffix = " " + "x" * pad if pad else ""
    for i in range(count):
        job.progress(i * 100 / count, str(i) + suffix)
    for _ in range(int((job.data or {}).get("heartbeats", 0))):
        job.heartbeat()
    for i in range(int((job.data or {}).get("stdout", 0))):
        print("out {}".format(i))
    return {"sent": count}


if __name__ == "__main__":
    run_job(handler)
