#!/usr/bin/env bash
# Sets up (first run) and serves the example model repository on :8000 (HTTP) and :8001 (gRPC).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gateway serve --model-repository examples/models "$@"
