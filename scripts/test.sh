#!/usr/bin/env bash
# Sets up everything the test suite needs and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# docker-compose validates deploy/compose.yaml offline (its test skips without it).
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    apt-get install -y -q docker-compose >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null 2>&1; } \
        || echo "test.sh: could not install docker-compose; the compose validation test will skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
