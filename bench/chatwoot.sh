#!/bin/sh
# chatwoot.sh — the Chatwoot channel's benchmarks, run by `make bench` after run.sh
# (and alone by `make bench-chatwoot`); never by `make check`.
#
# kokod runs the demo configuration with the chatwoot channel added to the demo tenant
# (webhook_secret set, quiet_ms 0 so each message is answered on its own, base_url at
# `cw_bench rest`, a fake Chatwoot REST API in C that answers at once and counts replies).
#   5. accepted webhooks/s: wrk replays signed message_created webhooks (a new message and
#      conversation id each, written by `cw_bench gen` before every round) through
#      bench/chatwoot.lua, which counts the 200 {"status":"accepted"} answers; rounds
#      alternate with GET /health on bench/bare_evhttp (the ceiling); after every kokod
#      round the backlog is drained (every accepted message answered) before going on.
#      Printed: accepted/s, the ratio to the ceiling, and the cross-checks.
#   6. end to end: `cw_bench e2e` sends signed webhooks at BENCH_CW_RATE/s for
#      BENCH_CW_SECONDS over keep-alive connections and times webhook sent -> reply POST
#      received at its own fake REST API, fallback backend (target: p99 < 5 ms at 1,000/s).
# Exit 0 with PASS/MISS lines; 1 only when something cannot run.
#
# Environment (set by bench/bench.am): KOKOD, FALLBACK_DIR, CHATWOOT_DIR, BARE_EVHTTP,
# CW_BENCH, KOKO_SRCDIR; knobs: BENCH_DURATION (5s), BENCH_ROUNDS (3), BENCH_CONNECTIONS
# (32), BENCH_THREADS (1), BENCH_CW_RATE (1000), BENCH_CW_SECONDS (10), BENCH_CW_WARMUP (0.5: seconds
# of webhooks at the same rate before the measured ones, reported apart), BENCH_CW_CONNECTIONS (8),
# BENCH_CW_ONLY (webhooks or e2e: run only that part), BENCH_CW_SYNC (state.synchronous of
# kokod: tiered, the default, full or normal — to compare the durability tiers).

set -u
. "$(dirname "$0")/lib.sh"  # stop_pid, wait_port, median, ratio, json_num

: "${KOKO_SRCDIR:=.}"
: "${KOKO_BUILDDIR:=.}"
: "${KOKOD:=$KOKO_BUILDDIR/kokod}"
: "${FALLBACK_DIR:=$KOKO_BUILDDIR/plugins/fallback/.libs}"
: "${CHATWOOT_DIR:=$KOKO_BUILDDIR/plugins/chatwoot/.libs}"
: "${BARE_EVHTTP:=$KOKO_BUILDDIR/bench/bare_evhttp}"
: "${CW_BENCH:=$KOKO_BUILDDIR/bench/cw_bench}"
: "${BENCH_DURATION:=5s}"
: "${BENCH_ROUNDS:=3}"
: "${BENCH_CONNECTIONS:=32}"
: "${BENCH_THREADS:=1}"
: "${BENCH_CW_RATE:=1000}"
: "${BENCH_CW_SECONDS:=10}"
: "${BENCH_CW_WARMUP:=0.5}"
: "${BENCH_CW_CONNECTIONS:=8}"
: "${BENCH_CW_ONLY:=}"
: "${BENCH_CW_SYNC:=}"

E2E_TARGET_MS=5
SECRET=bench-secret
TOKEN=bench-token
unset KOKO_API_TOKEN KOKO_PLUGIN_PATH KOKO_LISTEN KOKO_STATE_DIR KOKO_BASE_DIR

KOKOD_PID=
BARE_PID=
REST_PID=
E2E_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/koko-cwbench.XXXXXX") || exit 1

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup()
{
    stop_pid "$E2E_PID"
    stop_pid "$KOKOD_PID"
    stop_pid "$BARE_PID"
    stop_pid "$REST_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die()
{
    echo "bench (chatwoot): $*" >&2
    exit 1
}

# wait_port FILE: wait (10 s at most) for "listening on http://HOST:PORT" in FILE, print PORT
check_alive() # NAME PID LOG
{
    kill -0 "$2" 2>/dev/null && return 0
    wait "$2"
    st=$?
    echo "bench (chatwoot): $1 (pid $2) died during the run, exit status $st; its log:" >&2
    tail -n 20 "$3" | sed 's/^/    /' >&2
    case $1 in
    kokod) KOKOD_PID= ;;
    bare) BARE_PID= ;;
    *) REST_PID= ;;
    esac
    die "no figures: a server died"
}


# a JSON number out of a flat-enough document: json_num KEY < DOC

# seconds in a wrk duration (5s, 2m, 1h, 10)
duration_s()
{
    case $1 in
    *s) echo "${1%s}" ;;
    *m) echo $((${1%m} * 60)) ;;
    *h) echo $((${1%h} * 3600)) ;;
    *) echo "$1" ;;
    esac
}

# start_kokod REST_PORT NAME: the demo config + the chatwoot channel; sets KOKOD_PID, KPORT
start_kokod()
{
    sync_line=
    [ -n "$BENCH_CW_SYNC" ] && sync_line="  synchronous: $BENCH_CW_SYNC"
    sed -e "s|^\( *control:\).*|\1 \"$TMP/$2.sock\"|" ${sync_line:+-e "/^state:\$/a\\
$sync_line"} -e "/^  demo:\$/a\\
    channels:\\
      chatwoot:\\
        base_url: \"http://127.0.0.1:$1\"\\
        account_id: 1\\
        api_token: \"$TOKEN\"\\
        webhook_secret: \"$SECRET\"\\
        quiet_ms: 0" "$KOKO_SRCDIR/etc/koko.yaml" >"$TMP/$2.yaml"
    KOKO_BASE_DIR="$KOKO_SRCDIR" KOKO_STATE_DIR="$TMP/state-$2" \
        "$KOKOD" -t -c "$TMP/$2.yaml" -P "$FALLBACK_DIR" -P "$CHATWOOT_DIR" >"$TMP/$2.check" 2>&1 ||
        { cat "$TMP/$2.check" >&2; die "the benchmark configuration does not validate"; }
    KOKO_BASE_DIR="$KOKO_SRCDIR" KOKO_STATE_DIR="$TMP/state-$2" KOKO_LISTEN=127.0.0.1:0 \
        "$KOKOD" -c "$TMP/$2.yaml" -P "$FALLBACK_DIR" -P "$CHATWOOT_DIR" >"$TMP/$2.log" 2>&1 &
    KOKOD_PID=$!
    KPORT=$(wait_port "$TMP/$2.log") || { cat "$TMP/$2.log" >&2; die "kokod did not start"; }
}

kokod_counter() { curl -sf "http://127.0.0.1:$KPORT/stats" | json_num "$1"; }
rest_counter() { curl -sf "http://127.0.0.1:$RPORT/_count" | json_num "$1"; }

# drain: wait until the fake Chatwoot has one reply per message kokod accepted, or until
# nothing moved for 10 s; prints the seconds it took
drain()
{
    start=$(date +%s.%N)
    last=-1 still=0
    while :; do
        acc=$(kokod_counter accepted)
        rep=$(rest_counter replies)
        [ -n "$acc" ] && [ -n "$rep" ] && [ "$rep" -ge "$acc" ] && break
        if [ "$rep" = "$last" ]; then
            still=$((still + 1))
            [ $still -ge 100 ] && { echo "bench (chatwoot): WARNING: backlog stuck at $rep replies for $acc accepted" >&2; break; }
        else
            still=0 last=$rep
        fi
        sleep 0.1
    done
    awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# wrk_webhooks NAME FILE: one wrk run of the signed webhooks; sets W_ACC W_DUP W_OTHER W_WRAP W_RATE
wrk_webhooks()
{
    wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION" -s "$KOKO_SRCDIR/bench/chatwoot.lua" \
        "http://127.0.0.1:$KPORT" -- "$2" "$BENCH_THREADS" >"$TMP/$1.wrk" 2>&1
    line=$(grep '^chatwoot: accepted' "$TMP/$1.wrk")
    [ -n "$line" ] || { cat "$TMP/$1.wrk" >&2; die "wrk did not report (see above)"; }
    field() { echo "$line" | awk -v k="$1" '{ for (i = 2; i < NF; i++) if ($i == k) print $(i + 1) }'; }
    W_ACC=$(field accepted) W_DUP=$(field duplicate) W_OTHER=$(field other) W_WRAP=$(field wrapped)
    W_RATE=$(awk -v a="$W_ACC" -v us="$(field duration_us)" 'BEGIN { printf "%.2f", (us > 0 ? a / (us / 1e6) : 0) }')
    grep -q 'Socket errors' "$TMP/$1.wrk" && echo "bench (chatwoot): note: $1: $(grep 'Socket errors' "$TMP/$1.wrk" | sed 's/^ *//')" >&2
    [ "$W_WRAP" -gt 0 ] && echo "bench (chatwoot): WARNING: $1 ran out of distinct webhooks ($W_DUP duplicates not counted)" >&2
    [ "$W_OTHER" -gt 0 ] && { echo "bench (chatwoot): WARNING: $1: $W_OTHER answers other than accepted/duplicate:" >&2; sed 's/^/    /' "$TMP/$1.wrk" >&2; }
    return 0
}

wrk_health() # NAME URL: requests/s of GET URL
{
    wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION" "$2" >"$TMP/$1.wrk" 2>&1
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/$1.wrk")
    echo "${rps:-0}"
}

echo "kokod Chatwoot benchmarks — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc 2>/dev/null || echo '?') CPUs, \
wrk -t$BENCH_THREADS -c$BENCH_CONNECTIONS -d$BENCH_DURATION, $BENCH_ROUNDS alternating rounds, medians; \
e2e $BENCH_CW_RATE msg/s for $BENCH_CW_SECONDS s after a ${BENCH_CW_WARMUP} s warm-up, state.synchronous ${BENCH_CW_SYNC:-tiered (default)}"
echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

[ -x "$KOKOD" ] || die "no kokod at $KOKOD: run \`make bench\` from the build directory"
[ -f "$FALLBACK_DIR/fallback.so" ] || die "no fallback plugin in $FALLBACK_DIR: run \`make bench\`"
[ -f "$CHATWOOT_DIR/chatwoot.so" ] || die "no chatwoot plugin in $CHATWOOT_DIR: run \`make bench\`"
[ -x "$CW_BENCH" ] || die "no cw_bench at $CW_BENCH: run \`make bench\`"
command -v curl >/dev/null 2>&1 || die "curl is needed to read kokod's and the fake Chatwoot's counters"

# ==== 5. accepted webhooks per second vs the /health ceiling
if [ "$BENCH_CW_ONLY" = e2e ]; then
    :
elif ! command -v wrk >/dev/null 2>&1; then
    echo "== 5. webhooks/s SKIPPED: wrk is not installed (Debian package \`wrk\`)"
    echo
else
    [ -x "$BARE_EVHTTP" ] || die "no bare_evhttp at $BARE_EVHTTP: run \`make bench\`"
    "$CW_BENCH" rest -p 0 -k "$TOKEN" >"$TMP/rest.log" 2>&1 &
    REST_PID=$!
    RPORT=$(wait_port "$TMP/rest.log") || { cat "$TMP/rest.log" >&2; die "cw_bench rest did not start"; }
    start_kokod "$RPORT" kokod
    curl -sf -o "$TMP/health.json" "http://127.0.0.1:$KPORT/health" || die "GET /health on kokod failed"
    "$BARE_EVHTTP" -p 0 -b "$TMP/health.json" >"$TMP/bare.log" 2>&1 &
    BARE_PID=$!
    BPORT=$(wait_port "$TMP/bare.log") || { cat "$TMP/bare.log" >&2; die "bare_evhttp did not start"; }
    BURL="http://127.0.0.1:$BPORT/health"

    # warm-up (not counted): it also tells how many distinct webhooks a round needs
    NEXT_ID=1
    "$CW_BENCH" gen -o "$TMP/reqs" -n 20000 -b $NEXT_ID -s "$SECRET" || die "cw_bench gen failed"
    NEXT_ID=$((NEXT_ID + 20000))
    wrk -t1 -c"$BENCH_CONNECTIONS" -d1s -s "$KOKO_SRCDIR/bench/chatwoot.lua" "http://127.0.0.1:$KPORT" \
        -- "$TMP/reqs" 1 >"$TMP/warm.wrk" 2>&1
    WARM=$(sed -n 's/^chatwoot: accepted \([0-9]*\).*/\1/p' "$TMP/warm.wrk")
    wrk -t1 -c"$BENCH_CONNECTIONS" -d1s "$BURL" >/dev/null 2>&1
    drain >/dev/null
    # three times the warm-up rate, so a faster round still finds no message id twice
    PER_ROUND=$(awk -v w="${WARM:-0}" -v d="$(duration_s "$BENCH_DURATION")" 'BEGIN { n = int(3 * w * d) + 10000; print n }')

    K_ALL='' B_ALL='' D_ALL='' ACC_SUM=0 DUP_SUM=0 OTHER_SUM=0
    ACC0=$(kokod_counter accepted) DUPS0=$(kokod_counter duplicates)
    C0=$(curl -sf "http://127.0.0.1:$RPORT/_count")
    r=1
    while [ $r -le "$BENCH_ROUNDS" ]; do
        # fresh timestamps and ids every round: never stale, never seen before
        "$CW_BENCH" gen -o "$TMP/reqs" -n "$PER_ROUND" -b $NEXT_ID -s "$SECRET" || die "cw_bench gen failed"
        NEXT_ID=$((NEXT_ID + PER_ROUND))
        if [ $((r % 2)) -eq 1 ]; then
            wrk_webhooks "kokod-webhooks-$r" "$TMP/reqs"
            dr=$(drain)
            b=$(wrk_health "bare-health-$r" "$BURL")
        else
            b=$(wrk_health "bare-health-$r" "$BURL")
            wrk_webhooks "kokod-webhooks-$r" "$TMP/reqs"
            dr=$(drain)
        fi
        check_alive kokod "$KOKOD_PID" "$TMP/kokod.log"
        check_alive bare "$BARE_PID" "$TMP/bare.log"
        check_alive rest "$REST_PID" "$TMP/rest.log"
        echo "round $r/$BENCH_ROUNDS: kokod $W_RATE accepted webhooks/s ($W_ACC accepted, $W_DUP duplicate, $W_OTHER other; backlog answered $dr s later), bare /health $b req/s"
        K_ALL="$K_ALL $W_RATE" B_ALL="$B_ALL $b" D_ALL="$D_ALL $dr"
        ACC_SUM=$((ACC_SUM + W_ACC)) DUP_SUM=$((DUP_SUM + W_DUP)) OTHER_SUM=$((OTHER_SUM + W_OTHER))
        r=$((r + 1))
    done
    K_ACC=$(($(kokod_counter accepted) - ACC0))
    K_DUPS=$(($(kokod_counter duplicates) - ${DUPS0:-0}))
    C=$(curl -sf "http://127.0.0.1:$RPORT/_count")
    delta() { echo $(($(echo "$C" | json_num "$1") - $(echo "$C0" | json_num "$1"))); }
    # shellcheck disable=SC2086 # word splitting of the round lists is intended
    K=$(median $K_ALL)
    # shellcheck disable=SC2086
    B=$(median $B_ALL)
    echo
    echo "== 5. Chatwoot webhooks: signed message_created, one new conversation each, quiet_ms 0 (median of $BENCH_ROUNDS)"
    printf '   kokod        %10.0f accepted webhooks/s   (rounds:%s)\n' "$K" "$K_ALL"
    printf '   bare evhttp  %10.0f GET /health req/s     (rounds:%s)\n' "$B" "$B_ALL"
    echo "   ratio accepted webhooks / /health ceiling (bare) = $(ratio "$K" "$B")"
    echo "   check: wrk saw $ACC_SUM 200 {\"status\":\"accepted\"} ($DUP_SUM duplicate, $OTHER_SUM other); kokod counted $K_ACC accepted, $K_DUPS duplicates"
    echo "   (kokod's count includes the requests in flight when wrk stopped); the fake Chatwoot got"
    echo "   $(delta replies) replies for them ($(delta dup_replies) duplicate), $(delta typing) typing calls, $(delta notes) private notes,"
    echo "   $(delta gets) listings (re-post checks after a failed post), $(delta unauthorized) unauthorized; after each kokod round the backlog was answered within (s):$D_ALL"
    echo
    stop_pid "$KOKOD_PID"
    KOKOD_PID=
    stop_pid "$BARE_PID"
    BARE_PID=
    stop_pid "$REST_PID"
    REST_PID=
fi

# ==== 6. end to end at a fixed rate
[ "$BENCH_CW_ONLY" = webhooks ] && exit 0
"$CW_BENCH" e2e -f "$TMP/e2e.port" -r "$BENCH_CW_RATE" -d "$BENCH_CW_SECONDS" -w "$BENCH_CW_WARMUP" -c "$BENCH_CW_CONNECTIONS" \
    -s "$SECRET" -k "$TOKEN" -t "$E2E_TARGET_MS" >"$TMP/e2e.out" 2>"$TMP/e2e.err" &
E2E_PID=$!
EPORT=$(wait_port "$TMP/e2e.out") || { cat "$TMP/e2e.err" >&2; die "cw_bench e2e did not start"; }
start_kokod "$EPORT" kokod-e2e
curl -sf -o /dev/null "http://127.0.0.1:$KPORT/health" || die "GET /health on kokod failed"
echo "$KPORT" >"$TMP/e2e.port.tmp" && mv "$TMP/e2e.port.tmp" "$TMP/e2e.port"
wait "$E2E_PID"
st=$?
E2E_PID=
check_alive kokod "$KOKOD_PID" "$TMP/kokod-e2e.log"
[ $st -eq 0 ] || { cat "$TMP/e2e.err" >&2; die "cw_bench e2e failed (exit $st)"; }
echo "== 6. Chatwoot end to end: webhook sent -> reply POST received, fallback backend, quiet_ms 0"
grep -v 'listening on' "$TMP/e2e.out" | sed 's/^/   /'
[ -s "$TMP/e2e.err" ] && sed 's/^/   note: /' "$TMP/e2e.err"
echo
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
