#!/usr/bin/env bash
# VNN-COMP tool interface: run_instance.sh VERSION CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes RESULTS_FILE: 'sat' and the counterexample ((X_i v) ... (Y_j v)) (replayed on onnxruntime before it is
# written), 'unsat', 'timeout', 'unknown' or 'error' -- the same writer as 'certify verify --vnncomp-result'.
set -uo pipefail
if [ $# -ne 6 ]; then
    echo "usage: $0 VERSION CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2; exit 1
fi
VERSION=$1 CATEGORY=$2 ONNX=$3 VNNLIB=$4 RESULTS=$5 TIMEOUT=$6
[ "$VERSION" = "v1" ] || { echo "$0: unsupported interface version '$VERSION' (expected v1)" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CERTIFY=${CERTIFY:-$ROOT/.venv/bin/certify}
[ -x "$CERTIFY" ] || CERTIFY=$(command -v certify) || { echo error > "$RESULTS"; echo "$0: certify is not installed" >&2; exit 1; }
"$CERTIFY" verify "$ONNX" "$VNNLIB" --timeout "$TIMEOUT" --vnncomp-result "$RESULTS" --quiet
rc=$?
# 0 proved, 1 falsified, 3 unknown/timeout: answers; 4 bad input and 5 internal error wrote 'error'
case $rc in 0|1|3|4|5) exit 0 ;; *) [ -s "$RESULTS" ] || echo error > "$RESULTS"; exit 0 ;; esac
