"""Branch-and-bound throughput (issue 16, items 1, 2 and 4) in one run, each figure beside its baseline
run in the same process: input splitting on ACAS Xu with CROWN refining every value against only the
unstable ones; ReLU splitting on MNIST-FC with BaBSR alone against filtered smart branching; alpha-CROWN
at batch 1 on MNIST 256x6. Domains per second count every domain bounded, closed or not, sound
re-certification included.

    .venv/bin/python benchmarks/bab_throughput.py [--seconds 30]
"""
from __future__ import annotations

import argparse
import time

import torch

from common import shared

from certify.budget import Budget
from certify.engine.alpha import AlphaOptions, alpha_crown_lower
from certify.engine.bab import InputSplitOptions, ReluSplitOptions
from certify.models import load_model
from certify.vnnlib import read_vnnlib
from verifiers.bab import BaB, BaBOptions

INPUT = [("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", "prop_3.vnnlib"),
         ("acasxu", "ACASXU_run2a_3_3_batch_2000.onnx", "prop_2.vnnlib")]
RELU = [("mnist_fc", "mnist-net_256x4.onnx", "prop_0_0.05.vnnlib"),
        ("mnist_fc", "mnist-net_256x6.onnx", "prop_0_0.05.vnnlib")]


def _load(bench: str, onnx: str, vnnlib: str):
    root = shared(bench)
    model = load_model(root / "onnx" / onnx)
    return model, read_vnnlib(root / "vnnlib" / vnnlib, model.n_inputs, model.n_outputs)


def _bab(model, prop, options: BaBOptions, seconds: float) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    r = BaB().verify(model, prop, options=options, budget=Budget(seconds))
    dt = time.perf_counter() - t0
    return r.verdict.value, r.stats.get("domains", 0), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="budget per search (default 30)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for bench, onnx, vnnlib in INPUT:
        model, prop = _load(bench, onnx, vnnlib)
        for label, unstable in (("every value refined", False), ("unstable values only", True)):
            opts = BaBOptions(attack=False, split=InputSplitOptions(only_unstable=unstable))
            verdict, n, dt = _bab(model, prop, opts, args.seconds)
            rows.append((f"input split, {onnx[13:16]} {vnnlib[:-7]}", label, verdict, n, dt))
    for bench, onnx, vnnlib in RELU:
        model, prop = _load(bench, onnx, vnnlib)
        for label, k in (("BaBSR", 1), ("filtered smart branching (4)", 4)):
            opts = BaBOptions(attack=False, relu=ReluSplitOptions(candidates=k))
            verdict, n, dt = _bab(model, prop, opts, args.seconds)
            rows.append((f"ReLU split, {onnx[10:15]} {vnnlib[:-7]}", label, verdict, n, dt))
    print("| search | variant | verdict | domains | seconds | domains/s |")
    print("|---|---|---|---|---|---|")
    for name, label, verdict, n, dt in rows:
        print(f"| {name} | {label} | {verdict} | {n} | {dt:.1f} | {n / dt:.0f} |")
    model, prop = _load("mnist_fc", "mnist-net_256x6.onnx", "prop_0_0.03.vnnlib")
    spec = prop.specs[0].reshape_input(model.input_shape)
    C, d, _ = spec.matrix()
    alpha_crown_lower(model.graph, spec.input, C, d, AlphaOptions())  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        alpha_crown_lower(model.graph, spec.input, C, d, AlphaOptions())
        times.append(time.perf_counter() - t0)
    print(f"\nalpha-CROWN (20 iterations, sound re-certification included), 256x6 prop_0_0.03, batch 1: "
          f"best of 3 {min(times):.2f} s (target 0.5 s)")


if __name__ == "__main__":
    main()
