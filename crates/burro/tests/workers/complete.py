#!/usr/bin/env python3
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))
from donkeylabs_job import run_job  # noqa: E402


# Reports 50 % and returns the job data.
def handler(job):
    job.progress(50, "half")
    return {"echo": job.data}


run_job(handler, heartbeat_interval=1.0)
