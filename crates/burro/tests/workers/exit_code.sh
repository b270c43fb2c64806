#!/usr/bin/env bash
# Exits with data.code (default 3) without sending any message.
payload=$(cat)
code=$(printf '%s' "$payload" | python3 -c 'import json,sys; print((json.load(sys.stdin).get("data") or {}).get("code", 3))')
exit "$code"
