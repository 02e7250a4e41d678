"""The exact backends (``smt``: z3, ``milp``: HiGHS) beside Marabou (maraboupy, ``pip install maraboupy``)
on the same small instances, in the same process, as solved counts and time ratios.

    python benchmarks/exact_peer.py [--nets 20] [--timeout 60] [--acas 1_6:prop_3,4_2:prop_4]

Instances: ``--nets`` random ReLU networks (3-5 inputs, two hidden layers of 8-16, 3 outputs) with a
box and the unsafe region ``y_0 <= d``, ``d`` set from sampled outputs so that about half hold; each
is written as an ONNX file and a VNN-LIB file, which all three tools read (Marabou with its own
parsers). With ``--acas NET:PROP,...`` also those rows of ../shared/benchmarks/acasxu/expected_results.csv
(ones the exact backends finish; most ACAS Xu properties take them far longer than a minute).
An answer is wrong when it contradicts the expected one (for random networks: another tool's
definite answer). No attack first: every answer is the exact backend's own.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from certify import api, bench
from certify.models import load_model
from certify.vnncomp import answer
from certify.vnnlib import read_vnnlib

from common import markdown, shared
from marabou_peer import _marabou


def _random_instances(n: int, folder: Path) -> list[tuple[Path, Path, str | None]]:
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        n_in = int(rng.integers(3, 6))
        h1, h2 = int(rng.integers(8, 17)), int(rng.integers(8, 17))
        net = torch.nn.Sequential(torch.nn.Linear(n_in, h1), torch.nn.ReLU(), torch.nn.Linear(h1, h2), torch.nn.ReLU(),
                                  torch.nn.Linear(h2, 3)).eval()
        lo = rng.uniform(-1, 0, n_in)
        hi = lo + rng.uniform(0.2, 1.0, n_in)
        x = torch.tensor(rng.uniform(lo, hi, (4000, n_in)), dtype=torch.float32)
        with torch.no_grad():
            y0 = net(x)[:, 0].double().numpy()
        d = float(y0.min() - (0.02 if seed % 2 else -0.02) * (1 + y0.std()))
        onnx_path = folder / f"net{seed}.onnx"
        torch.onnx.export(net, torch.zeros(1, n_in), onnx_path, dynamo=False, input_names=["x"], output_names=["y"])
        lines = [f"(declare-const X_{i} Real)" for i in range(n_in)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
        for i in range(n_in):
            lines += [f"(assert (>= X_{i} {float(lo[i])!r}))", f"(assert (<= X_{i} {float(hi[i])!r}))"]
        lines.append(f"(assert (<= Y_0 {d!r}))")
        spec_path = folder / f"net{seed}.vnnlib"
        spec_path.write_text("\n".join(lines) + "\n")
        out.append((onnx_path, spec_path, None))
    return out


def _ours(method: str, onnx: Path, vnnlib: Path, timeout: float) -> tuple[str, float]:
    model, prop = load_model(onnx), read_vnnlib(vnnlib)
    t0 = time.perf_counter()
    result = api.verify(model, prop, method, timeout=timeout, attack=False)
    return answer([result]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--acas", default="", help="comma-separated NET:PROP, e.g. 1_6:prop_3")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tools = ("smt", "milp", "Marabou")
    with tempfile.TemporaryDirectory() as tmp:
        instances = _random_instances(args.nets, Path(tmp))
        wanted = {tuple(w.split(":")) for w in args.acas.split(",") if w}
        if wanted:
            instances += [(i.onnx, i.vnnlib, i.expected) for i in
                          bench.read_instances(shared("acasxu") / "expected_results.csv")
                          if (i.onnx.name.replace("ACASXU_run2a_", "").replace("_batch_2000.onnx", ""), i.vnnlib.stem)
                          in wanted]
        rows, runs = [], {t: [] for t in tools}
        for onnx, vnnlib, expected in instances:
            got = {m: _ours(m, onnx, vnnlib, args.timeout) for m in ("smt", "milp")}
            word, dt, _ = _marabou(onnx, vnnlib, args.timeout)
            got["Marabou"] = (word, dt)
            definite = {a for a, _ in got.values() if a in ("sat", "unsat")}
            truth = expected if expected in ("sat", "unsat") else (definite.pop() if len(definite) == 1 else None)
            for t in tools:
                runs[t].append((got[t][0], got[t][1], truth))
            name = onnx.name.replace("ACASXU_run2a_", "").replace("_batch_2000.onnx", "").replace(".onnx", "")
            rows.append([name, vnnlib.stem, truth or "?", *[f"{got[t][0]} {got[t][1]:.2f}" for t in tools]])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)

    def tally(run):
        solved = sum(a in ("sat", "unsat") and (e is None or a == e) for a, _, e in run)
        wrong = sum(a in ("sat", "unsat") and e is not None and a != e for a, _, e in run)
        times = [t for _, t, _ in run]
        return solved, wrong, statistics.median(times), sum(times)

    print(markdown(rows, ["net", "property", "answer", *[f"{t} (answer s)" for t in tools]]))
    print()
    stats = {t: tally(runs[t]) for t in tools}
    table = [[t, len(runs[t]), *stats[t][:2], f"{stats[t][2]:.3f}", f"{stats[t][3]:.1f}"] for t in tools]
    mb = stats["Marabou"]
    for t in ("smt", "milp"):
        table.append([f"ratio {t} / Marabou", "", "", "", f"{stats[t][2] / mb[2]:.3f}", f"{stats[t][3] / mb[3]:.3f}"])
    print(markdown(table, ["tool", "instances", "solved", "wrong", "median s", "total s"]))


if __name__ == "__main__":
    main()
