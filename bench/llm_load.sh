#!/bin/sh
# llm_load.sh — 5,000 concurrent conversations through kokod's gemini backend
# (`make bench-llm`; never run by `make check`).
#
# Starts a fake Gemini that answers every generateContent after 1 s
# (`llm_load fake`, in C; LLM_FAKE=python uses tests/fakes/fake_gemini.py with
# a delay_ms fault instead, to show what the Python fake can hold), kokod with
# the demo tenant on [gemini, fallback] (context cache on), warms the cache with
# one question, then `llm_load drive` opens 5,000 connections at once, each
# sending one POST /api/chat of its own conversation. Printed: wall time
# (target < 2.5 s), kokod's peak RSS VmHWM (target < 100 MiB), kokod's threads
# (target: one event-loop thread; the SQLite store adds one worker), each with
# PASS/MISS. Exits 0 unless something cannot start.
#
# Environment (bench/bench.am): KOKOD, FALLBACK_DIR, GEMINI_DIR, LLM_LOAD,
# KOKO_SRCDIR; knobs: LLM_CONVERSATIONS (5000), LLM_DELAY_MS (1000), LLM_FAKE (c|python),
# LLM_HTTP (1: the model server speaks plain HTTP/1.1, a connection per call in flight;
# 2: HTTPS with HTTP/2 as Gemini does, LLM_STREAMS (100) calls at most per connection —
# with Debian 12's libcurl 7.88 every call beyond the first connection's share opens a
# connection of its own (curl PR #10456, fixed in 8.0), see bench/README.md; "2 1" runs
# both; the Python fake: 1 only).

set -u
. "$(dirname "$0")/lib.sh"  # stop_pid, wait_port, median, ratio, json_num

: "${KOKO_SRCDIR:=.}"
: "${KOKO_BUILDDIR:=.}"
: "${KOKOD:=$KOKO_BUILDDIR/kokod}"
: "${FALLBACK_DIR:=$KOKO_BUILDDIR/plugins/fallback/.libs}"
: "${GEMINI_DIR:=$KOKO_BUILDDIR/plugins/gemini/.libs}"
: "${LLM_LOAD:=$KOKO_BUILDDIR/bench/llm_load}"
: "${LLM_CONVERSATIONS:=5000}"
: "${LLM_DELAY_MS:=1000}"
: "${LLM_FAKE:=c}"
: "${LLM_HTTP:=1}"
: "${LLM_STREAMS:=100}"

WALL_TARGET_MS=2500
HWM_TARGET_KIB=102400
unset KOKO_API_TOKEN KOKO_PLUGIN_PATH KOKO_LISTEN KOKO_STATE_DIR KOKO_BASE_DIR

FAKE_PID=
KOKOD_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/koko-llm-load.XXXXXX") || exit 1

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup()
{
    stop_pid "$KOKOD_PID"
    stop_pid "$FAKE_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

wait_line() # FILE REGEX: wait up to 10 s for a line; prints the first match
{
    i=0
    while [ $i -lt 200 ]; do
        m=$(grep -m1 -oE "$2" "$1" 2>/dev/null) && { echo "$m"; return 0; }
        sleep 0.05
        i=$((i + 1))
    done
    return 1
}

# 5,000 inbound and as many outbound sockets, plus files
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null

# run_one PROTO: the whole run against a fresh fake and a fresh kokod, the model
# server speaking HTTP/PROTO (2: HTTPS with HTTP/2, up to 100 calls per
# connection, as Gemini; 1: plain HTTP/1.1, one connection per call in flight)
run_one()
{
    proto=$1
    if [ "$LLM_FAKE" = python ]; then
        python3 -B "$KOKO_SRCDIR/tests/fakes/fake_gemini.py" --port 0 --key bench-key >"$TMP/fake.out" 2>&1 &
    elif [ "$proto" = 2 ]; then
        "$LLM_LOAD" fake -2 -c "$TMP/fake.pem" -s "$LLM_STREAMS" -d "$LLM_DELAY_MS" >"$TMP/fake.out" 2>&1 &
    else
        "$LLM_LOAD" fake -d "$LLM_DELAY_MS" >"$TMP/fake.out" 2>&1 &
    fi
    FAKE_PID=$!
    FAKE_URL=$(wait_line "$TMP/fake.out" 'https?://127\.0\.0\.1:[0-9]+') || {
        echo "the fake Gemini did not start:"; cat "$TMP/fake.out"; exit 1; }
    # HTTPS: kokod trusts the fake's certificate (made for 127.0.0.1 at its start) through ca_file
    if [ "$proto" = 2 ]; then ca_line="ca_file: \"$TMP/fake.pem\""; curl_ca="--cacert $TMP/fake.pem"; else ca_line=; curl_ca=; fi

    cat >"$TMP/koko.yaml" <<EOF
base_dir: "$KOKO_SRCDIR"
server: {listen: "127.0.0.1:0", control: "$TMP/kokod.sock", drain_timeout_ms: 5000}
state: {dir: "$TMP/state-$proto"}
log: {level: warn}
tenants:
  demo:
    languages: [hu, en]
    kb: [kb/_global, kb/demo]
    memory: memory/demo
    llm: [gemini, fallback]
    backends:
      gemini:
        api_key: bench-key
        base_url: "$FAKE_URL"
        timeout_ms: 60000
        $ca_line
        prices: {gemini-2.5-flash: {input: 0.30, cached_input: 0.03, output: 2.50, cache_storage_per_hour: 1.00}}
      fallback: {min_score: 1.0, min_coverage: 0.45}
    handoff: {min_confidence: 0.0}
EOF
    "$KOKOD" -c "$TMP/koko.yaml" -P "$FALLBACK_DIR" -P "$GEMINI_DIR" -l info >"$TMP/kokod.log" 2>&1 &
    KOKOD_PID=$!
    KOKO_URL=$(wait_line "$TMP/kokod.log" 'listening on http://127\.0\.0\.1:[0-9]+') || {
        echo "kokod did not start:"; cat "$TMP/kokod.log"; exit 1; }
    KOKO_URL=${KOKO_URL#listening on }

    # the context cache is created by the first question; the load then runs on it
    if [ "$LLM_FAKE" = python ]; then
        # every generateContent from now on waits LLM_DELAY_MS
        curl -s -o /dev/null -X POST -H 'Content-Type: application/json' \
            -d "{\"path_regex\":\"generateContent\",\"delay_ms\":$LLM_DELAY_MS,\"count\":1000000}" "$FAKE_URL/_faults"
    fi
    curl -s -o /dev/null -X POST -H 'Content-Type: application/json' \
        -d '{"tenant":"demo","message":"warm up","language":"en"}' "$KOKO_URL/api/chat"

    if [ "$proto" = 2 ]; then what="HTTPS with HTTP/2, as Gemini serves it"; else what="plain HTTP/1.1, a connection per call"; fi
    echo "== 7. $LLM_CONVERSATIONS concurrent conversations, gemini answering after $LLM_DELAY_MS ms ($LLM_FAKE fake, $what)"
    echo "   kokod threads at rest: $(ls /proc/$KOKOD_PID/task | wc -l) ($(for t in /proc/$KOKOD_PID/task/*; do cat "$t/comm"; done | tr '\n' ' '))"
    "$LLM_LOAD" drive -u "$KOKO_URL" -n "$LLM_CONVERSATIONS" -P "$KOKOD_PID" -T 120 >"$TMP/drive.out" 2>&1
    sed -e '/^RESULT/d' -e 's/^/   /' "$TMP/drive.out"
    kill -0 "$KOKOD_PID" 2>/dev/null || { echo "kokod died during the run:"; tail -20 "$TMP/kokod.log"; exit 1; }
    if [ "$LLM_FAKE" = c ]; then
        # shellcheck disable=SC2086 # curl_ca is one option and its file, or nothing
        echo "   fake: $(curl -s $curl_ca "$FAKE_URL/_stats")"
    fi
    res=$(grep '^RESULT' "$TMP/drive.out") || { echo "the driver failed"; exit 1; }
    val() { echo "$res" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    wall=$(val wall_ms); ok=$(val ok); n=$(val n); hwm=$(val hwm_kib); threads=$(val threads)
    verdict() { if [ "$1" = 1 ]; then echo PASS; else echo MISS; fi; }
    echo "   wall $wall ms for $ok/$n answers   target < $WALL_TARGET_MS ms, all answered   $(verdict "$([ "$wall" -lt $WALL_TARGET_MS ] && [ "$ok" -eq "$n" ] && echo 1)")"
    echo "   kokod peak RSS (VmHWM) $hwm KiB   target < $HWM_TARGET_KIB KiB   $(verdict "$([ "$hwm" -lt $HWM_TARGET_KIB ] && echo 1)")"
    echo "   kokod threads (max seen) $threads: the event loop + the SQLite store's worker   target: one event-loop thread   $(verdict "$([ "$threads" -le 2 ] && echo 1)")"
    warns=$(grep -c 'WARN\|ERROR' "$TMP/kokod.log")
    echo "   kokod log: $warns warning/error lines$( [ "$warns" -gt 0 ] && printf '; first: %s' "$(grep -m1 'WARN\|ERROR' "$TMP/kokod.log" | cut -c1-200)")"
    stop_pid "$KOKOD_PID"
    stop_pid "$FAKE_PID"
    KOKOD_PID=
    FAKE_PID=
}

[ "$LLM_FAKE" = python ] && LLM_HTTP=1
for proto in $LLM_HTTP; do
    case $proto in
    1 | 2) run_one "$proto" ;;
    *) echo "LLM_HTTP: $proto is not 1 or 2"; exit 1 ;;
    esac
    echo
done
exit 0
