"""Soundness of both SDP backends on many random MLPs (the acceptance run of issue 15; the CI test runs
a derandomised subset): box, L-inf and L2 inputs, both semantics, two rows each. The certified bound
(raw SDP certificate, CROWN not mixed in) must be <= the exact minimum (the independent MILP oracle of
``tests/oracles/milp.py``; for L2 balls, which the oracle does not encode, the smallest of 8,000 sampled
values and the centre, an upper bound of the exact minimum), and is compared with CROWN's bound.

    .venv/bin/python benchmarks/sdp_soundness.py [--instances 120] [--backends sdp,sdp-bm]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_sdp import _exact_rows, _instance, _sampled_rows, _spec  # noqa: E402

from certify.budget import Budget  # noqa: E402
from certify.engine.crown import sound_crown_lower  # noqa: E402
from verifiers.sdp import SDPBMOptions, SDPOptions, sdp_row_bounds  # noqa: E402

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=120)
    ap.add_argument("--backends", default="sdp,sdp-bm")
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    kinds = ("box", "linf", "l2")
    stats = {(b, k): dict(n=0, rows=0, unsound=0, below_crown=0, over_crown=[], to_exact=[], time=0.0)
             for b in args.backends.split(",") for k in kinds}
    t0 = time.time()
    for i in range(args.instances):
        kind = kinds[i % 3]
        case = (int(rng.integers(2**30)), int(rng.integers(2, 5)), [int(w) for w in rng.integers(2, 9, rng.integers(1, 3))],
                int(rng.integers(2, 4)), kind, float(rng.choice([0.05, 0.2, 0.5])), ("runtime", "real")[i % 2])
        model, s, C, d = _instance(*case)
        truth = _sampled_rows(model, s, C, d, 4000) if kind == "l2" else _exact_rows(model, s, C, d)
        crown = sound_crown_lower(model.graph, s, torch.as_tensor(C[None]), torch.as_tensor(d[None]))[0].numpy()
        for backend in args.backends.split(","):
            opts = (SDPOptions if backend == "sdp" else SDPBMOptions)(attack=False, keep_crown=False)
            t1 = time.time()
            b = sdp_row_bounds(model, _spec(s, C, d), opts, Budget(), backend)[0].numpy()
            st = stats[(backend, kind)]
            st["time"] += time.time() - t1
            st["n"] += 1
            st["rows"] += b.size
            st["unsound"] += int(np.sum(b > truth + 1e-7 * (1 + np.abs(truth))))
            st["below_crown"] += int(np.sum(b < crown - 1e-6 * (1 + np.abs(crown))))
            st["over_crown"] += list(b - crown)
            st["to_exact"] += list(truth - b)
        unsound = sum(st["unsound"] for st in stats.values())
        print(f"[{i + 1}/{args.instances}] {kind} {case[6]}: {time.time() - t0:.0f} s, unsound so far {unsound}",
              file=sys.stderr, flush=True)
    print("| backend | input set | instances | rows | bound > exact minimum (unsound) | below CROWN (> 1e-6 rel.) | "
          "median bound - CROWN | median exact - bound | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (backend, kind), st in stats.items():
        print(f"| {backend} | {kind} | {st['n']} | {st['rows']} | {st['unsound']} | {st['below_crown']} | "
              f"{np.median(st['over_crown']):.2e} | {np.median(st['to_exact']):.2e} | {st['time']:.0f} |")
    print(f"\ntotal {time.time() - t0:.0f} s ({args.instances} MLPs; L2 'exact' = sampled upper bound of the minimum)")


if __name__ == "__main__":
    main()
