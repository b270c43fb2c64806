#!/usr/bin/env bash
# Test worker: writes data.bytes bytes (default 100000000) to standard output
# as lines of data.width characters "x" (default 999) plus a newline, as fast
# as the pipe takes them, then exits 0 without sending any message.
IFS= read -r payload || true
bytes=100000000
width=999
if [[ $payload =~ \"bytes\"[[:space:]]*:[[:space:]]*([0-9]+) ]]; then
    bytes=${BASH_REMATCH[1]}
fi
if [[ $payload =~ \"width\"[[:space:]]*:[[:space:]]*([0-9]+) ]]; then
    width=${BASH_REMATCH[1]}
fi
head -c "$bytes" /dev/zero | tr '\0' 'x' | fold -w "$width"
