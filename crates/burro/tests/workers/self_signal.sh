#!/usr/bin/env bash
# Test worker: reads its payload, then kills itself with SIGKILL.
IFS= read -r _ || true
kill -9 $$
