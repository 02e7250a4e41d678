#!/usr/bin/env bash
# Set up, then run the test suite (one torch thread per process: 2-core machines slow down when oversubscribed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec .venv/bin/python -m pytest -q "$@"
