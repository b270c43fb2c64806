#!/usr/bin/env bash
# Example worker: counts through data.steps steps (default 10), sleeping
# data.delay seconds (default 0.3) each, and sends progress and a log line
# per step. The result is {"steps":N,"delay":D,"language":"bash"}.
#
# examples/burro.toml registers it as the job progress-demo-sh; paths there
# are relative to that file's directory:
#
#   [external_jobs.progress-demo-sh]
#   command = "bash"
#   args = ["workers/progress_demo.sh"]
#
# It needs socat (or nc from netcat-openbsd) unless burro passes
# BURRO_MESSAGE_FD, and jq or python3 for job_data_get.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../clients/shell/donkeylabs-job.sh"

job_init 2
steps=$(job_data_get '.steps // 10')
delay=$(job_data_get '.delay // 0.3')

# A cancel arrives as SIGTERM. The sleep runs in the background so that
# `wait` returns, and this trap runs, as soon as the signal arrives.
step=0
trap 'job_warn "cancelled at step $step of $steps"; exit 143' TERM

job_info "counting $steps steps of $delay s"
for ((step = 1; step <= steps; step++)); do
    sleep "$delay" &
    wait $!
    job_progress $((step * 100 / steps)) "step $step of $steps"
    job_info "finished step $step"
done

job_complete "{\"steps\":$steps,\"delay\":$delay,\"language\":\"bash\"}"
