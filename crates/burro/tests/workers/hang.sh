#!/usr/bin/env bash
# Test worker: sends started once, then nothing more and never exits.
# The heartbeat interval of one hour keeps it silent.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

job_init 3600
while :; do
    sleep 3600
done
