# bench/lib.sh — shell helpers the benchmark scripts share (POSIX sh; sourced,
# never run). Each script keeps its own cleanup trap and the PIDs it started.

stop_pid() # PID: TERM it, wait up to 5 s, then KILL; only processes the script started
{
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || return 0
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

wait_port() # FILE: wait (10 s at most) for "listening on http://HOST:PORT" in FILE, print PORT
{
    i=0
    while [ $i -lt 100 ]; do
        # the log may not exist yet: the background shell creates it after the fork
        port=$(sed -n 's|.*listening on http://[^ ]*:\([0-9][0-9]*\).*|\1|p' "$1" 2>/dev/null | head -n 1)
        if [ -n "$port" ]; then
            echo "$port"
            return 0
        fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

median() # numbers as arguments
{
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

json_num() { sed -n "s/.*\"$1\":\([0-9][0-9.]*\).*/\1/p" | head -n 1 | awk '{ printf "%d", $1 }'; }
