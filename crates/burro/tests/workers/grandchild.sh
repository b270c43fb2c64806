#!/usr/bin/env bash
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

# Starts a grandchild, records its pid in data.pidFile, then sleeps.
job_init 1
sleep 1000 &
pid_file=$(job_data_get '.pidFile')
echo $! > "$pid_file.tmp" && mv "$pid_file.tmp" "$pid_file"
while true; do sleep 1; done
