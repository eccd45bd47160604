#!/bin/sh
# Build every fuzz harness with clang's libFuzzer (+ ASan/UBSan) and run each
# for a while: `fuzz/build.sh BUILD_DIR [SECONDS]` (BUILD_DIR: a configured
# tree, for kokoconf.h). Needs the Debian package clang.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: fuzz/build.sh BUILD_DIR [SECONDS]}
secs=${2:-60}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
CC="clang -g -O1 -fsanitize=fuzzer,address,undefined -I$build -I$src/core -I$src/include -I$src/tests"
PKG="$(pkg-config --cflags --libs jansson yaml-0.1 libexttextcat libevent libevent_pthreads libcurl check)"
$CC -o "$out/fuzz_yamltree" "$src/fuzz/fuzz_yamltree.c" "$src/core/yamltree.c" "$src/core/diag.c" $PKG
$CC -o "$out/fuzz_lang" "$src/fuzz/fuzz_lang.c" "$src/core/lang.c" $PKG
$CC -o "$out/fuzz_chatwoot" "$src/fuzz/fuzz_chatwoot.c" "$src/tests/fakehost.c" "$src/core/httpc.c" \
    "$src/core/curlfn.c" "$src"/plugins/chatwoot/*.c $PKG $(pkg-config --cflags --libs libcrypto) -ldl
$CC -o "$out/fuzz_custmem" "$src/fuzz/fuzz_custmem.c" "$src/core/custmem_facts.c" "$src/core/text.c" "$src/core/util.c" \
    $PKG $(pkg-config --cflags --libs libstemmer 2>/dev/null || echo -lstemmer)
$CC -o "$out/fuzz_kb" "$src/fuzz/fuzz_kb.c" "$src/core/kb.c" "$src/core/text.c" "$src/core/util.c" "$src/core/log.c" \
    $PKG $(pkg-config --cflags --libs libstemmer 2>/dev/null || echo -lstemmer)
for f in yamltree lang chatwoot custmem kb; do
    mkdir -p "$out/corpus-$f"
    case $f in
    yamltree) cp "$src"/tests/data/config/*.yaml "$out/corpus-$f/" ;;
    custmem) printf '%s' '{"facts": [{"text": "Csak délután ér rá.", "kind": "preference", "replaces": ""}]}' \
                 >"$out/corpus-$f/a.json"
             printf '%s' '{"text": "Budapesten lakik", "expires": "2027-01-31"}' >"$out/corpus-$f/b.json"
             printf '%s' 'email:anna@example.hu' >"$out/corpus-$f/c.txt" ;;
    lang | kb) cut -f2 "$src/tests/data/lang_samples.tsv" | split -l 1 - "$out/corpus-$f/s" ;;
    chatwoot) python3 -c "
import sys, json; sys.path.insert(0, '$src/tests/fakes')
import chatwoot_payloads as p
for i, name in enumerate(n for n in dir(p) if callable(getattr(p, n)) and not n.startswith('_')):
    try:
        doc = getattr(p, name)()
        open('$out/corpus-$f/%d.json' % i, 'w').write(json.dumps(doc))
    except TypeError:
        pass
" ;;
    esac
    echo "== fuzz_$f for ${secs}s"
    KOKO_SRCDIR="$src" "$out/fuzz_$f" -max_total_time="$secs" -max_len=16384 "$out/corpus-$f" 2>&1 | tail -n 3
done
