"""Tightness of the SDP on PGD-trained MLPs (digits, mnist5k): points certified by crown, alpha-crown and
sdp-bm (no BaB), with the exact answer (milp) as the ceiling, and the median gap of each bound to the exact
minimum on each point's hardest row; then the certified L2 radius of sdp-bm against CROWN's.

    .venv/bin/python benchmarks/sdp_tightness.py [--points 100] [--bm-seconds 240] [--nets digits16,digits32,mnist16]

eps is the smallest of a grid at which alpha-CROWN certifies fewer than half of the PGD-robust points
among the first 30. crown, alpha-crown and milp run on every point; sdp-bm (expensive) on points in order
until ``--bm-seconds`` per net are spent (``--bm-row-seconds`` caps one row), and only on rows alpha-CROWN leaves open plus the hardest row
(a point counts as certified by sdp-bm when every row is, by max(alpha-crown, sdp-bm): both are sound).
The fraction of alpha-CROWN's gap sdp-bm closes is ``1 - (exact - bm) / (exact - alpha)`` on the hardest row.
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
from sdp_common import (digits, from_module, mnist5k, pgd_robust, rows_of, sound_crown_lower, spec_of,  # noqa: E402
                        train_pgd, accuracy)

from certify.budget import Budget  # noqa: E402
from certify.engine.alpha import AlphaOptions, alpha_crown_lower  # noqa: E402
from certify.pwl import lower  # noqa: E402
from certify.sdp.bm import BMSDP  # noqa: E402
from certify.sdp.bounds import row_bound  # noqa: E402
from certify.sdp.chain import lower_chain  # noqa: E402
from certify.sdp.problem import build  # noqa: E402
from verifiers.milp import MILPSolver  # noqa: E402
from verifiers.sdp import _start  # noqa: E402

warnings.filterwarnings("ignore")
EPS_GRID = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2)

NETS = {
    "digits16": ("digits", [16, 16], 0.1, 20),
    "digits32": ("digits", [32, 32], 0.1, 20),
    "mnist16": ("mnist5k", [16, 16], 0.1, 10),
}


def alpha_rows(model, spec):
    C, d = rows_of(spec)
    return alpha_crown_lower(model.graph, spec.input, C, d, AlphaOptions())[0]


def crown_rows(model, spec, p=math.inf):
    C, d = rows_of(spec)
    return sound_crown_lower(model.graph, spec.input, C, d)[0]


def exact_row(model, spec, r: int, seconds: float = 60.0) -> float:
    """The exact minimum of row ``r`` (milp's program: the runtime's rounding as variables), nan on timeout."""
    C, d = rows_of(spec)
    program = lower(model.graph, spec.input)
    A, a = program.output_rows(C[0, r:r + 1].numpy())
    value, _ = MILPSolver(program).minimum(A, a, d[0, r:r + 1].numpy(), seconds)
    return value


class BM:
    """sdp-bm row bounds of one spec, the problem built once."""

    def __init__(self, model, spec, row_seconds: float = math.inf):
        self.chain = lower_chain(model.graph, spec.input)
        from verifiers.sdp import _l2

        self.problem = build(self.chain, _l2(spec.input))
        self.solver = BMSDP(self.problem)
        self.start = self.problem.to_scaled(_start(self.chain))
        self.C, self.d = rows_of(spec)
        self.row_seconds = row_seconds

    def row(self, r: int) -> float:
        return row_bound(self.chain, self.problem,
                         lambda obj: self.solver.solve(obj, start=self.start, seconds=self.row_seconds).certificate,
                         self.C[0, r].numpy(), float(self.d[0, r]))[0]


def choose_eps(model, net, x, y) -> tuple[float, np.ndarray]:
    for eps in EPS_GRID:
        ok = pgd_robust(net, x[:30], y[:30], eps)
        if not ok.any():
            continue
        cert = sum(bool((alpha_rows(model, spec_of(x[i], int(y[i]), eps)) > 0).all()) for i in np.nonzero(ok)[0])
        if cert < 0.5 * ok.sum():
            return eps, ok
    return EPS_GRID[-1], ok


def run_net(key: str, points: int, bm_seconds: float, row_seconds: float = math.inf) -> dict:
    data, widths, train_eps, epochs = NETS[key]
    xtr, ytr, xte, yte = digits() if data == "digits" else mnist5k()
    net = train_pgd(f"{data}v2_{widths[0]}x{len(widths)}", xtr, ytr, widths, train_eps, epochs)
    model = from_module(net, (xtr.shape[1],))
    eps, _ = choose_eps(model, net, xte, yte)
    x, y = xte[:points], yte[:points]
    robust = pgd_robust(net, x, y, eps)
    counts = {"pgd-robust": int(robust.sum()), "crown": 0, "alpha-crown": 0, "sdp-bm": 0, "milp": 0, "bm_points": 0,
              "bm_robust": 0, "bm_alpha": 0, "bm_milp": 0}
    gaps: dict[str, list[float]] = {"crown": [], "alpha-crown": [], "sdp-bm": []}
    closed: list[float] = []
    t_bm = 0.0
    t_start = time.perf_counter()
    todo = np.nonzero(robust)[0]
    for done, i in enumerate(todo, 1):
        spec = spec_of(x[i], int(y[i]), eps)
        cr, al = crown_rows(model, spec), alpha_rows(model, spec)
        counts["crown"] += bool((cr > 0).all())
        counts["alpha-crown"] += bool((al > 0).all())
        r = int(al.argmin())
        ex = exact_row(model, spec, r)
        milp_ok = bool(ex > 0) and all(exact_row(model, spec, k) > 0 for k in range(al.numel()) if k != r and al[k] <= 0)
        counts["milp"] += milp_ok
        if t_bm < bm_seconds:
            t0 = time.perf_counter()
            bm = BM(model, spec, row_seconds)
            rows = {r} | {k for k in range(al.numel()) if al[k] <= 0}
            b = {k: bm.row(k) for k in sorted(rows)}
            t_bm += time.perf_counter() - t0
            ok = all(max(float(al[k]), b[k]) > 0 for k in rows)
            counts["sdp-bm"] += ok
            counts["bm_points"] += 1
            counts["bm_alpha"] += bool((al > 0).all())
            counts["bm_milp"] += milp_ok
            if math.isfinite(ex):
                for name, v in (("crown", float(cr[r])), ("alpha-crown", float(al[r])), ("sdp-bm", b[r])):
                    gaps[name].append(ex - v)
                if ex - float(al[r]) > 1e-9:
                    closed.append(1 - (ex - max(b[r], float(al[r]))) / (ex - float(al[r])))
        print(f"[{key} {done}/{len(todo)}] certified crown {counts['crown']} alpha {counts['alpha-crown']} "
              f"sdp-bm {counts['sdp-bm']} milp {counts['milp']}; {time.perf_counter() - t_start:.0f} s",
              file=sys.stderr, flush=True)
    med = {k: float(np.median(v)) if v else math.nan for k, v in gaps.items()}
    return dict(net=key, widths=widths, acc=accuracy(net, xte, yte), eps=eps, counts=counts, median_gap=med,
                closed=float(np.median(closed)) if closed else math.nan, bm_time=t_bm, points=points)


def l2_radius(model, spec_fn, hi: float, method: str, steps: int = 6) -> float:
    """Largest L2 eps (bisection from 0 to ``hi``) at which every row is certified by ``method``."""
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        spec = spec_fn(mid)
        rows = crown_rows(model, spec)
        ok = bool((rows > 0).all())
        if not ok and method == "sdp-bm":
            bm = BM(model, spec)
            ok = all(float(rows[k]) > 0 or bm.row(k) > 0 for k in range(rows.numel()))
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--bm-seconds", type=float, default=240.0)
    ap.add_argument("--nets", default="digits16,digits32,mnist16")
    ap.add_argument("--l2-points", type=int, default=5)
    ap.add_argument("--bm-row-seconds", type=float, default=math.inf,
                    help="time limit of sdp-bm per row (its certificate at that point is still valid)")
    args = ap.parse_args()
    t0 = time.time()
    print("| net | test acc | eps | PGD-robust | crown | alpha-crown | milp (exact) | sdp-bm on its points "
          "(alpha / milp there) | median gap crown / alpha / sdp-bm | alpha gap closed (median) | sdp-bm time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in args.nets.split(","):
        s = run_net(key, args.points, args.bm_seconds, args.bm_row_seconds)
        c, g = s["counts"], s["median_gap"]
        print(f"| {key} {s['widths']} | {s['acc']:.3f} | {s['eps']} | {c['pgd-robust']}/{s['points']} | {c['crown']} | "
              f"{c['alpha-crown']} | {c['milp']} | {c['sdp-bm']}/{c['bm_points']} ({c['bm_alpha']} / {c['bm_milp']}) | "
              f"{g['crown']:.3g} / {g['alpha-crown']:.3g} / {g['sdp-bm']:.3g} | {s['closed']:.2f} | {s['bm_time']:.0f} s |",
              flush=True)
    if args.l2_points:
        xtr, ytr, xte, yte = digits()
        net = train_pgd("digits_16x2", xtr, ytr, [16, 16], 0.1, 20)
        model = from_module(net, (64,))
        print("\n| point | label | CROWN L2 radius | sdp-bm L2 radius | ratio |")
        print("|---|---|---|---|---|")
        for i in range(args.l2_points):
            def spec_fn(e, i=i):
                return spec_of(xte[i], int(yte[i]), e, p=2)
            rc = l2_radius(model, spec_fn, 2.0, "crown", 10)
            rb = l2_radius(model, spec_fn, 2.0 * rc if rc > 0 else 0.5, "sdp-bm", 5) if rc > 0 else 0.0
            rb = max(rb, rc)
            print(f"| {i} | {yte[i]} | {rc:.4f} | {rb:.4f} | {rb / rc if rc else math.nan:.2f} |", flush=True)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
