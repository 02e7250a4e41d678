"""Run ``certify``'s ``auto`` method (or one backend) over a shared VNN-COMP suite, scored against the
expected results: a thin wrapper over ``certify.bench`` (what ``certify bench`` runs) that picks the
suite's ``expected_results.csv`` from ../shared/benchmarks.

    python benchmarks/suite.py acasxu [--timeout 116] [--every 1] [--method auto] [--threads 1]

Prints the summary as markdown: answers (sat = falsified with a replayed counterexample, unsat =
proved), wrong answers (sat on an expected-unsat instance or the reverse), the VNN-COMP score (+10 per
correct answer, -150 per wrong one), median and total time per instance.
"""
from __future__ import annotations

import argparse

import torch

from certify import bench

from common import shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=["acasxu", "mnist_fc"])
    ap.add_argument("--timeout", type=float, default=None, help="override the suite's per-instance timeout")
    ap.add_argument("--every", type=int, default=1, help="take every k-th instance")
    ap.add_argument("--method", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--csv", help="also write per-instance rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    instances = bench.read_instances(shared(args.bench) / "expected_results.csv")[:: args.every]
    outcomes = bench.run(instances, args.method, timeout=args.timeout)
    for o in outcomes:
        if o.wrong:
            print(f"WRONG: {o.onnx} {o.vnnlib}: expected {o.expected}, answered {o.answer}")
    print(bench.markdown(outcomes, args.bench))
    if args.csv:
        bench.write_csv(outcomes, args.csv)


if __name__ == "__main__":
    main()
