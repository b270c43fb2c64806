#!/usr/bin/env bash
# Test worker: starts a grandchild process (sleep 1000) in the job's process
# group, writes its pid to the file data.pidFile, then runs until killed,
# heartbeating every second.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

job_init 1
pid_file=$(job_data_get '.pidFile')
if [[ -z $pid_file || $pid_file == null ]]; then
    job_fail "data.pidFile is missing"
fi

sleep 1000 >/dev/null 2>&1 &
# Written to a temporary name first, so a reader never sees a partial pid.
printf '%s\n' "$!" >"$pid_file.tmp"
mv "$pid_file.tmp" "$pid_file"

while :; do
    sleep 1
done
