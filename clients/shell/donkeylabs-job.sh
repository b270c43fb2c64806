# shellcheck shell=bash
#
# donkeylabs-job.sh: bash library for writing burro external jobs (the
# Donkeylabs external-job protocol). Source it; do not run it.
#
#   #!/usr/bin/env bash
#   source /path/to/donkeylabs-job.sh
#   job_init 5                          # read the payload, send started, heartbeat every 5 s
#   steps=$(job_data_get '.steps // 5')
#   for ((i = 1; i <= steps; i++)); do
#       job_progress $((i * 100 / steps)) "step $i of $steps"
#   done
#   job_complete '{"steps":'"$steps"'}'  # sends completed and exits 0
#
# Functions
#   job_init [INTERVAL]        Read the payload line from standard input, set
#                              DONKEYLABS_JOB_DATA, send started, and start a
#                              background subshell that sends heartbeat every
#                              INTERVAL seconds (default 5, fractions allowed).
#                              An EXIT trap stops that subshell; a previous
#                              EXIT trap still runs after it.
#   job_progress PERCENT [MESSAGE]
#   job_log LEVEL MESSAGE      LEVEL is debug, info, warn (or warning) or error.
#   job_debug / job_info / job_warn / job_error MESSAGE
#   job_complete [RESULT_JSON] Send completed with RESULT_JSON (null when
#                              omitted) and exit 0. RESULT_JSON must be valid
#                              JSON; line breaks in it are sent as spaces.
#   job_fail MESSAGE           Send failed with MESSAGE as the error and exit 1.
#   job_data_get FILTER        Print the value of a jq filter applied to the
#                              job data, strings raw (like jq -r), for example
#                              job_data_get '.steps // 5'. Uses jq, or python3
#                              when jq is missing (paths such as .a.b[0],
#                              ."key" and // defaults only).
#   job_json_quote TEXT [VAR]  Print TEXT as a JSON string literal, or store it
#                              in VAR, for building RESULT_JSON safely.
#   job_cleanup                Stop the heartbeat subshell. The EXIT trap of
#                              job_init calls it; call it yourself if you
#                              replace that trap.
# After job_complete or job_fail, other sending functions do nothing. Each
# sending function returns 0 when the message was delivered, 1 when it could
# not be delivered (with a note on standard error) and 2 on invalid arguments.
# Calling job_complete or job_fail in a subshell exits only that subshell.
#
# Variables
#   DONKEYLABS_JOB_ID, DONKEYLABS_JOB_NAME, DONKEYLABS_SOCKET_PATH and
#   DONKEYLABS_TCP_PORT come from the server's environment. job_init sets
#   DONKEYLABS_JOB_DATA to the payload's data as JSON text. It is a shell
#   variable, not exported: Linux limits one environment string to 128 KiB,
#   so exporting large data would make every later exec fail with E2BIG.
#
# Text in messages may contain anything bash can hold: quotes, backslashes,
# newlines and other control characters are escaped, and UTF-8 passes
# through unchanged. Bytes that are not valid UTF-8 are replaced by U+FFFD,
# because the server accepts only UTF-8 lines. Escaping runs in bash itself
# and starts no process.
#
# Transport, in this order:
#   1. BURRO_MESSAGE_FD: an inherited pipe. Each line is written by
#      `flock LOCKFILE cat`, so the script and its heartbeat subshell never
#      interleave lines (pipe writes over 4096 bytes are not atomic). Each
#      writer opens the lock file itself: a lock on the inherited pipe would
#      be shared by both processes after fork and exclude nothing. Needs
#      flock from util-linux; without it the socket is used.
#   2. socat: one connection per message, `socat -u - UNIX-CONNECT:PATH`
#      (or TCP:127.0.0.1:PORT).
#   3. nc from netcat-openbsd: `nc -N -U PATH` (or `nc -N 127.0.0.1 PORT`).
# Without any of these, job_init exits with status 1 and names the package
# to install. A failed connection is retried with a growing pause, for up to
# DONKEYLABS_RETRY_SECONDS (default 30) for started, completed and failed,
# and 3 attempts for other messages. The pipe is not retried.
#
# Cancellation: the server sends SIGTERM to the job's process group, so the
# script, its heartbeat subshell and its foreground command all receive it.
# Without a TERM trap, bash (5.2, as tested) exits at once with status 143
# and still runs its EXIT trap. So cleanup can go in an EXIT trap set before
# job_init, which keeps that trap and runs it after its own. To send a last
# message first, trap TERM and exit from the trap:
#
#   workdir=$(mktemp -d)
#   trap 'rm -rf "$workdir"' EXIT          # before job_init
#   job_init
#   trap 'job_warn "cancelled"; exit 143' TERM
#
# Bash runs a TERM trap only after the current foreground command returns.
# That command got the same SIGTERM and usually ends at once, but one that
# ignores it delays the trap until the server sends SIGKILL. Run such
# commands as `cmd & wait $!`, because `wait` returns as soon as the signal
# arrives. Shell jobs cannot receive the server's cancel message, so they do
# not announce protocol 2 and are cancelled by SIGTERM straight away.
#
# Written for bash 4.2 or newer and tested with bash 5.2.

if [[ -n ${_DONKEYLABS_JOB_SH_LOADED:-} ]]; then
    return 0
fi
_DONKEYLABS_JOB_SH_LOADED=1

_JOB_INITIALISED=
_JOB_FINISHED=
_JOB_TRANSPORT=
_JOB_ID_JSON=
_JOB_HEARTBEAT_PID=
_JOB_ALIVE_FD=
_JOB_PREVIOUS_EXIT_TRAP=
_JOB_OWN_LOCK=
# Seconds to keep retrying a failed connection for important messages.
: "${DONKEYLABS_RETRY_SECONDS:=30}"

# Control characters other than \n, \r and \t, and their \u00XX escapes.
_JOB_CTRL_CHARS=()
_JOB_CTRL_ESCAPES=()
_job_build_escape_table() {
    local code hex char
    for ((code = 1; code < 32; code++)); do
        case $code in 9 | 10 | 13) continue ;; esac
        printf -v hex '%02x' "$code"
        printf -v char "\\x$hex"
        _JOB_CTRL_CHARS+=("$char")
        _JOB_CTRL_ESCAPES+=("\\u00$hex")
    done
}
_job_build_escape_table
unset -f _job_build_escape_table

# One or more valid UTF-8 sequences (RFC 3629: no overlongs, no surrogates,
# nothing above U+10FFFF), matched byte-wise in the C locale.
_JOB_UTF8_RUN=$'^([\x01-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf][\x80-\xbf]|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf][\x80-\xbf]|[\xf1-\xf3][\x80-\xbf][\x80-\xbf][\x80-\xbf]|\xf4[\x80-\x8f][\x80-\xbf][\x80-\xbf])+'
_JOB_UTF8_ALL="${_JOB_UTF8_RUN}\$"
_JOB_REPLACEMENT_CHAR=$'\xef\xbf\xbd'

_job_warn() {
    printf 'donkeylabs-job.sh: %s\n' "$*" >&2
}

# Escape $1 for use inside a JSON string and store the result in _JOB_ESCAPED.
_job_json_escape() {
    local LC_ALL=C
    local text=$1 i

    text=${text//"\\"/"\\\\"}
    text=${text//'"'/'\"'}
    if [[ $text == *[$'\x01'-$'\x1f']* ]]; then
        text=${text//$'\n'/'\n'}
        text=${text//$'\r'/'\r'}
        text=${text//$'\t'/'\t'}
        if [[ $text == *[$'\x01'-$'\x1f']* ]]; then
            for i in "${!_JOB_CTRL_CHARS[@]}"; do
                text=${text//"${_JOB_CTRL_CHARS[i]}"/"${_JOB_CTRL_ESCAPES[i]}"}
            done
        fi
    fi
    if [[ $text == *[$'\x80'-$'\xff']* && ! $text =~ $_JOB_UTF8_ALL ]]; then
        _job_replace_invalid_utf8 "$text"
        text=$_JOB_ESCAPED
    fi
    _JOB_ESCAPED=$text
}

# Copy $1 to _JOB_ESCAPED with each byte that does not start a valid UTF-8
# sequence replaced by U+FFFD. Runs only for text that has such bytes.
_job_replace_invalid_utf8() {
    local LC_ALL=C
    local rest=$1 output=

    while [[ -n $rest ]]; do
        if [[ $rest =~ $_JOB_UTF8_RUN ]]; then
            output+=${BASH_REMATCH[0]}
            rest=${rest:${#BASH_REMATCH[0]}}
        else
            output+=$_JOB_REPLACEMENT_CHAR
            rest=${rest:1}
        fi
    done
    _JOB_ESCAPED=$output
}

job_json_quote() {
    _job_json_escape "${1-}"
    if [[ -n ${2-} ]]; then
        printf -v "$2" '"%s"' "$_JOB_ESCAPED"
    else
        printf '"%s"\n' "$_JOB_ESCAPED"
    fi
}

# Milliseconds since the Unix epoch, in _JOB_NOW_MS.
_job_now_ms() {
    local now
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        # EPOCHREALTIME (bash 5) contains seconds with six decimals, and its
        # decimal separator follows the locale.
        now=${EPOCHREALTIME/[.,]/}
        _JOB_NOW_MS=${now:0:${#now}-3}
    else
        printf -v now '%(%s)T' -1
        _JOB_NOW_MS=${now}000
    fi
}

# Choose how messages reach the server, or exit with status 1 when no
# transport is available.
_job_select_transport() {
    if [[ -n $_JOB_TRANSPORT ]]; then
        return 0
    fi
    if [[ -n ${BURRO_MESSAGE_FD:-} ]]; then
        if [[ ! $BURRO_MESSAGE_FD =~ ^[0-9]+$ ]] || ! { true >&"$BURRO_MESSAGE_FD"; } 2>/dev/null; then
            _job_warn "BURRO_MESSAGE_FD=$BURRO_MESSAGE_FD is not an open file descriptor; using the socket instead"
        elif ! command -v flock >/dev/null 2>&1; then
            _job_warn "flock (util-linux) is missing, so BURRO_MESSAGE_FD cannot be shared safely; using the socket instead"
        else
            _job_prepare_lock_file || exit 1
            _JOB_TRANSPORT=fd
            return 0
        fi
    fi

    if [[ -z ${DONKEYLABS_SOCKET_PATH:-} && -z ${DONKEYLABS_TCP_PORT:-} ]]; then
        _job_warn "no server address: DONKEYLABS_SOCKET_PATH and DONKEYLABS_TCP_PORT are both empty"
        exit 1
    fi
    if command -v socat >/dev/null 2>&1; then
        _JOB_TRANSPORT=socat
        if [[ -n ${DONKEYLABS_SOCKET_PATH:-} ]]; then
            _job_socat_escape "$DONKEYLABS_SOCKET_PATH"
            _JOB_SOCAT_ADDRESS="UNIX-CONNECT:$_JOB_ESCAPED"
        else
            _JOB_SOCAT_ADDRESS="TCP:127.0.0.1:$DONKEYLABS_TCP_PORT"
        fi
    elif command -v nc >/dev/null 2>&1; then
        _JOB_TRANSPORT=nc
        if [[ -n ${DONKEYLABS_SOCKET_PATH:-} ]]; then
            _JOB_NC_ARGS=(-N -U "$DONKEYLABS_SOCKET_PATH")
        else
            _JOB_NC_ARGS=(-N 127.0.0.1 "$DONKEYLABS_TCP_PORT")
        fi
    else
        _job_warn "cannot send messages to the server: install socat (or netcat-openbsd for 'nc -N'), or run under burro with BURRO_MESSAGE_FD and flock"
        exit 1
    fi
}

# socat splits addresses at ':' and ',' and treats a few other characters
# specially. A backslash makes them literal (checked with socat 1.7.4).
_job_socat_escape() {
    local text=$1 char
    for char in '\' ',' ':' '!' '"' "'" '(' ')' '[' ']' '{' '}'; do
        text=${text//"$char"/"\\$char"}
    done
    _JOB_ESCAPED=$text
}

_job_prepare_lock_file() {
    if [[ -n ${DONKEYLABS_JOB_LOCK:-} ]]; then
        return 0
    fi
    DONKEYLABS_JOB_LOCK=$(mktemp "${TMPDIR:-/tmp}/donkeylabs-job.XXXXXXXX") || {
        _job_warn "cannot create a lock file in ${TMPDIR:-/tmp}"
        return 1
    }
    # Exported so that helper scripts which source this library share the lock.
    export DONKEYLABS_JOB_LOCK
    _JOB_OWN_LOCK=$BASHPID
}

# Deliver one line ($1, without newline) in one attempt, returning non-zero
# on failure.
_job_deliver_once() {
    case $_JOB_TRANSPORT in
        fd)
            # cat, not the shell, writes to the pipe, so a closed pipe kills
            # cat with SIGPIPE instead of the job.
            flock "$DONKEYLABS_JOB_LOCK" cat <<<"$1" >&"$BURRO_MESSAGE_FD"
            ;;
        socat)
            socat -u - "$_JOB_SOCAT_ADDRESS" <<<"$1"
            ;;
        nc)
            nc "${_JOB_NC_ARGS[@]}" <<<"$1" >/dev/null
            ;;
    esac
}

# Deliver line $1 of message type $2, retrying a failed connection.
_job_deliver() {
    local line=$1 type=$2 attempts=3 pause=0.1 deadline

    if _job_deliver_once "$line"; then
        return 0
    fi
    if [[ $_JOB_TRANSPORT == fd ]]; then
        _job_warn "could not write $type to BURRO_MESSAGE_FD=$BURRO_MESSAGE_FD"
        return 1
    fi

    case $type in
        started | completed | failed) deadline=$((SECONDS + DONKEYLABS_RETRY_SECONDS)) ;;
        *) deadline= ;;
    esac
    while :; do
        if [[ -n $deadline ]]; then
            ((SECONDS < deadline)) || break
        else
            ((--attempts > 0)) || break
        fi
        sleep "$pause"
        if _job_deliver_once "$line" 2>/dev/null; then
            return 0
        fi
        case $pause in
            0.1) pause=0.2 ;;
            0.2) pause=0.5 ;;
            *) pause=1 ;;
        esac
    done
    _job_warn "could not deliver $type to the server; the message was dropped"
    return 1
}

# Build and send one message: $1 is the type, $2 the extra fields, each
# starting with a comma.
_job_send() {
    if [[ -n $_JOB_FINISHED ]]; then
        return 0
    fi
    _job_select_transport
    if [[ -z $_JOB_ID_JSON ]]; then
        job_json_quote "${DONKEYLABS_JOB_ID:-}" _JOB_ID_JSON
    fi
    _job_now_ms
    _job_deliver "{\"type\":\"$1\",\"jobId\":$_JOB_ID_JSON,\"timestamp\":$_JOB_NOW_MS${2-}}" "$1"
}

# Parse the payload line $1: set DONKEYLABS_JOB_DATA, and the job id, name
# and address where the environment leaves them empty.
_job_parse_payload() {
    local LC_ALL=C
    local payload=$1 head_pattern tail_pattern rest body tail

    # The server writes the fields in the fixed order jobId, name, data,
    # socketPath with no spaces, and ids, names and socket paths contain no
    # quotes or backslashes. So data is everything between the "data": key
    # and the last ,"socketPath":" in the line, which cannot occur inside
    # socketPath's own value. This keeps the bytes exactly as enqueued and
    # needs no other program.
    head_pattern='^\{"jobId":"([^"\\]*)","name":"([^"\\]*)","data":'
    tail_pattern='^,"socketPath":"([^"\\]*)"\}[[:space:]]*$'
    if [[ $payload =~ $head_pattern ]]; then
        : "${DONKEYLABS_JOB_ID:=${BASH_REMATCH[1]}}"
        : "${DONKEYLABS_JOB_NAME:=${BASH_REMATCH[2]}}"
        rest=${payload:${#BASH_REMATCH[0]}}
        body=${rest%,\"socketPath\":\"*}
        tail=${rest:${#body}}
        if [[ $body != "$rest" && $tail =~ $tail_pattern ]]; then
            _job_set_address "${BASH_REMATCH[1]}"
            DONKEYLABS_JOB_DATA=$body
            return 0
        fi
    fi

    # For any other layout, only data is taken from the payload. The id, name
    # and address come from the environment, which the server always sets.
    if command -v jq >/dev/null 2>&1; then
        DONKEYLABS_JOB_DATA=$(jq -c '.data' <<<"$payload") && return 0
    elif command -v python3 >/dev/null 2>&1; then
        DONKEYLABS_JOB_DATA=$(python3 -c 'import json, sys
print(json.dumps(json.loads(sys.stdin.read()).get("data"), ensure_ascii=False, separators=(",", ":")))' <<<"$payload") && return 0
    else
        _job_warn "cannot parse the job payload: install jq (or python3)"
        return 1
    fi
    _job_warn "the job payload is not valid JSON"
    return 1
}

# Use the payload's socketPath $1 when the environment names no address.
_job_set_address() {
    if [[ -n ${DONKEYLABS_SOCKET_PATH:-} || -n ${DONKEYLABS_TCP_PORT:-} ]]; then
        return 0
    fi
    if [[ $1 =~ ^tcp://[^:]*:([0-9]+)$ ]]; then
        DONKEYLABS_TCP_PORT=${BASH_REMATCH[1]}
    else
        DONKEYLABS_SOCKET_PATH=$1
    fi
}

job_init() {
    local interval=${1:-5} payload=

    if [[ -n $_JOB_INITIALISED ]]; then
        return 0
    fi
    if [[ ! $interval =~ ^[0-9]*\.?[0-9]+$ || $interval =~ ^[0.]+$ ]]; then
        _job_warn "job_init: invalid heartbeat interval '$interval': expected a positive number of seconds"
        exit 1
    fi

    if ! IFS= read -r payload && [[ -z $payload ]]; then
        _job_warn "no job payload on standard input (expected one JSON line)"
        exit 1
    fi
    payload=${payload%$'\r'}
    _job_parse_payload "$payload" || exit 1
    if [[ -z ${DONKEYLABS_JOB_ID:-} ]]; then
        _job_warn "no job id: DONKEYLABS_JOB_ID is empty"
        exit 1
    fi

    _job_select_transport
    _JOB_INITIALISED=1
    _job_send started

    _job_start_heartbeat "$interval"
    local previous_trap
    previous_trap=$(trap -p EXIT)
    if [[ -n $previous_trap ]]; then
        eval "_job_store_previous_trap ${previous_trap#trap }"
    fi
    trap _job_on_exit EXIT
}

_job_store_previous_trap() {
    # Called as: _job_store_previous_trap -- 'COMMAND' EXIT
    _JOB_PREVIOUS_EXIT_TRAP=$2
}

_job_start_heartbeat() {
    local interval=$1 parent=$BASHPID
    # An anonymous pipe that no process writes to. The subshell waits on it with
    # `read -t`, which needs no sleep process, so killing the subshell
    # leaves nothing behind. This shell keeps a read-write descriptor to it
    # open, and the subshell reads through a read-only one, so the read ends
    # with EOF as soon as this shell (and every child that inherited the
    # descriptor) has exited, even if the EXIT trap never ran.
    { exec {_JOB_ALIVE_FD}<> <(:); } 2>/dev/null || _JOB_ALIVE_FD=
    (
        wait_fd=
        if [[ -n $_JOB_ALIVE_FD ]]; then
            if { exec {wait_fd}<"/proc/self/fd/$_JOB_ALIVE_FD"; } 2>/dev/null; then
                exec {_JOB_ALIVE_FD}>&-
            else
                wait_fd=$_JOB_ALIVE_FD
            fi
        fi
        while :; do
            if [[ -n $wait_fd ]]; then
                # read returns a status above 128 on timeout and 1 at EOF.
                read -r -t "$interval" -u "$wait_fd" _ && status=0 || status=$?
                ((status > 128)) || break
            else
                sleep "$interval" || true
            fi
            kill -0 "$parent" 2>/dev/null || break
            _job_send heartbeat || true
        done
    ) </dev/null &
    _JOB_HEARTBEAT_PID=$!
}

job_cleanup() {
    if [[ -n $_JOB_HEARTBEAT_PID ]]; then
        kill "$_JOB_HEARTBEAT_PID" 2>/dev/null || true
        wait "$_JOB_HEARTBEAT_PID" 2>/dev/null || true
        _JOB_HEARTBEAT_PID=
    fi
    if [[ -n $_JOB_OWN_LOCK && $_JOB_OWN_LOCK == "$BASHPID" ]]; then
        rm -f "$DONKEYLABS_JOB_LOCK"
        _JOB_OWN_LOCK=
    fi
    return 0
}

_job_on_exit() {
    local status=$?
    job_cleanup
    if [[ -n $_JOB_PREVIOUS_EXIT_TRAP ]]; then
        eval "$_JOB_PREVIOUS_EXIT_TRAP"
    fi
    return "$status"
}

job_progress() {
    if (($# < 1 || $# > 2)); then
        _job_warn "usage: job_progress PERCENT [MESSAGE]"
        return 2
    fi
    local percent=$1 fields
    if [[ ! $percent =~ ^([+-]?)0*([0-9]+)(\.[0-9]+)?([eE][+-]?[0-9]+)?$ ]]; then
        _job_warn "job_progress: invalid percent '$percent': expected a number from 0 to 100"
        return 2
    fi
    # JSON allows no leading zeros or plus sign.
    percent=${BASH_REMATCH[2]}${BASH_REMATCH[3]}${BASH_REMATCH[4]}
    if [[ ${BASH_REMATCH[1]} == - ]]; then
        percent=-$percent
    fi
    fields=",\"percent\":$percent"
    if (($# == 2)); then
        _job_json_escape "$2"
        fields+=",\"message\":\"$_JOB_ESCAPED\""
    fi
    _job_send progress "$fields"
}

job_log() {
    if (($# != 2)); then
        _job_warn "usage: job_log LEVEL MESSAGE"
        return 2
    fi
    local level=$1
    case $level in
        debug | info | warn | error) ;;
        warning) level=warn ;;
        *)
            _job_warn "job_log: invalid level '$level': expected debug, info, warn or error"
            return 2
            ;;
    esac
    _job_json_escape "$2"
    _job_send log ",\"level\":\"$level\",\"message\":\"$_JOB_ESCAPED\""
}

job_debug() { job_log debug "$*"; }
job_info() { job_log info "$*"; }
job_warn() { job_log warn "$*"; }
job_error() { job_log error "$*"; }

job_complete() {
    local result=${1:-null}
    # A line break outside a JSON string is whitespace, and one inside a
    # string is invalid anyway, so spaces keep the message on one line.
    result=${result//$'\n'/ }
    result=${result//$'\r'/ }
    _job_send completed ",\"result\":$result"
    _JOB_FINISHED=1
    exit 0
}

job_fail() {
    _job_json_escape "${1:-job failed}"
    _job_send failed ",\"error\":\"$_JOB_ESCAPED\""
    _JOB_FINISHED=1
    exit 1
}

# jq subset for job_data_get when jq is missing: paths (.a.b[0], ."key",
# .["key"], .[-1]) combined with //, and JSON literals as defaults.
_JOB_PY_FILTER='import json, re, sys

def fail(message, status):
    sys.stderr.write("job_data_get: " + message + "\n")
    sys.exit(status)

source = sys.argv[1]
data = json.loads(sys.stdin.read() or "null")
decoder = json.JSONDecoder()
identifier = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
position = 0

def skip_spaces():
    global position
    while position < len(source) and source[position].isspace():
        position += 1

def unsupported():
    fail("unsupported filter %r at offset %d; the python3 fallback handles paths such as .a.b[0] and // defaults, install jq for the rest" % (source, position), 3)

def index(value, key):
    if value is None:
        return None
    if isinstance(key, str) and isinstance(value, dict):
        return value.get(key)
    if isinstance(key, int) and isinstance(value, list):
        return value[key] if -len(value) <= key < len(value) else None
    fail("cannot index %s with %s" % (type(value).__name__, json.dumps(key)), 5)

def parse_path():
    global position
    value = data
    position += 1
    expect_segment = False
    while position < len(source):
        char = source[position]
        match = identifier.match(source, position)
        if match and source[position - 1] == ".":
            value = index(value, match.group())
            position = match.end()
        elif char == "\"" and source[position - 1] == ".":
            key, position = decoder.raw_decode(source, position)
            value = index(value, key)
        elif char == "[":
            key, position = decoder.raw_decode(source, position + 1)
            if not isinstance(key, (str, int)) or isinstance(key, bool) or source[position:position + 1] != "]":
                unsupported()
            position += 1
            value = index(value, key)
        elif char == "." and not expect_segment:
            position += 1
            expect_segment = True
            continue
        else:
            break
        expect_segment = False
    if expect_segment:
        unsupported()
    return value

def parse_term():
    global position
    skip_spaces()
    if source.startswith(".", position):
        return parse_path()
    try:
        value, position = decoder.raw_decode(source, position)
    except ValueError:
        unsupported()
    return value

try:
    result = parse_term()
    skip_spaces()
    while source.startswith("//", position):
        position += 2
        alternative = parse_term()
        if result is None or result is False:
            result = alternative
        skip_spaces()
except ValueError:
    unsupported()
if position != len(source):
    unsupported()
if isinstance(result, str):
    print(result)
else:
    print(json.dumps(result, ensure_ascii=False, separators=(",", ":")))
'

job_data_get() {
    if (($# != 1)); then
        _job_warn "usage: job_data_get FILTER"
        return 2
    fi
    local data=${DONKEYLABS_JOB_DATA:-null}
    if command -v jq >/dev/null 2>&1; then
        jq -r -c "$1" <<<"$data"
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c "$_JOB_PY_FILTER" "$1" <<<"$data"
    else
        _job_warn "job_data_get needs jq: install jq (or python3)"
        return 127
    fi
}
