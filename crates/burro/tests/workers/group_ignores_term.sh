#!/usr/bin/env bash
# Test worker: sends started, then waits on a child in its own process group
# that ignores SIGTERM, so only SIGKILL ends that child.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

job_init 3600
(trap '' TERM; exec sleep 3600) &
wait
