#!/usr/bin/env bash
# Test worker: sends data.text as a progress message and as an info log
# line, then completes with {"text": data.text}. The text may contain any
# character except NUL and round-trips unchanged.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../../clients/shell/donkeylabs-job.sh"

job_init
# Command substitution strips trailing newlines, so the x protects those
# of the text. The newline before it is the one job_data_get adds.
text=$(job_data_get '.text // ""'; printf x)
text=${text%$'\nx'}

job_progress 10 "$text"
job_info "$text"
quoted=
job_json_quote "$text" quoted
job_complete "{\"text\":$quoted}"
