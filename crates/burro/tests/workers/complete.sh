#!/usr/bin/env bash
# Test worker: reports progress 50 "half", then completes with
# {"ok":true,"steps":N}, where N is data.steps (default 1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

job_init
job_progress 50 "half"
steps=$(job_data_get '.steps // 1')
job_complete "{\"ok\":true,\"steps\":$steps}"
