"""Distributing one hard instance's branch-and-bound across workers: measured per-batch times, simulated
speed-up (the plan is in benchmarks/RESULTS.md, "Distributing one instance's branch-and-bound").

Two measurements on one ACAS Xu instance, one thread:

1. **Static partition** (the naive plan): the input box bisected ``--depth`` times (each time along the
   dimension widest relative to the original box) into K = 2^depth parts, ``bab`` on each part alone.
2. **BaB's own rounds** (the plan): ``bab`` on the whole instance with every bound call timed. Input-split
   BaB works in rounds: a batch of open domains is bounded, the open ones split in two. Domains of a batch
   are independent, so W workers can take 1/W of each batch. From the recorded batches (size n, seconds t),
   fit ``t = a + b n`` (a: fixed cost per call, b: per domain) and simulate a synchronous distributed run:
   each round costs ``a + b n / W + task overhead`` (``--task-ms``, measured by scale_bench.py), summed over
   the rounds, plus the rest of the whole run (what is not bounding: splitting, candidates) undivided.
"""
from __future__ import annotations

import argparse
import heapq
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ACAS = ROOT.parent / "shared" / "benchmarks" / "acasxu"


def parts(prop, depth: int) -> list:
    """K = 2^depth properties whose input boxes tile the property's (float) input box."""
    from certify.sets import Box
    from certify.spec import Property, Spec

    (spec,) = prop.specs
    box = spec.input.bounds()
    width0 = (box.upper - box.lower).reshape(-1).clamp_min(1e-30)
    boxes = [(box.lower.clone(), box.upper.clone())]
    for _ in range(depth):
        nxt = []
        for lo, hi in boxes:
            d = int(torch.argmax(((hi - lo).reshape(-1)) / width0))
            mid = 0.5 * (lo.reshape(-1)[d] + hi.reshape(-1)[d])
            a_hi, b_lo = hi.clone(), lo.clone()
            a_hi.reshape(-1)[d] = mid
            b_lo.reshape(-1)[d] = mid
            nxt += [(lo, a_hi), (b_lo, hi)]
        boxes = nxt
    return [Property(f"{prop.name}[{i}]", (Spec(Box(lo, hi), spec.unsafe, spec.name),), source=prop.source)
            for i, (lo, hi) in enumerate(boxes)]


def timed_bab(model, prop, timeout: float):
    """``bab`` on ``prop`` with each bound call's batch size and seconds recorded."""
    import verifiers.bab as vb
    from certify import api

    calls: list[tuple[int, float]] = []
    original = vb.input_split

    def recording(box, C, d, clause_of_row, bound, *rest, **kw):
        def timed(b, c, dd):
            t0 = time.perf_counter()
            out = bound(b, c, dd)
            calls.append((b.lower.shape[0], time.perf_counter() - t0))
            return out

        return original(box, C, d, clause_of_row, timed, *rest, **kw)

    vb.input_split = recording
    try:
        t0 = time.perf_counter()
        result = api.verify(model, prop, "bab", timeout=timeout, attack=False)
        return result, time.perf_counter() - t0, calls
    finally:
        vb.input_split = original


def makespan(times: list[float], workers: int, task_s: float) -> float:
    """Longest-processing-time-first list scheduling: each part to the worker that frees up first."""
    free = [0.0] * workers
    for t in sorted(times, reverse=True):
        heapq.heapreplace(free, free[0] + t + task_s)
    return max(free)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="1_1")
    ap.add_argument("--prop", default="prop_3")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--task-ms", type=float, default=5.0, help="per-task overhead of the executor (ms)")
    args = ap.parse_args()
    if not ACAS.exists():
        sys.exit(f"{ACAS} is absent")
    torch.set_num_threads(1)
    from certify import api
    from certify.models import load_model
    from certify.vnnlib import read_vnnlib

    model = load_model(ACAS / "onnx" / f"ACASXU_run2a_{args.net}_batch_2000.onnx")
    prop = read_vnnlib(ACAS / "vnnlib" / f"{args.prop}.vnnlib")
    whole, t_whole, calls = timed_bab(model, prop, args.timeout)
    n = torch.tensor([c[0] for c in calls], dtype=torch.float64)
    t = torch.tensor([c[1] for c in calls], dtype=torch.float64)
    A = torch.stack([torch.ones_like(n), n], 1)
    a, b = torch.linalg.lstsq(A, t[:, None]).solution.flatten().tolist()
    t_bound = float(t.sum())
    print(f"whole instance {args.net} {args.prop}: {whole.verdict.value} in {t_whole:.2f} s; {len(calls)} rounds, "
          f"{int(n.sum())} domains, batches up to {int(n.max())}; bounding {t_bound:.2f} s "
          f"(fit: {a * 1000:.2f} ms per call + {b * 1e6:.1f} us per domain)", flush=True)
    rest = t_whole - t_bound
    print("\nBaB's own rounds, spread over W workers (synchronous rounds):\n")
    print("| workers | simulated wall-clock s | speed-up | efficiency |")
    print("|---|---|---|---|")
    for w in (1, 2, 4, 8, 16, 32):
        span = rest + sum(max(a, 0.0) + b * float(k) / w + (args.task_ms / 1000 if w > 1 else 0.0) for k in n.tolist())
        print(f"| {w} | {span:.2f} | {t_whole / span:.2f} | {t_whole / span / w:.2f} |")

    t0 = time.perf_counter()
    pieces = parts(prop, args.depth)
    t_split = time.perf_counter() - t0
    times, verdicts = [], []
    for p in pieces:
        t0 = time.perf_counter()
        r = api.verify(model, p, "bab", timeout=args.timeout, attack=False)
        times.append(time.perf_counter() - t0)
        verdicts.append(r.verdict.value)
    print(f"\nstatic partition into {len(pieces)} parts: verdicts {sorted(set(verdicts))}, sum {sum(times):.2f} s, "
          f"max {max(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s")
    print("part times (s): " + " ".join(f"{x:.2f}" for x in times))
    print("\n| workers | simulated wall-clock s | speed-up |\n|---|---|---|")
    for w in (1, 2, 4, 8, 16, 32):
        span = t_split + makespan(times, w, args.task_ms / 1000)
        print(f"| {w} | {span:.2f} | {t_whole / span:.2f} |")


if __name__ == "__main__":
    main()
