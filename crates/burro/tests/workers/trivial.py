#!/usr/bin/env python3
"""Test worker: completes at once with {"ok": true}."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))

from donkeylabs_job import run_job  # noqa: E402


if __name__ == "__main__":
    run_job(lambda job: {"ok": True})
