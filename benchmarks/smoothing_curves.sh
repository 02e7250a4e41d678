#!/usr/bin/env bash
# Certified-accuracy curves of randomized smoothing on the bundled data set (scikit-learn's digits, test split
# of 300), sigma in {0.12, 0.25, 0.5}, one noise-trained base network per sigma, beside the largest L2 radius
# CROWN proves for the same checkpoints. Writes benchmarks/smoothing_digits.png and prints the tables.
#   bash benchmarks/smoothing_curves.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/certify_smoothing}
mkdir -p "$out"
export OMP_NUM_THREADS=1
for s in 0.12 0.25 0.5; do
    .venv/bin/certify train --data digits:train --arch certify.examples.digits:DigitsMLP --arch-kwargs '{"hidden": 64}' \
        --noise-sigma "$s" --epochs 60 --test digits:test --out "$out/digits_sigma$s.pt"
done
.venv/bin/certify smooth "$out"/digits_sigma0.12.pt "$out"/digits_sigma0.25.pt "$out"/digits_sigma0.5.pt \
    --sigma 0.12 0.25 0.5 --data digits:test --compare crown --radii 0,0.25,0.5,0.75,1,1.25,1.5,2 \
    --plot benchmarks/smoothing_digits.png --csv "$out/rows.csv" --quiet
