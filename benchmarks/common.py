"""Shared helpers for benchmark scripts: locating ../shared, timing, markdown output."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CERTIFY_SHARED_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        raise SystemExit(f"benchmark data {path} is absent (set CERTIFY_SHARED_BENCHMARKS)")
    return path


def timeit(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timeit_pair(fn_a: Callable[[], object], fn_b: Callable[[], object], repeat: int = 20,
                rounds: int = 5) -> tuple[float, float, float]:
    """Median seconds of ``fn_a`` and ``fn_b`` and the median ratio ``b / a`` over ``rounds`` rounds; each
    round times a warm block of ``repeat`` runs of ``fn_a``, then one of ``fn_b`` (so both run with warm
    caches, as in a loop of either alone, and drift of the machine's speed affects both alike)."""
    pairs = [(timeit(fn_a, repeat), timeit(fn_b, repeat)) for _ in range(rounds)]
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(b / a for a, b in pairs))


def markdown(rows: list[list[object]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
