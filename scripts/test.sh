#!/usr/bin/env bash
# Sets up everything the test suite needs and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# The shared-cache tests start a real redis-server on a free loopback port.
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
exec .venv/bin/python -m pytest "$@"
