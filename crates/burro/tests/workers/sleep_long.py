#!/usr/bin/env python3
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))
from donkeylabs_job import run_job  # noqa: E402

import time  # noqa: E402


# Sleeps data.seconds (default 60) while heartbeating, then completes.
def handler(job):
    time.sleep(float((job.data or {}).get("seconds", 60)))
    return {"slept": True}


run_job(handler, heartbeat_interval=0.2)
