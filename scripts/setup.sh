#!/usr/bin/env bash
# Create .venv and install certify with its test extras. Idempotent: a second run only checks.
# On machines with a local CPU wheel of torch 2.13.0 (pip's find-links), that wheel is installed first,
# so that no multi-GB CUDA build is downloaded; elsewhere the PyTorch CPU index, then PyPI, are tried.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || { echo "setup: creating .venv" >&2; "$PYTHON" -m venv .venv; }
PY=.venv/bin/python
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch (CPU build; about a minute)" >&2
    "$PY" -m pip install -q "torch==2.13.0" \
        || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu \
        || "$PY" -m pip install -q "torch>=2.1"
fi
stamp=.venv/.certify-installed
want=$(cat pyproject.toml | "$PY" -c "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$PY" -c "import certify, pytest, hypothesis" 2>/dev/null; then
    echo "setup: installing certify and its dependencies (onnx, onnxruntime, cvxpy, z3, ...; about a minute)" >&2
    "$PY" -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
fi
# The optional auto_LiRPA reference (tests compare our CROWN against it; skipped when absent). Its 0.3 release
# declares torch < 1.13, so it is installed without dependencies; verifiers/lirpa.py aliases the moved APIs.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('auto_LiRPA') is None)" 2>/dev/null; then
    echo "setup: installing auto_LiRPA 0.3 (optional reference)" >&2
    "$PY" -m pip install -q --no-deps "auto_LiRPA==0.3" "appdirs>=1.4" \
        || echo "setup: auto_LiRPA (optional reference) not installed; its tests will be skipped" >&2
fi
# The optional Ray extra (--ray; its tests start a two-node local cluster, skipped when Ray is absent).
if ! "$PY" -c "import ray" 2>/dev/null; then
    echo "setup: installing Ray (optional extra certify[ray]; about 30 s)" >&2
    "$PY" -m pip install -q "ray>=2.9" || echo "setup: Ray (optional) not installed; its tests will be skipped" >&2
fi
