#!/usr/bin/env bash
# Triton's perf_analyzer on this machine, fetched once into .cache/perf_analyzer/.
#
#   scripts/perf_analyzer.sh --install      fetch (if not yet there) and print the launcher's path
#   scripts/perf_analyzer.sh ARGS...        fetch (if not yet there) and run perf_analyzer ARGS...
#
# `pip install perf-analyzer` gives a placeholder without a binary on glibc < 2.38: the real
# wheels are tagged manylinux_2_38. So: download that wheel (no install), download Debian trixie's
# libc6, libstdc++6 and libgcc-s1 with a private apt state (nothing installed or configured
# system-wide), unpack both under .cache/perf_analyzer/, and start the binary through trixie's
# loader. Exits non-zero with a one-line reason on stderr when a download is impossible.
set -euo pipefail
VERSION="${PERF_ANALYZER_VERSION:-2.60.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/.cache/perf_analyzer"
LAUNCHER="$CACHE/perf_analyzer"
STAMP="$CACHE/installed-$VERSION"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

fail() { echo "perf_analyzer.sh: $*" >&2; exit 1; }

install() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock -w 300 9 || fail "another install holds $CACHE/.lock"
    [ -f "$STAMP" ] && return 0
    local work="$CACHE/work"
    rm -rf "$work" "$CACHE/wheel" "$CACHE/sysroot"
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

    mkdir -p "$CACHE/wheel" "$CACHE/sysroot"
    "$PYTHON" -m zipfile -e "$work"/wheel/*.whl "$CACHE/wheel"
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$CACHE/sysroot"; done
    chmod +x "$CACHE/wheel/perf_analyzer/bin/perf_analyzer"
    cat >"$LAUNCHER" <<EOF
#!/bin/sh
# perf_analyzer $VERSION through Debian trixie's loader (glibc >= 2.38); written by scripts/perf_analyzer.sh
lib="$CACHE/sysroot/usr/lib/x86_64-linux-gnu"
exec "\$lib/ld-linux-x86-64.so.2" --library-path "\$lib" "$CACHE/wheel/perf_analyzer/bin/perf_analyzer" "\$@"
EOF
    chmod +x "$LAUNCHER"
    # It must start: with no arguments it prints its usage and exits 1.
    "$LAUNCHER" >"$work/probe.log" 2>&1 || true
    grep -q -- "--concurrency-range" "$work/probe.log" \
        || fail "the fetched perf_analyzer does not start: $(head -3 "$work/probe.log" | tr '\n' ' ')"
    rm -rf "$work"
    touch "$STAMP"
}

install
if [ "${1:-}" = "--install" ]; then
    echo "$LAUNCHER"
    exit 0
fi
exec "$LAUNCHER" "$@"
