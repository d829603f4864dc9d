#!/usr/bin/env bash
# Triton's perf_analyzer on this machine, fetched once into .cache/perf_analyzer/<version>/.
#
#   scripts/perf_analyzer.sh --install      fetch (if not yet there) and print the launcher's path
#   scripts/perf_analyzer.sh ARGS...        fetch (if not yet there) and run perf_analyzer ARGS...
#
# `pip install perf-analyzer` gives a placeholder without a binary on glibc < 2.38: the real
# wheels are tagged manylinux_2_38. So: download that wheel (no install), download Debian trixie's
# libc6, libstdc++6 and libgcc-s1 with a private apt state (nothing installed or configured
# system-wide), unpack both, and start the binary through trixie's loader. A fetch is built aside
# and renamed into place when complete. Exits 1 with a one-line reason on stderr when a download
# is impossible (no network, no apt).
set -euo pipefail
VERSION="${PERF_ANALYZER_VERSION:-2.60.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/.cache/perf_analyzer"
DEST="$CACHE/$VERSION"
LAUNCHER="$DEST/perf_analyzer"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

fail() { echo "perf_analyzer.sh: $*" >&2; exit 1; }

write_launcher() {  # write_launcher FILE: runs the binary under $DEST through trixie's loader
    {
        echo '#!/bin/sh'
        echo "# perf_analyzer $VERSION through Debian trixie's loader (glibc >= 2.38); written by scripts/perf_analyzer.sh"
        echo "lib='$DEST/sysroot/usr/lib/x86_64-linux-gnu'"
        echo "exec \"\$lib/ld-linux-x86-64.so.2\" --library-path \"\$lib\" '$DEST/wheel/perf_analyzer/bin/perf_analyzer' \"\$@\""
    } >"$1"
    chmod +x "$1"
}

install() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock -w 300 9 || fail "another install holds $CACHE/.lock"
    [ -x "$LAUNCHER" ] && return 0
    local work="$CACHE/.work-$VERSION" build="$CACHE/.build-$VERSION"
    rm -rf "$work" "$build"
    mkdir -p "$work/wheel" "$work/debs" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"

    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
        --python-version 3.11 -d "$work/wheel" "perf-analyzer==$VERSION" >"$work/pip.log" 2>&1 \
        || fail "pip could not download perf-analyzer==$VERSION (manylinux_2_38): $(tail -1 "$work/pip.log")"

    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || fail "needs apt-get and dpkg-deb (Debian/Ubuntu) to fetch a glibc >= 2.38 for the binary"
    local keyring=/usr/share/keyrings/debian-archive-trixie-stable.gpg
    [ -f "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    echo "deb [signed-by=$keyring] ${DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" >"$work/apt/sources.list"
    local apt=(apt-get -q -o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
               -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o APT::Sandbox::User=root)
    "${apt[@]}" update >"$work/apt.log" 2>&1 || fail "apt-get update of Debian trixie failed: $(tail -1 "$work/apt.log")"
    (cd "$work/debs" && "${apt[@]}" download libc6 libstdc++6 libgcc-s1) >>"$work/apt.log" 2>&1 \
        || fail "apt-get download of trixie's libc6/libstdc++6 failed: $(tail -1 "$work/apt.log")"

    mkdir -p "$build/wheel" "$build/sysroot"
    "$PYTHON" -m zipfile -e "$work"/wheel/*.whl "$build/wheel"
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$build/sysroot"; done
    chmod +x "$build/wheel/perf_analyzer/bin/perf_analyzer"
    # It must start: with no arguments it prints its usage and exits 1.
    local lib="$build/sysroot/usr/lib/x86_64-linux-gnu"
    "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$build/wheel/perf_analyzer/bin/perf_analyzer" \
        >"$work/probe.log" 2>&1 || true
    grep -q -- "--concurrency-range" "$work/probe.log" \
        || fail "the fetched perf_analyzer does not start: $(head -3 "$work/probe.log" | tr '\n' ' ')"
    write_launcher "$build/perf_analyzer"
    rm -rf "$DEST"
    mv "$build" "$DEST"
    rm -rf "$work"
}

install
if [ "${1:-}" = "--install" ]; then
    echo "$LAUNCHER"
    exit 0
fi
exec "$LAUNCHER" "$@"
