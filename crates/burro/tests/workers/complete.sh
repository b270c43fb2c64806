#!/usr/bin/env bash
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

job_init 1
steps=$(job_data_get '.steps // 1')
job_progress 50 "half"
job_complete "{\"ok\":true,\"steps\":$steps}"
