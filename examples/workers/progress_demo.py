#!/usr/bin/env python3
"""Example worker: counts through data.steps steps, reporting progress and a log line each.

data.steps sets the number of steps (default 10) and data.delay the seconds
each step takes (default 0.3). The result is an object with the step count
and the elapsed seconds. A cancel request from the server stops the count
early and sends a warning log line, because the wait between steps is
job.cancel_requested.wait().

examples/burro.toml registers it as the job progress-demo-py; paths there
are relative to that file's directory:

    [external_jobs.progress-demo-py]
    command = "python3"
    args = ["workers/progress_demo.py"]

The wrapper module comes from `pip install clients/python`, or from this
repository's clients/python directory when it is not installed.
"""

import os
import sys
import time

try:
    from donkeylabs_job import DonkeylabsJob, run_job
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
    from donkeylabs_job import DonkeylabsJob, run_job


def count_steps(job: DonkeylabsJob):
    data = job.data if isinstance(job.data, dict) else {}
    steps = int(data.get("steps", 10))
    delay = float(data.get("delay", 0.3))
    began = time.monotonic()

    job.info("counting {} steps of {} s".format(steps, delay), steps=steps, delay=delay)
    for step in range(1, steps + 1):
        if job.cancel_requested.wait(delay):
            job.warn("cancelled at step {} of {}: {}".format(step, steps, job.cancel_reason))
            return {"steps": step - 1, "cancelled": True}
        job.progress(step * 100 / steps, "step {} of {}".format(step, steps), step=step)
        job.info("finished step {}".format(step))

    return {"steps": steps, "seconds": round(time.monotonic() - began, 2), "language": "python"}


if __name__ == "__main__":
    run_job(count_steps)
