#!/usr/bin/env bash
# Sets up everything the test suite needs and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
