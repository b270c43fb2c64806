#!/usr/bin/env bash
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

# Sends data.text as progress message and log line, and returns it.
job_init 1
text=$(printf '%s' "$DONKEYLABS_JOB_DATA" | python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["text"])'; printf x)
text=${text%x}
job_progress 10 "$text"
job_info "$text"
result=$(printf '%s' "$DONKEYLABS_JOB_DATA" | python3 -c 'import json,sys; print(json.dumps({"text": json.load(sys.stdin)["text"]}))')
job_complete "$result"
