"""Cost of the SDP backends against network size: cvxpy/Clarabel (``sdp``) vs Burer-Monteiro (``sdp-bm``),
both certified by the same dual check, on PGD-trained digits MLPs (one test point, its runner-up row).

    .venv/bin/python benchmarks/sdp_cost.py [--cvx-limit 120] [--widths 8,16,32,48,64,128]

Prints per net: variables (input + active/unstable neurons), time and certified bound of each, the
relative gap of sdp-bm to sdp, and CROWN's bound. cvxpy runs with a time limit (``--cvx-limit`` s);
"did not finish" means that limit (RESULTS: 600 s, the issue's 10 minutes).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sdp_common import digits, from_module, pgd_robust, rows_of, sound_crown_lower, spec_of, train_pgd  # noqa: E402

from certify.sdp.bm import BMSDP  # noqa: E402
from certify.sdp.bounds import row_bound  # noqa: E402
from certify.sdp.certificate import certify  # noqa: E402
from certify.sdp.chain import lower_chain  # noqa: E402
from certify.sdp.cvx import CvxSDP  # noqa: E402
from certify.sdp.problem import build  # noqa: E402
from verifiers.sdp import _start  # noqa: E402

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cvx-limit", type=float, default=120.0)
    ap.add_argument("--widths", default="8,16,32,48,64,128")
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--cvx-max-vars", type=int, default=200, help="cvxpy is not attempted above (memory: its "
                    "canonicalisation took 12 GB at 170 variables)")
    args = ap.parse_args()
    xtr, ytr, xte, yte = digits()
    print("| hidden (2 layers) | variables | sdp time (s) | sdp bound | sdp-bm time (s) | sdp-bm bound | "
          "rel. gap | speed-up | crown bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in [int(v) for v in args.widths.split(",")]:
        net = train_pgd(f"digits_{w}x2", xtr, ytr, [w, w], 0.1, 20)
        model = from_module(net, (64,))
        ok = pgd_robust(net, xte[:50], yte[:50], args.eps)
        i = int(np.nonzero(ok)[0][0])
        spec = spec_of(xte[i], int(yte[i]), args.eps)
        C, d = rows_of(spec)
        crown = sound_crown_lower(model.graph, spec.input, C, d)[0]
        r = int(crown.argmin())
        chain = lower_chain(model.graph, spec.input)
        problem = build(chain)
        c, dr = C[0, r].numpy(), float(d[0, r])
        t0 = time.perf_counter()
        bm = BMSDP(problem)
        start = problem.to_scaled(_start(chain))
        b_bm = row_bound(chain, problem, lambda obj: bm.solve(obj, start=start).certificate, c, dr)[0]
        t_bm = time.perf_counter() - t0
        if problem.n > args.cvx_max_vars:
            print(f"| {w} | {problem.n} | not attempted (> {args.cvx_max_vars} variables) | - | {t_bm:.1f} | "
                  f"{b_bm:.5f} | - | - | {float(crown[r]):.5f} |", flush=True)
            continue
        t0 = time.perf_counter()
        cvx = CvxSDP(problem)
        status = {}

        def solve(obj):
            lam, st = cvx.solve(obj, args.cvx_limit)
            status["s"] = st
            return certify(problem, lam, obj) if lam is not None else None

        b_cvx = row_bound(chain, problem, solve, c, dr)[0]
        t_cvx = time.perf_counter() - t0
        done = t_cvx < args.cvx_limit and math.isfinite(b_cvx) and "inaccurate" not in status.get("s", "x") or \
            status.get("s") == "optimal_inaccurate" and t_cvx < args.cvx_limit
        gap = abs(b_bm - b_cvx) / max(1.0, abs(b_cvx)) if done else math.nan
        cvx_time = f"{t_cvx:.1f}" if done else f"> {args.cvx_limit:.0f} (did not finish)"
        print(f"| {w} | {problem.n} | {cvx_time} | {b_cvx:.5f} | {t_bm:.1f} | {b_bm:.5f} | {gap:.1e} | "
              f"{t_cvx / t_bm:.1f}x | {float(crown[r]):.5f} |", flush=True)


if __name__ == "__main__":
    main()
