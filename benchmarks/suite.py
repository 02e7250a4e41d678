"""Run ``certify``'s ``auto`` method over a shared VNN-COMP suite and score it against the expected results.

    python benchmarks/suite.py acasxu [--timeout 116] [--every 1] [--threads 1]

Prints per-verdict counts, wrong answers (proved on an expected-sat instance, falsified on an
expected-unsat one: a falsified answer always carries a replayed counterexample, so it would
contradict the published label), the VNN-COMP score (+10 per correct answer, -150 per wrong one)
and the median time per instance, as markdown.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time

import torch

from certify import api
from certify.models import load_model
from certify.results import Verdict
from certify.vnnlib import read_vnnlib

from common import markdown, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=["acasxu", "mnist_fc"])
    ap.add_argument("--timeout", type=float, default=None, help="override the suite's per-instance timeout")
    ap.add_argument("--every", type=int, default=1, help="take every k-th instance")
    ap.add_argument("--method", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = shared(args.bench)
    with open(root / "expected_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:: args.every]
    models, props = {}, {}
    tally = {"proved": 0, "falsified": 0, "unknown": 0, "wrong": 0}
    by_expected: dict[str, dict[str, int]] = {}
    times = []
    t_all = time.perf_counter()
    for row in rows:
        model = models.setdefault(row["onnx"], load_model(root / row["onnx"]))
        prop = props.setdefault(row["vnnlib"], read_vnnlib(root / row["vnnlib"]))
        timeout = args.timeout if args.timeout is not None else float(row["timeout_s"])
        t0 = time.perf_counter()
        result = api.verify(model, prop, args.method, timeout=timeout)
        times.append(time.perf_counter() - t0)
        verdict = result.verdict.value
        tally[verdict] += 1
        by_expected.setdefault(row["expected"], {}).setdefault(verdict, 0)
        by_expected[row["expected"]][verdict] += 1
        wrong = (result.verdict is Verdict.PROVED and row["expected"] == "sat") or (
            result.verdict is Verdict.FALSIFIED and row["expected"] == "unsat")
        if wrong:
            tally["wrong"] += 1
            print(f"WRONG: {row['onnx']} {row['vnnlib']} expected {row['expected']} got {verdict}")
    solved = tally["proved"] + tally["falsified"] - tally["wrong"]
    score = 10 * solved - 150 * tally["wrong"]
    print(markdown([[args.bench, len(rows), tally["proved"], tally["falsified"], tally["unknown"], tally["wrong"],
                     score, f"{statistics.median(times):.3f}", f"{time.perf_counter() - t_all:.1f}"]],
                   ["suite", "instances", "proved", "falsified", "unknown", "wrong", "score", "median s", "total s"]))
    print()
    print(markdown([[exp, *(counts.get(v, 0) for v in ("proved", "falsified", "unknown"))]
                    for exp, counts in sorted(by_expected.items())],
                   ["expected", "proved", "falsified", "unknown"]))


if __name__ == "__main__":
    main()
