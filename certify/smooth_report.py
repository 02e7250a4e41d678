"""Randomized smoothing over a data set: per-example certificates, certified accuracy at radii, a plot,
and the largest L2 radius a deterministic backend proves for the same checkpoint, side by side.

Certified accuracy at radius ``r`` (Cohen et al.): the fraction of examples whose smoothed prediction
is certified, equals the label, and has certified radius ``>= r``. The smoothing curve holds with
probability ``1 - alpha`` per example and is about the smoothed classifier ``g``; the deterministic
curve is sound and about the base network ``f``. They answer different questions and are shown as such.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from .models import Model
from .smoothing import Smoothed, example_generator


@dataclass(frozen=True)
class SmoothRow:
    """One example: ``prediction`` is None when ``g`` abstained; ``radius`` 0 then."""

    model: str
    sigma: float
    index: int
    label: int
    prediction: int | None
    radius: float
    p_lower: float
    correct: bool
    time_s: float
    det_radius: float | None = None  # largest L2 radius proved for f by the compared backend

    def to_dict(self) -> dict:
        d = asdict(self)
        d["abstained"] = self.prediction is None
        return d


def certify_example(g: Smoothed, x: np.ndarray, label: int, index: int, sigma: float, *, n0: int = 100,
                    n: int = 100_000, alpha: float = 0.001, batch: int = 10_000, seed: int = 0,
                    device: str = "cpu", name: str = "") -> SmoothRow:
    """``g.certify`` on example ``index``, with the noise of its own seeded stream (``example_generator(seed,
    index)``): the row is the same whichever worker computes it, and in whatever order."""
    t0 = time.perf_counter()
    cert = g.certify(x, n0, n, alpha, batch, example_generator(seed, index, device))
    return SmoothRow(name, float(sigma), index, int(label), cert.label, cert.radius, cert.p_lower,
                     cert.label == int(label), time.perf_counter() - t0)


def certified_accuracy(radii: Sequence[float], certified: Sequence[tuple[bool, float]]) -> list[float]:
    """For each ``r``: the fraction of ``(correct, radius)`` pairs with ``correct and radius >= r``."""
    if not certified:
        return [0.0 for _ in radii]
    ok = np.array([c for c, _ in certified], dtype=bool)
    rad = np.array([r for _, r in certified], dtype=np.float64)
    return [float(np.mean(ok & (rad >= r))) for r in radii]


def smoothing_pairs(rows: Sequence[SmoothRow]) -> list[tuple[bool, float]]:
    """``(correct, radius)`` of the smoothed classifier, per example."""
    return [(r.correct, r.radius) for r in rows]


def deterministic_pairs(rows: Sequence[SmoothRow]) -> list[tuple[bool, float]]:
    """``(proved at some radius, largest radius found)`` for the base network, per example."""
    return [(r.det_radius > 0, r.det_radius) for r in rows]


def largest_proved_radius(model: Model, x: np.ndarray, label: int, method: str = "crown", *, start: float = 0.05,
                          max_radius: float = 8.0, steps: int = 8, timeout: float = 10.0, device: str = "cpu") -> float:
    """The largest L2 radius found, by doubling from ``start`` and then ``steps`` bisections, at which
    ``method`` proves local robustness of ``f`` at ``x``. Every returned radius was proved; a sound but
    incomplete backend need not be monotone in the radius, so it is a lower bound on the largest one.
    0.0 when nothing was proved."""
    from . import api
    from .results import Verdict
    from .spec import Property, robustness

    xt = torch.as_tensor(x, dtype=torch.float64).reshape(1, *model.input_shape)

    def proved(r: float) -> bool:
        spec = robustness(xt, [label], r, 2, n_classes=model.n_outputs)
        res = api.verify(model, Property(f"l2 r={r:g}", (spec,)), method, timeout=timeout, device=device, attack=False)
        return res.verdict is Verdict.PROVED

    lo, hi = 0.0, start
    while proved(hi):
        lo, hi = hi, 2 * hi
        if hi > max_radius:
            return lo
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if proved(mid) else (lo, mid)
    return lo


def curve_grid(rows: Sequence[SmoothRow], points: int = 200) -> np.ndarray:
    top = max([r.radius for r in rows] + [r.det_radius or 0.0 for r in rows] + [1e-3])
    return np.linspace(0.0, top * 1.05, points)


def plot_curves(groups: dict[str, list[SmoothRow]], path: str, compare: str | None = None) -> None:
    """Certified accuracy against L2 radius, one line per (model, sigma) group; dashed: the deterministic
    backend's sound certified accuracy for the same checkpoint, when compared."""
    from .plotting import figure, save

    every = [r for rows in groups.values() for r in rows]
    grid = curve_grid(every)
    fig, ax = figure()
    for i, (label, rows) in enumerate(groups.items()):
        color = f"C{i}"
        acc = certified_accuracy(grid, smoothing_pairs(rows))
        ax.plot(grid, acc, color=color, label=f"{label} (smoothing, probabilistic)")
        if compare and all(r.det_radius is not None for r in rows):
            det = certified_accuracy(grid, deterministic_pairs(rows))
            ax.plot(grid, det, color=color, linestyle="--", label=f"{label} base network, {compare} (sound)")
    save(fig, ax, path, xlabel="L2 radius", ylabel="certified accuracy",
         title="certified accuracy against L2 radius (randomized smoothing)")


def group_label(rows: Sequence[SmoothRow]) -> str:
    from pathlib import Path

    return f"{Path(rows[0].model).name} sigma={rows[0].sigma:g}" if rows else ""


def summary(groups: dict[str, list[SmoothRow]], radii: Sequence[float], alpha: float) -> list[dict]:
    out = []
    for label, rows in groups.items():
        entry = {"group": label, "model": rows[0].model, "sigma": rows[0].sigma, "examples": len(rows),
                 "alpha": alpha, "abstained": sum(r.prediction is None for r in rows),
                 "clean_accuracy_of_g": sum(r.correct for r in rows) / len(rows),
                 "certified_accuracy": dict(zip([f"{r:g}" for r in radii],
                                                certified_accuracy(radii, smoothing_pairs(rows)))),
                 "time_s": sum(r.time_s for r in rows)}
        if all(r.det_radius is not None for r in rows):
            entry["deterministic_certified_accuracy"] = dict(zip(
                [f"{r:g}" for r in radii], certified_accuracy(radii, deterministic_pairs(rows))))
        out.append(entry)
    return out
