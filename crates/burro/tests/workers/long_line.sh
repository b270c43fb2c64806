#!/usr/bin/env bash
# Test worker: writes one line of data.bytes bytes "y" (default 10000000)
# without a newline to data.target, which is "stdout" (the default) or
# "pipe" (the BURRO_MESSAGE_FD pipe), then exits 0 without sending any
# other message.
IFS= read -r payload || true
bytes=10000000
if [[ $payload =~ \"bytes\"[[:space:]]*:[[:space:]]*([0-9]+) ]]; then
    bytes=${BASH_REMATCH[1]}
fi
if [[ $payload == *'"target":"pipe"'* ]]; then
    head -c "$bytes" /dev/zero | tr '\0' 'y' >&"$BURRO_MESSAGE_FD"
else
    head -c "$bytes" /dev/zero | tr '\0' 'y'
fi
