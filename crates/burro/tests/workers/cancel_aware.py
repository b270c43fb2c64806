#!/usr/bin/env python3
"""Waits for a cancel message, writes "cancel seen" to data.markerFile and
returns; the server records the job as cancelled."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))
from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    job.progress(1, "waiting for cancel")
    if not job.cancel_requested.wait(60):
        return {"cancelled": False}
    with open(job.data["markerFile"], "w") as marker:
        marker.write("cancel seen")
    return {"cancelled": True}


run_job(handler, heartbeat_interval=0.5)
