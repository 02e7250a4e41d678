#!/usr/bin/env bash
# VNN-COMP tool interface: prepare_instance.sh VERSION CATEGORY ONNX VNNLIB
# Checks the arguments and that certify can run; stops leftover runs of an earlier instance. Exit 0 = ready.
set -uo pipefail
if [ $# -ne 4 ]; then
    echo "usage: $0 VERSION CATEGORY ONNX VNNLIB" >&2; exit 1
fi
VERSION=$1 CATEGORY=$2 ONNX=$3 VNNLIB=$4
[ "$VERSION" = "v1" ] || { echo "$0: unsupported interface version '$VERSION' (expected v1)" >&2; exit 1; }
for f in "$ONNX" "$VNNLIB"; do
    [ -r "$f" ] || { echo "$0: $f: no such file" >&2; exit 1; }
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CERTIFY=${CERTIFY:-$ROOT/.venv/bin/certify}
[ -x "$CERTIFY" ] || CERTIFY=$(command -v certify) || { echo "$0: certify is not installed (run scripts/setup.sh)" >&2; exit 1; }
pkill -f "certify verify .*--vnncomp-result" 2>/dev/null || true
echo "prepared $CATEGORY: $(basename "$ONNX") $(basename "$VNNLIB")"
exit 0
