#!/usr/bin/env bash
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

# Starts a daemon in its own session (outside the job's process group),
# records its pid in data.pidFile, then completes and exits.
job_init 1
setsid sleep 1000 </dev/null >/dev/null 2>&1 &
pid_file=$(job_data_get '.pidFile')
echo $! > "$pid_file"
job_complete '{"forked":true}'
