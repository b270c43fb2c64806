#!/usr/bin/env python3
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))
from donkeylabs_job import run_job  # noqa: E402



# Sends data.count progress messages as fast as it can.
def handler(job):
    count = int((job.data or {}).get("count", 20000))
    for i in range(count):
        job.progress(i * 100 / count, str(i))
    return {"sent": count}


run_job(handler)
