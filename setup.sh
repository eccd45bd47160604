#!/usr/bin/env bash
# Kokó set-up: install what is missing (Debian 12, as root), build, then run or test.
#
#   bash setup.sh run    install, build into build/, start kokod on etc/koko.yaml (foreground)
#   bash setup.sh test   install, build with -Werror, run the whole suite; then again under
#                        AddressSanitizer + UndefinedBehaviorSanitizer; then make distcheck
#                        (SKIP_DISTCHECK=1 leaves that out)
#   bash setup.sh deps   only install the Debian packages
#   bash setup.sh build  install and build, nothing else
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
JOBS=$(nproc 2>/dev/null || echo 2)

PACKAGES=(
  build-essential autoconf automake libtool pkg-config
  libevent-dev libcurl4-openssl-dev libjansson-dev libyaml-dev check
  libstemmer-dev libexttextcat-dev libsqlite3-dev libhiredis-dev libssl-dev
  curl ca-certificates python3 python3-jsonschema wrk redis-server valgrind procps libnghttp2-dev
)

say() { printf '\n==> %s\n' "$*"; }

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "all ${#PACKAGES[@]} Debian packages present"
    return
  fi
  say "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# build DIR [configure options...]
build() {
  local dir=$1; shift
  # a git checkout has no configure: generate it (make regenerates it later when needed)
  [ -x "$ROOT/configure" ] || { say "autogen"; "$ROOT/autogen.sh" >/dev/null 2>&1; }
  mkdir -p "$dir"
  if [ ! -f "$dir/Makefile" ] || [ "$(cat "$dir/.configured-with" 2>/dev/null)" != "$*" ]; then
    say "configure $dir $*"
    (cd "$dir" && "$ROOT/configure" --enable-silent-rules "$@" >configure.out 2>&1) || { cat "$dir/configure.out" >&2; exit 1; }
    echo "$*" > "$dir/.configured-with"
  fi
  say "make -C $dir"
  make -C "$dir" -j"$JOBS" >/dev/null
}

# check DIR LABEL: run the suite, print the summary, remember the counts
TOTAL_PASS=0
TOTAL_FAIL=0
check() {
  local dir=$1 label=$2 rc=0
  say "make check ($label)"
  make -C "$dir" -j"$JOBS" check >"$dir/check.out" 2>&1 || rc=$?
  grep -E '^(PASS|FAIL|ERROR|XPASS|SKIP):' "$dir/check.out" || true
  local p f
  p=$(grep -cE '^PASS:' "$dir/check.out" || true)
  f=$(grep -cE '^(FAIL|ERROR|XPASS):' "$dir/check.out" || true)
  TOTAL_PASS=$((TOTAL_PASS + p))
  TOTAL_FAIL=$((TOTAL_FAIL + f))
  if [ "$rc" -ne 0 ]; then
    echo "---- failing logs ($label) ----"
    find "$dir/tests" -name '*.trs' -exec grep -lE ':test-result: (FAIL|ERROR)' {} + 2>/dev/null |
      while read -r trs; do
        echo "---- ${trs%.trs}.log"; tail -n 60 "${trs%.trs}.log"
      done
  fi
  return "$rc"
}

cmd=${1:-}
case "$cmd" in
  deps) deps ;;
  build) deps; build "$ROOT/build" ;;
  run)
    deps
    build "$ROOT/build"
    say "starting kokod on etc/koko.yaml (Ctrl-C stops it). Try:"
    echo "    curl -s localhost:5001/api/chat -H 'Content-Type: application/json' \\"
    echo "         -d '{\"tenant\":\"demo\",\"message\":\"Mennyibe kerül a kiszállás?\"}'"
    echo "    build/kokoctl chat demo \"What are your opening hours?\""
    # every plugin built here is on the search path (chatwoot, gemini, openai: enable them in the YAML)
    dirs=()
    for d in "$ROOT"/build/plugins/*/.libs; do dirs+=(-P "$d"); done
    exec "$ROOT/build/kokod" -c etc/koko.yaml "${dirs[@]}"
    ;;
  test)
    deps
    rc=0
    build "$ROOT/build" --enable-werror
    check "$ROOT/build" "gcc -Werror" || rc=1
    build "$ROOT/build-asan" --enable-werror --enable-sanitizers
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      check "$ROOT/build-asan" "AddressSanitizer + UBSan" || rc=1
    if [ "${SKIP_DISTCHECK:-0}" != 1 ]; then
      say "make distcheck"
      if make -C "$ROOT/build" -j"$JOBS" distcheck >"$ROOT/build/distcheck.out" 2>&1; then
        grep -E '^=+$|archives ready|is ready' "$ROOT/build/distcheck.out" | tail -n 3
        TOTAL_PASS=$((TOTAL_PASS + 1))
      else
        tail -n 80 "$ROOT/build/distcheck.out"
        TOTAL_FAIL=$((TOTAL_FAIL + 1)); rc=1
      fi
    fi
    echo
    echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
    exit "$rc"
    ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
