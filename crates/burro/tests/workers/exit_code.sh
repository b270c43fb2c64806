#!/usr/bin/env bash
# Test worker: exits with status data.code (default 3) without sending any
# message. It reads its payload line so that the server's write completes.
IFS= read -r payload || true

code=3
if [[ $payload =~ \"code\"[[:space:]]*:[[:space:]]*([0-9]+) ]]; then
    code=${BASH_REMATCH[1]}
fi
exit "$code"
