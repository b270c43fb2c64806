#!/usr/bin/env python3
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "clients", "python"))
from donkeylabs_job import run_job  # noqa: E402


run_job(lambda job: {"ok": True})
