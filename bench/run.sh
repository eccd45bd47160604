#!/bin/sh
# run.sh — kokod's benchmarks, run by `make bench` (never by `make check`).
#
# Starts kokod (demo config etc/koko.yaml, the built fallback plugin, its own temp
# state dir and control socket, a free loopback port) and bench/bare_evhttp (the
# ceiling: same libevent, one thread, same /health bytes), then measures with wrk,
# alternating the servers round by round and reporting medians:
#   1. GET /health requests/s, kokod / bare            (target: ratio >= 0.8)
#   2. kokod's idle VmRSS after start and a few requests (target: < 8 MiB)
#   3. POST /api/chat requests/s (bench/chat.lua), as a ratio to the /health ceiling
#   4. bench_kb: KB build time/memory for 10 MiB, retrieval p50/p99
# A missed target prints MISS but the script still exits 0: it is a report. It exits 1
# only when a benchmark cannot run at all (a server does not start).
#
# Environment (set by bench/bench.am): KOKOD, FALLBACK_DIR, BARE_EVHTTP, BENCH_KB,
# KOKO_SRCDIR; knobs: BENCH_DURATION (5s), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32),
# BENCH_THREADS (1).

set -u
. "$(dirname "$0")/lib.sh"  # stop_pid, wait_port, median, ratio, json_num

: "${KOKO_SRCDIR:=.}"
: "${KOKO_BUILDDIR:=.}"
: "${KOKOD:=$KOKO_BUILDDIR/kokod}"
: "${FALLBACK_DIR:=$KOKO_BUILDDIR/plugins/fallback/.libs}"
: "${BARE_EVHTTP:=$KOKO_BUILDDIR/bench/bare_evhttp}"
: "${BENCH_KB:=$KOKO_BUILDDIR/bench/bench_kb}"
: "${BENCH_DURATION:=5s}"
: "${BENCH_ROUNDS:=3}"
: "${BENCH_CONNECTIONS:=32}"
: "${BENCH_THREADS:=1}"

HEALTH_TARGET=0.8
RSS_TARGET_KIB=8192
# the demo configuration runs without a token; a token from the caller's shell would 401 every chat request
unset KOKO_API_TOKEN KOKO_PLUGIN_PATH KOKO_LISTEN KOKO_STATE_DIR KOKO_BASE_DIR

KOKOD_PID=
BARE_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/koko-bench.XXXXXX") || exit 1

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup()
{
    stop_pid "$KOKOD_PID"
    stop_pid "$BARE_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die()
{
    echo "bench: $*" >&2
    exit 1
}

# wait_port FILE: wait (10 s at most) for "listening on http://HOST:PORT" in FILE, print PORT
# status PID FIELD: a /proc/PID/status figure in KiB (VmRSS, VmHWM, RssAnon, RssFile)
status()
{
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null
}

# check_alive NAME PID LOG: a server that died under load ends the run with its status and log
check_alive()
{
    kill -0 "$2" 2>/dev/null && return 0
    wait "$2"
    st=$?
    echo "bench: $1 (pid $2) died during the run, exit status $st$([ $st -gt 128 ] && echo " (signal $((st - 128)))"); its log:" >&2
    tail -n 20 "$3" | sed 's/^/    /' >&2
    [ "$1" = kokod ] && KOKOD_PID= || BARE_PID=
    die "no figures: a server died"
}

verdict_ge() { awk -v a="$1" -v t="$2" 'BEGIN { print (a != "n/a" && a >= t) ? "PASS" : "MISS" }'; }

# bench_wrk NAME URL [LUA]: one wrk run; prints requests/s, keeps wrk's output in $TMP/NAME.wrk
bench_wrk()
{
    out="$TMP/$1.wrk"
    if [ -n "${3:-}" ]; then
        wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION" -s "$3" "$2" >"$out" 2>&1
    else
        wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION" "$2" >"$out" 2>&1
    fi
    bad=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$out")
    if [ -n "$bad" ]; then
        echo "bench: WARNING: $1: $bad non-2xx responses (see below); its rate is not comparable" >&2
        sed 's/^/    /' "$out" >&2
    fi
    grep -q 'Socket errors' "$out" && echo "bench: note: $1: $(grep 'Socket errors' "$out" | sed 's/^ *//')" >&2
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    echo "${rps:-0}"
}

# ---- KB benchmark first: it needs no server and its figures do not depend on wrk
kb_report()
{
    echo "== 4. knowledge base (bench_kb: demo KB and a generated 10 MiB KB, 10,000 queries each)"
    if [ -x "$BENCH_KB" ]; then
        KOKO_SRCDIR="$KOKO_SRCDIR" "$BENCH_KB" 2>&1 | sed 's/^/   /'
    else
        echo "   bench_kb not built ($BENCH_KB): run \`make bench\`"
    fi
}

echo "kokod benchmarks — $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -m), $(nproc 2>/dev/null || echo '?') CPUs, \
wrk -t$BENCH_THREADS -c$BENCH_CONNECTIONS -d$BENCH_DURATION, $BENCH_ROUNDS alternating rounds, medians"
echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

if ! command -v wrk >/dev/null 2>&1; then
    echo "== 1-3. HTTP benchmarks SKIPPED: wrk is not installed (Debian package \`wrk\`)"
    echo
    kb_report
    exit 0
fi
[ -x "$KOKOD" ] || die "no kokod at $KOKOD: run \`make bench\` from the build directory"
[ -f "$FALLBACK_DIR/fallback.so" ] || die "no fallback plugin in $FALLBACK_DIR: run \`make bench\`"
[ -x "$BARE_EVHTTP" ] || die "no bare_evhttp at $BARE_EVHTTP: run \`make bench\`"

# ---- kokod: the demo configuration with its own control socket and state dir
sed "s|^\( *control:\).*|\1 \"$TMP/kokod.sock\"|" "$KOKO_SRCDIR/etc/koko.yaml" >"$TMP/koko.yaml"
KOKO_BASE_DIR="$KOKO_SRCDIR" KOKO_STATE_DIR="$TMP/state" KOKO_LISTEN=127.0.0.1:0 \
    "$KOKOD" -c "$TMP/koko.yaml" -P "$FALLBACK_DIR" >"$TMP/kokod.log" 2>&1 &
KOKOD_PID=$!
KPORT=$(wait_port "$TMP/kokod.log") || { cat "$TMP/kokod.log" >&2; die "kokod did not start"; }
KURL="http://127.0.0.1:$KPORT"

# a few requests, then the idle footprint
HEALTH_BODY="$TMP/health.json"
if command -v curl >/dev/null 2>&1; then
    for q in "Mennyibe kerül a kiszállás?" "What are your opening hours?" "Hogyan foglalhatok időpontot?" \
        "How much is the call-out fee?"; do
        curl -sf -o /dev/null -H 'Content-Type: application/json' \
            -d "{\"tenant\":\"demo\",\"message\":\"$q\"}" "$KURL/api/chat" ||
            echo "bench: WARNING: POST /api/chat failed before the run" >&2
    done
    curl -sf -o /dev/null "$KURL/health"
    curl -sf -o "$HEALTH_BODY" "$KURL/health" || die "GET $KURL/health failed"
else
    echo "bench: note: curl missing; warming up with wrk -c1 -d1s and the built-in /health body" >&2
    wrk -t1 -c1 -d1s "$KURL/health" >/dev/null 2>&1
    wrk -t1 -c1 -d1s -s "$KOKO_SRCDIR/bench/chat.lua" "$KURL" >/dev/null 2>&1
    HEALTH_BODY=
fi
sleep 0.2
K_RSS=$(status $KOKOD_PID VmRSS)
K_ANON=$(status $KOKOD_PID RssAnon)
K_FILE=$(status $KOKOD_PID RssFile)
K_PSS=$(awk '$1 == "Pss:" { print $2 }' "/proc/$KOKOD_PID/smaps_rollup" 2>/dev/null)
# where the resident pages are: the five largest mappings (a library is the sum of its segments)
K_TOP=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { n = ($6 == "") ? "[anon]" : $6; sub(".*/", "", n) }
             /^Rss:/ { rss[n] += $2 }
             END { for (n in rss) if (rss[n] > 0) print rss[n], n }' "/proc/$KOKOD_PID/smaps" 2>/dev/null |
        sort -rn | head -n 5 | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
K_LIBS=$(awk '/^[0-9a-f]+-[0-9a-f]+ / && $6 ~ /\.so/ { seen[$6] = 1 } END { print length(seen) }' \
    "/proc/$KOKOD_PID/maps" 2>/dev/null)

# ---- the ceiling: the same bytes from a bare evhttp server
if [ -n "$HEALTH_BODY" ]; then
    "$BARE_EVHTTP" -p 0 -b "$HEALTH_BODY" >"$TMP/bare.log" 2>&1 &
else
    "$BARE_EVHTTP" -p 0 >"$TMP/bare.log" 2>&1 &
fi
BARE_PID=$!
BPORT=$(wait_port "$TMP/bare.log") || { cat "$TMP/bare.log" >&2; die "bare_evhttp did not start"; }
BURL="http://127.0.0.1:$BPORT"
curl -sf -o /dev/null "$BURL/health" 2>/dev/null
sleep 0.2
B_RSS=$(status $BARE_PID VmRSS)

# ---- warm-up (not counted), then alternating rounds
wrk -t1 -c"$BENCH_CONNECTIONS" -d1s "$KURL/health" >/dev/null 2>&1
wrk -t1 -c"$BENCH_CONNECTIONS" -d1s "$BURL/health" >/dev/null 2>&1
K_ALL='' B_ALL='' C_ALL=''
r=1
while [ $r -le "$BENCH_ROUNDS" ]; do
    if [ $((r % 2)) -eq 1 ]; then
        k=$(bench_wrk "kokod-health-$r" "$KURL/health")
        b=$(bench_wrk "bare-health-$r" "$BURL/health")
    else
        b=$(bench_wrk "bare-health-$r" "$BURL/health")
        k=$(bench_wrk "kokod-health-$r" "$KURL/health")
    fi
    check_alive bare "$BARE_PID" "$TMP/bare.log"
    check_alive kokod "$KOKOD_PID" "$TMP/kokod.log"
    c=$(bench_wrk "kokod-chat-$r" "$KURL" "$KOKO_SRCDIR/bench/chat.lua")
    check_alive kokod "$KOKOD_PID" "$TMP/kokod.log"
    echo "round $r/$BENCH_ROUNDS: /health kokod $k, bare $b; /api/chat kokod $c (req/s)"
    K_ALL="$K_ALL $k" B_ALL="$B_ALL $b" C_ALL="$C_ALL $c"
    r=$((r + 1))
done
K_HWM=$(status $KOKOD_PID VmHWM)
K_RSS_AFTER=$(status $KOKOD_PID VmRSS)

# shellcheck disable=SC2086 # word splitting of the round lists is intended
K=$(median $K_ALL)
# shellcheck disable=SC2086
B=$(median $B_ALL)
# shellcheck disable=SC2086
C=$(median $C_ALL)
HR=$(ratio "$K" "$B")
CR=$(ratio "$C" "$B")
RSS_VERDICT=$(awk -v a="$K_RSS" -v t="$RSS_TARGET_KIB" 'BEGIN { print (a != "" && a < t) ? "PASS" : "MISS" }')

echo
echo "== 1. GET /health (median of $BENCH_ROUNDS)"
printf '   kokod        %10.0f req/s   (rounds:%s)\n' "$K" "$K_ALL"
printf '   bare evhttp  %10.0f req/s   (rounds:%s)\n' "$B" "$B_ALL"
echo "   ratio kokod/bare = $HR   target >= $HEALTH_TARGET   $(verdict_ge "$HR" "$HEALTH_TARGET")"
echo
echo "== 2. kokod idle RSS (demo config, after start and a few requests)"
echo "   kokod VmRSS $K_RSS KiB (RssAnon $K_ANON KiB, RssFile $K_FILE KiB)   target < $RSS_TARGET_KIB KiB   $RSS_VERDICT"
echo "   kokod Pss ${K_PSS:-?} KiB (shared library pages divided among their users); $K_LIBS shared objects mapped"
echo "   largest (KiB): $K_TOP"
echo "   bare_evhttp VmRSS $B_RSS KiB (the libevent floor); kokod/bare = $(ratio "$K_RSS" "$B_RSS")"
echo "   kokod after the load: VmRSS $K_RSS_AFTER KiB, peak VmHWM $K_HWM KiB"
echo
echo "== 3. POST /api/chat, fallback backend, rotating hu/en demo questions (median of $BENCH_ROUNDS)"
printf '   kokod        %10.0f req/s   (rounds:%s)\n' "$C" "$C_ALL"
echo "   ratio chat / /health ceiling (bare) = $CR"
echo

stop_pid "$KOKOD_PID"
KOKOD_PID=
stop_pid "$BARE_PID"
BARE_PID=
kb_report
echo
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
