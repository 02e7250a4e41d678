"""ACAS Xu: certify's ``auto`` chain beside Marabou (maraboupy, ``pip install maraboupy``) on the same
instances, in the same process, one after the other, as solved counts and time ratios.

    python benchmarks/marabou_peer.py [--every 7] [--timeout 60] [--threads 1]

Instances: every k-th row of ../shared/benchmarks/acasxu/expected_results.csv (k = 7: 27 instances
covering properties 1-10). Marabou reads the ONNX file and the VNN-LIB file itself (its own parsers)
and runs single-threaded with the same per-instance timeout. An answer is wrong when it contradicts the
expected one; Marabou's ``sat`` answers are also replayed on onnxruntime through our ``replay.check``
(stated tolerance: ``atol=1e-6`` on the input box, as its counterexamples sit on the boundary).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from contextlib import redirect_stdout

import torch

from certify import api, bench, replay
from certify.vnncomp import answer
from certify.models import load_model
from certify.vnnlib import read_vnnlib

from common import markdown, shared


def _marabou(onnx, vnnlib, timeout: float):
    """Marabou's answer word and seconds; stdout of the solver is swallowed."""
    from maraboupy import Marabou

    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        net = Marabou.read_onnx(str(onnx))
        options = Marabou.createOptions(timeoutInSeconds=max(1, int(timeout)), verbosity=0, numWorkers=1)
        code, values, _ = net.solve(propertyFilename=str(vnnlib), options=options, verbose=False)
    dt = time.perf_counter() - t0
    word = {"sat": "sat", "unsat": "unsat", "TIMEOUT": "timeout"}.get(code, "unknown")
    x = None
    if word == "sat":
        x = [values[v] for v in net.inputVars[0].flatten()]
    return word, dt, x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    instances = bench.read_instances(shared("acasxu") / "expected_results.csv")[:: args.every]
    rows, ours, theirs = [], [], []
    for inst in instances:
        model, prop = load_model(inst.onnx), read_vnnlib(inst.vnnlib)
        t0 = time.perf_counter()
        result = api.verify(model, prop, "auto", timeout=args.timeout)
        mine = answer([result]), time.perf_counter() - t0
        word, dt, x = _marabou(inst.onnx, inst.vnnlib, args.timeout)
        replays = "-"
        if x is not None:
            ok = any(replay.check(model, spec.reshape_input(model.input_shape), torch.tensor(x, dtype=torch.float64),
                                  spec_index=i, atol=1e-6) is not None for i, spec in enumerate(prop.specs))
            replays = "yes" if ok else "NO"
        ours.append((mine[0], mine[1], inst.expected))
        theirs.append((word, dt, inst.expected))
        rows.append([inst.onnx.name.replace("ACASXU_run2a_", "").replace("_batch_2000.onnx", ""), inst.vnnlib.stem,
                     inst.expected, mine[0], f"{mine[1]:.2f}", word, f"{dt:.2f}", replays])
        print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)

    def tally(runs):
        solved = [t for a, t, e in runs if a in ("sat", "unsat") and (e not in ("sat", "unsat") or a == e)]
        wrong = sum(a in ("sat", "unsat") and e in ("sat", "unsat") and a != e for a, _, e in runs)
        times = [t for _, t, _ in runs]
        return len(solved), wrong, statistics.median(times), sum(times)

    (s1, w1, m1, t1), (s2, w2, m2, t2) = tally(ours), tally(theirs)
    print(markdown(rows, ["net", "property", "expected", "certify", "certify s", "Marabou", "Marabou s",
                          "Marabou cex replays"]))
    print()
    print(markdown([["certify auto", len(ours), s1, w1, f"{m1:.2f}", f"{t1:.1f}"],
                    ["Marabou", len(theirs), s2, w2, f"{m2:.2f}", f"{t2:.1f}"],
                    ["ratio certify / Marabou", "", "", "", f"{m1 / m2:.3f}", f"{t1 / t2:.3f}"]],
                   ["tool", "instances", "solved", "wrong", "median s", "total s"]))


if __name__ == "__main__":
    main()
