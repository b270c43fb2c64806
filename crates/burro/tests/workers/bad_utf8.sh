#!/usr/bin/env bash
# Test worker: writes invalid UTF-8 to standard output, standard error and
# the message pipe, then completes with {"survived":true}.
#
# Standard output gets the line "\xff\xfe bad \xc3\x28 stdout", standard
# error "stderr \x80\x80". The pipe gets a log message whose text holds the
# raw byte \xff, one with a lone surrogate escape, and a line that is not
# JSON at all, before the completed message.
IFS= read -r payload || true
id=${DONKEYLABS_JOB_ID}
printf '\xff\xfe bad \xc3\x28 stdout\n'
printf 'stderr \x80\x80\n' >&2
printf '{"type":"log","jobId":"%s","level":"info","message":"raw \xff byte"}\n' "$id" >&"$BURRO_MESSAGE_FD"
printf '{"type":"log","jobId":"%s","level":"info","message":"lone \\udc80 surrogate"}\n' "$id" >&"$BURRO_MESSAGE_FD"
printf '\xc0\xaf\xfe\xfe not json\n' >&"$BURRO_MESSAGE_FD"
printf '{"type":"completed","jobId":"%s","result":{"survived":true}}\n' "$id" >&"$BURRO_MESSAGE_FD"
