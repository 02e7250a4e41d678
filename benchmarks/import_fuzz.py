"""Importer fuzzing at scale: N random ONNX graphs (certify.audit.import_fuzz) imported and compared with
onnxruntime at random points; prints how many were imported, refused (ModelError/UnsupportedOpError),
rejected by onnxruntime itself (invalid), and the findings: mismatches (onnxruntime's output outside the
sound interval of the imported graph at a point, or a different output size) and crashes (any other
exception). Graph k is drawn from numpy seed SEED + k, so a finding is reproduced by its seed:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/import_fuzz.py --graphs 1000 [--seed 0] [--show 20]
    .venv/bin/python benchmarks/import_fuzz.py --replay 87        # one graph: its ops and the outcome

Exit status 1 when there is a mismatch or a crash.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certify.audit.import_fuzz import NumpySource, fuzz_one  # noqa: E402


def _reason(message: str) -> str:
    """A short class for a refusal message (the op and why), to count them."""
    text = message.split("unsupported operator(s): ", 1)[-1]
    return text.split(" at node")[0][:90]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", type=int, default=3, help="random points per graph")
    ap.add_argument("--show", type=int, default=20, help="findings listed in full")
    ap.add_argument("--replay", type=int, metavar="SEED", help="run the graph of this seed only, verbosely")
    ap.add_argument("--regular-pools", action="store_true",
                    help="pools with symmetric pads <= kernel // 2 and no dilation (the CI test's setting)")
    args = ap.parse_args(argv)
    if args.replay is not None:
        outcome, model, ops = fuzz_one(NumpySource(args.replay), args.points, args.regular_pools)
        print(f"seed {args.replay}: {outcome.status}\n  ops: {ops}\n  {outcome.message}")
        return 1 if outcome.status in ("mismatch", "crash") else 0
    counts: collections.Counter = collections.Counter()
    refusals: collections.Counter = collections.Counter()
    findings = []
    t0 = time.perf_counter()
    for k in range(args.graphs):
        seed = args.seed + k
        outcome, _, ops = fuzz_one(NumpySource(seed), args.points, args.regular_pools)
        counts[outcome.status] += 1
        if outcome.status == "refused":
            refusals[_reason(outcome.message)] += 1
        if outcome.status in ("mismatch", "crash"):
            findings.append((seed, outcome, ops))
    dt = time.perf_counter() - t0
    print(f"{args.graphs} graphs (seeds {args.seed}..{args.seed + args.graphs - 1}) in {dt:.1f}s: "
          f"imported {counts['imported']}, refused {counts['refused']}, invalid for onnxruntime "
          f"{counts['invalid']}, mismatches {counts['mismatch']}, crashes {counts['crash']}")
    if refusals:
        print("\nrefusals by reason:")
        for why, n in refusals.most_common():
            print(f"  {n:4d}  {why}")
    if findings:
        print("\nfindings (seed, status, message, ops):")
        for seed, o, ops in findings[: args.show]:
            print(f"  seed {seed}: {o.status}: {o.message[:200]}\n    ops: {ops}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
