#!/usr/bin/env bash
# Sets up everything the test suite needs and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# Debian packages some tests drive: docker-compose validates deploy/compose.yaml offline;
# h2load and wrk are the benchmark's compiled load generators (its smoke test runs them).
apt_install() {  # apt_install PACKAGE COMMAND
    command -v "$2" >/dev/null && return 0
    apt-get install -y -q "$1" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$1" >/dev/null 2>&1; } \
        || echo "test.sh: could not install $1; the tests that need $2 will skip or say so" >&2
}
if ! docker compose version >/dev/null 2>&1; then apt_install docker-compose docker-compose; fi
apt_install nghttp2-client h2load
apt_install wrk wrk
# The shared-cache tests start a real redis-server on a free loopback port.
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
exec .venv/bin/python -m pytest "$@"
