#!/bin/sh
# tests/sdk/run.sh — the SDK works out of tree: install kokod into a
# temporary prefix, build tests/sdk/hello.c against the installed headers
# through pkg-config (koko-plugin), check that the plugin exports only its
# descriptor, and have the installed kokod accept a configuration that names
# it. Needs the build directory in $KOKO_BUILDDIR (make check sets it);
# writes nothing outside its temporary directory.
set -eu

fail() { echo "FAIL: $*" >&2; exit 1; }

B=${KOKO_BUILDDIR:?KOKO_BUILDDIR must name the build directory}
S=${KOKO_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
CC=${CC:-cc}
T=$(mktemp -d "${TMPDIR:-/tmp}/koko-sdk-XXXXXX")
trap 'rm -rf "$T"' EXIT INT TERM

# 1. install into the temporary prefix (quietly; show the log on failure)
if ! env -u MAKEFLAGS -u MFLAGS make -C "$B" install prefix="$T/prefix" DESTDIR= >"$T/install.log" 2>&1; then
    cat "$T/install.log" >&2
    fail "make install prefix=$T/prefix failed"
fi
for f in "$T/prefix/sbin/kokod" "$T/prefix/include/koko/plugin.h" "$T/prefix/include/koko/host.h" \
         "$T/prefix/lib/pkgconfig/koko-plugin.pc"; do
    [ -e "$f" ] || fail "make install did not install $f"
done

# 2. build the sample plugin against the installed SDK only
export PKG_CONFIG_PATH="$T/prefix/lib/pkgconfig"
cflags=$(pkg-config --cflags koko-plugin) || fail "pkg-config koko-plugin not found in $PKG_CONFIG_PATH"
case " $cflags " in
    *" -I$T/prefix/include "*) ;;
    *) fail "pkg-config --cflags koko-plugin gives \"$cflags\": its include folder is not the installed one ($T/prefix/include)" ;;
esac
mkdir "$T/plugins"
# shellcheck disable=SC2086 # word splitting of the flags is intended
$CC -std=gnu11 -Wall -Wextra -Werror $cflags -shared -o "$T/plugins/hello.so" "$S/tests/sdk/hello.c" \
    $(pkg-config --libs jansson) || fail "hello.c does not build against the installed SDK"

# 3. only the descriptor is exported
exported=$(nm -D --defined-only "$T/plugins/hello.so" | awk '$2 ~ /^[A-Z]$/ && $2 != "A" && $3 != "" {print $3}' | sort)
[ "$exported" = "koko_plugin_v1" ] || fail "hello.so exports more than koko_plugin_v1: $(echo $exported)"

# 4. the installed kokod accepts a configuration naming the plugin
cat >"$T/koko.yaml" <<YAML
base_dir: $T
state: {dir: state}
tenants:
  demo:
    languages: [en]
    llm: [hello]
YAML
out=$("$T/prefix/sbin/kokod" -t -c "$T/koko.yaml" -P "$T/plugins" 2>&1) || fail "kokod -t refused the configuration: $out"
case "$out" in
    *"configuration ok"*) ;;
    *) fail "kokod -t did not say \"configuration ok\": $out" ;;
esac
# a setting hello does not take is reported through its validate()
cat >>"$T/koko.yaml" <<YAML
    backends:
      hello: {colour: blue}
YAML
if out=$("$T/prefix/sbin/kokod" -t -c "$T/koko.yaml" -P "$T/plugins" 2>&1); then
    fail "kokod -t accepted a setting hello does not take: $out"
fi
case "$out" in
    *"tenants.demo.backends.hello.colour: unknown key \"colour\" (hello takes no settings)"*) ;;
    *) fail "kokod -t did not report hello's own message: $out" ;;
esac
echo "PASS: SDK install, out-of-tree build, exports, kokod -t"
