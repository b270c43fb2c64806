#!/usr/bin/env bash
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

# Sends started once, then never another message.
job_init 3600
sleep 1000 &
wait
