#!/usr/bin/env python3
"""Test worker: reports progress 50, then completes with {"echo": data}."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    job.progress(50)
    return {"echo": job.data}


if __name__ == "__main__":
    run_job(handler)
