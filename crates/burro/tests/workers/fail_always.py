#!/usr/bin/env python3
"""Test worker: raises an exception with the text "boom attempt" on every attempt."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


def handler(job):
    raise RuntimeError("boom attempt")


if __name__ == "__main__":
    run_job(handler)
