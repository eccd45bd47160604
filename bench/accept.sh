#!/bin/sh
# accept.sh — what accepting a webhook durably costs (`make bench-accept`); never run by
# `make check`.
#
# kokod runs the demo configuration with the chatwoot channel (as bench/chatwoot.sh: fallback
# backend, quiet_ms 0, replies to `cw_bench rest`), once on the embedded store (SQLite,
# synchronous=FULL) and once on a redis-server this script starts on loopback
# (appendonly yes, appendfsync always: the same promise as the embedded store) and stops.
# For each store:
#   1. accepted webhooks/s: wrk replays signed message_created webhooks (`cw_bench gen`, a new
#      message and conversation each, through bench/chatwoot.lua); rounds alternate with
#      GET /health on the same kokod, the ceiling; the backlog is answered after each round.
#      Printed: medians and accepted/s as a ratio to the /health ceiling.
#   2. p99 accept latency (webhook POST -> 200) at BENCH_LAT_CONNECTIONS connections
#      (wrk --latency): with durability (message_created: queued, committed, then 200) vs.
#      without: the same signed webhook as message_updated, which the channel verifies and
#      parses the same way and answers 200 without persisting anything. Printed: both and
#      their ratio, with the /health p99 alongside. The durable figure is taken while kokod
#      also answers what it accepts (on the same cores), as it would in production.
# Exit 0 after printing; 1 only when something cannot run.
#
# Environment (set by bench/bench.am): KOKOD, FALLBACK_DIR, CHATWOOT_DIR, CW_BENCH,
# KOKO_SRCDIR; knobs: BENCH_DURATION (5s), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32),
# BENCH_LAT_CONNECTIONS (4), BENCH_STORES ("embedded redis").

set -u
. "$(dirname "$0")/lib.sh"  # stop_pid, wait_port, median, ratio, json_num

: "${KOKO_SRCDIR:=.}"
: "${KOKO_BUILDDIR:=.}"
: "${KOKOD:=$KOKO_BUILDDIR/kokod}"
: "${FALLBACK_DIR:=$KOKO_BUILDDIR/plugins/fallback/.libs}"
: "${CHATWOOT_DIR:=$KOKO_BUILDDIR/plugins/chatwoot/.libs}"
: "${CW_BENCH:=$KOKO_BUILDDIR/bench/cw_bench}"
: "${BENCH_DURATION:=5s}"
: "${BENCH_ROUNDS:=3}"
: "${BENCH_CONNECTIONS:=32}"
: "${BENCH_LAT_CONNECTIONS:=4}"
: "${BENCH_STORES:=embedded redis}"

SECRET=bench-secret
TOKEN=bench-token
unset KOKO_API_TOKEN KOKO_PLUGIN_PATH KOKO_LISTEN KOKO_STATE_DIR KOKO_BASE_DIR

KOKOD_PID=
REST_PID=
REDIS_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/koko-accept.XXXXXX") || exit 1

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup()
{
    stop_pid "$KOKOD_PID"
    stop_pid "$REDIS_PID"
    stop_pid "$REST_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die()
{
    echo "bench (accept): $*" >&2
    exit 1
}

kokod_counter() { curl -sf "http://127.0.0.1:$KPORT/stats?days=1" | json_num "$1"; }
rest_counter() { curl -sf "http://127.0.0.1:$RPORT/_count" | json_num "$1"; }

# drain: wait until the fake Chatwoot has a reply for every message kokod accepted, or
# nothing moved for 10 s
drain()
{
    last=-1 still=0
    while :; do
        acc=$(kokod_counter accepted)
        rep=$(rest_counter replies)
        [ -n "$acc" ] && [ -n "$rep" ] && [ $((rep - REPLIES0)) -ge "$acc" ] && break
        if [ "$rep" = "$last" ]; then
            still=$((still + 1))
            [ $still -ge 100 ] && { echo "bench (accept): WARNING: backlog stuck at $rep replies for $acc accepted" >&2; break; }
        else
            still=0 last=$rep
        fi
        sleep 0.1
    done
}

# start_kokod STORE: the demo config + the chatwoot channel on STORE; sets KOKOD_PID, KPORT
start_kokod()
{
    redis_line=
    [ "$1" = redis ] && redis_line="  redis: \"redis://127.0.0.1:$REDIS_PORT/0\""
    sed -e "s|^\( *control:\).*|\1 \"$TMP/$1.sock\"|" -e "/^  demo:\$/a\\
    channels:\\
      chatwoot:\\
        base_url: \"http://127.0.0.1:$RPORT\"\\
        account_id: 1\\
        api_token: \"$TOKEN\"\\
        webhook_secret: \"$SECRET\"\\
        quiet_ms: 0" -e "/^state:\$/a\\
$redis_line" "$KOKO_SRCDIR/etc/koko.yaml" >"$TMP/$1.yaml"
    KOKO_BASE_DIR="$KOKO_SRCDIR" KOKO_STATE_DIR="$TMP/state-$1" KOKO_LISTEN=127.0.0.1:0 \
        "$KOKOD" -c "$TMP/$1.yaml" -P "$FALLBACK_DIR" -P "$CHATWOOT_DIR" >"$TMP/$1.log" 2>&1 &
    KOKOD_PID=$!
    KPORT=$(wait_port "$TMP/$1.log") || { cat "$TMP/$1.log" >&2; die "kokod did not start ($1)"; }
    curl -sf "http://127.0.0.1:$KPORT/health" | grep -q '"status":"ok"' ||
        { cat "$TMP/$1.log" >&2; die "kokod on the $1 store is not healthy"; }
}

start_redis()
{
    REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$TMP/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP/redis" --appendonly yes --appendfsync always \
        --save '' >"$TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    i=0
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -ge 100 ] && { cat "$TMP/redis.log" >&2; die "redis-server did not start on port $REDIS_PORT"; }
        sleep 0.1
    done
}

gen() # FILE N [EVENT]: N signed webhooks with fresh ids and timestamps
{
    "$CW_BENCH" gen -o "$1" -n "$2" -b "$NEXT_ID" -s "$SECRET" -e "${3:-message_created}" || die "cw_bench gen failed"
    NEXT_ID=$((NEXT_ID + $2))
}

# wrk_webhooks NAME FILE [CONNECTIONS [--latency]]: sets W_ACC W_OTHER W_RATE
wrk_webhooks()
{
    wrk -t1 -c"${3:-$BENCH_CONNECTIONS}" -d"$BENCH_DURATION" ${4:-} -s "$KOKO_SRCDIR/bench/chatwoot.lua" \
        "http://127.0.0.1:$KPORT" -- "$2" 1 >"$TMP/$1.wrk" 2>&1
    line=$(grep '^chatwoot: accepted' "$TMP/$1.wrk")
    [ -n "$line" ] || { cat "$TMP/$1.wrk" >&2; die "wrk did not report (see above)"; }
    W_ACC=$(echo "$line" | awk '{ print $3 }') W_OTHER=$(echo "$line" | awk '{ print $7 }')
    W_RATE=$(echo "$line" | awk '{ printf "%.0f", ($11 > 0 ? $3 / ($11 / 1e6) : 0) }')
    [ "$(echo "$line" | awk '{ print $9 }')" -gt 0 ] && echo "bench (accept): WARNING: $1 ran out of distinct webhooks" >&2
    return 0
}

wrk_health() # NAME [CONNECTIONS [--latency]]: requests/s of GET /health
{
    wrk -t1 -c"${2:-$BENCH_CONNECTIONS}" -d"$BENCH_DURATION" ${3:-} "http://127.0.0.1:$KPORT/health" >"$TMP/$1.wrk" 2>&1
    awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$TMP/$1.wrk"
}

p99_ms() # NAME: wrk --latency's 99% line in ms
{
    awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
         printf "%.3f", (u == "us" ? v / 1000 : u == "s" ? v * 1000 : v) }' "$TMP/$1.wrk"
}

command -v wrk >/dev/null 2>&1 || die "wrk is needed (Debian package wrk)"
command -v curl >/dev/null 2>&1 || die "curl is needed to read kokod's counters"
[ -x "$KOKOD" ] || die "no kokod at $KOKOD: run \`make bench-accept\` from the build directory"
[ -x "$CW_BENCH" ] || die "no cw_bench at $CW_BENCH: run \`make bench-accept\`"
[ -f "$CHATWOOT_DIR/chatwoot.so" ] || die "no chatwoot plugin in $CHATWOOT_DIR"
case " $BENCH_STORES " in
*" redis "*)
    command -v redis-server >/dev/null 2>&1 || die "redis-server is needed (Debian package redis-server); or BENCH_STORES=embedded"
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to pick a free port for redis-server"
    ;;
esac

echo "kokod accept benchmark — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc 2>/dev/null || echo '?') CPUs, \
wrk -t1 -c$BENCH_CONNECTIONS -d$BENCH_DURATION, $BENCH_ROUNDS alternating rounds, medians; \
latency at -c$BENCH_LAT_CONNECTIONS"
echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"

"$CW_BENCH" rest -p 0 -k "$TOKEN" >"$TMP/rest.log" 2>&1 &
REST_PID=$!
RPORT=$(wait_port "$TMP/rest.log") || { cat "$TMP/rest.log" >&2; die "cw_bench rest did not start"; }
NEXT_ID=1
SUMMARY=

for store in $BENCH_STORES; do
    [ "$store" = redis ] && start_redis
    start_kokod "$store"
    REPLIES0=$(rest_counter replies)
    # warm-up, not counted; it also sizes the rounds so no message id is sent twice
    gen "$TMP/reqs" 20000
    wrk -t1 -c"$BENCH_CONNECTIONS" -d1s -s "$KOKO_SRCDIR/bench/chatwoot.lua" "http://127.0.0.1:$KPORT" \
        -- "$TMP/reqs" 1 >"$TMP/warm.wrk" 2>&1
    WARM=$(sed -n 's/^chatwoot: accepted \([0-9]*\).*/\1/p' "$TMP/warm.wrk")
    drain
    PER_ROUND=$(awk -v w="${WARM:-0}" -v d="${BENCH_DURATION%s}" 'BEGIN { print int(3 * w * d) + 10000 }')

    A_ALL='' H_ALL=''
    r=1
    while [ $r -le "$BENCH_ROUNDS" ]; do
        gen "$TMP/reqs" "$PER_ROUND"
        if [ $((r % 2)) -eq 1 ]; then
            wrk_webhooks "$store-acc-$r" "$TMP/reqs"
            drain
            h=$(wrk_health "$store-health-$r")
        else
            h=$(wrk_health "$store-health-$r")
            wrk_webhooks "$store-acc-$r" "$TMP/reqs"
            drain
        fi
        kill -0 "$KOKOD_PID" 2>/dev/null || { tail -n 20 "$TMP/$store.log" >&2; die "kokod died ($store)"; }
        echo "$store round $r/$BENCH_ROUNDS: $W_RATE accepted webhooks/s ($W_ACC accepted, $W_OTHER other), GET /health $h req/s"
        A_ALL="$A_ALL $W_RATE" H_ALL="$H_ALL $h"
        r=$((r + 1))
    done
    # shellcheck disable=SC2086 # the round lists split on purpose
    A=$(median $A_ALL)
    # shellcheck disable=SC2086
    H=$(median $H_ALL)

    # latency at a low concurrency: durable accept, the non-persisting path, /health
    gen "$TMP/lat" "$PER_ROUND"
    wrk_webhooks "$store-lat-durable" "$TMP/lat" "$BENCH_LAT_CONNECTIONS" --latency
    LAT_ACC=$W_ACC
    drain
    # the ignored path is far faster: as many as /health could take, so none is sent twice
    gen "$TMP/lat" "$(awk -v h="$H" -v d="${BENCH_DURATION%s}" 'BEGIN { print int(h * d) + 10000 }')" message_updated
    wrk_webhooks "$store-lat-ignored" "$TMP/lat" "$BENCH_LAT_CONNECTIONS" --latency
    LAT_IGN=$W_OTHER
    grep -q '"status":"ignored"' "$TMP/$store-lat-ignored.wrk" ||
        { cat "$TMP/$store-lat-ignored.wrk" >&2; die "message_updated was not answered {\"status\":\"ignored\"}"; }
    wrk_health "$store-lat-health" "$BENCH_LAT_CONNECTIONS" --latency >/dev/null
    PD=$(p99_ms "$store-lat-durable") PI=$(p99_ms "$store-lat-ignored") PH=$(p99_ms "$store-lat-health")

    echo
    echo "== $store store: signed Chatwoot webhooks (message_created, a new conversation each), median of $BENCH_ROUNDS"
    printf '   accepted      %8.0f webhooks/s   (rounds:%s)\n' "$A" "$A_ALL"
    printf '   GET /health   %8.0f req/s        (rounds:%s)\n' "$H" "$H_ALL"
    echo "   ratio accepted webhooks / /health ceiling = $(ratio "$A" "$H")"
    echo "   p99 accept latency at -c$BENCH_LAT_CONNECTIONS: durable $PD ms ($LAT_ACC accepted), not persisted $PI ms" \
        "($LAT_IGN message_updated answered \"ignored\"): ratio $(ratio "$PD" "$PI"); GET /health p99 $PH ms"
    echo
    SUMMARY="$SUMMARY$(printf '   %-9s %8.0f accepted/s = %s x /health (%s req/s); p99 accept %s ms durable / %s ms not persisted = %s\n' \
        "$store" "$A" "$(ratio "$A" "$H")" "$H" "$PD" "$PI" "$(ratio "$PD" "$PI")")
"
    stop_pid "$KOKOD_PID"
    KOKOD_PID=
    if [ "$store" = redis ]; then
        stop_pid "$REDIS_PID"
        REDIS_PID=
    fi
done

echo "== summary (the not-persisted baseline: the same signed webhook as message_updated, which the"
echo "   chatwoot channel verifies and parses and answers 200 without queueing anything)"
printf '%s' "$SUMMARY"
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
