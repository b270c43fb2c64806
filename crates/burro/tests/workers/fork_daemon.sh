#!/usr/bin/env bash
# Test worker: starts "setsid sleep 1000", which leaves the job's process
# group and session, writes that process's pid to the file data.pidFile,
# then completes with {"daemonPid":PID} and exits 0. The daemon's standard
# streams point to /dev/null, so it does not hold the job's output open.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

job_init
pid_file=$(job_data_get '.pidFile')
if [[ -z $pid_file || $pid_file == null ]]; then
    job_fail "data.pidFile is missing"
fi

# A background child of a non-interactive bash is not a process group
# leader, so setsid calls setsid() and execs sleep in the same process:
# $! is the daemon's pid.
setsid sleep 1000 </dev/null >/dev/null 2>&1 &
daemon_pid=$!
printf '%s\n' "$daemon_pid" >"$pid_file.tmp"
mv "$pid_file.tmp" "$pid_file"

job_complete "{\"daemonPid\":$daemon_pid}"
