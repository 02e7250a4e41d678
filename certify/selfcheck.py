"""Import self-check: does the imported graph reproduce the model's own runtime on the property's set?

``check_import(model, spec)`` runs the model's reference runtime (onnxruntime for ONNX files, the eager
module for PyTorch checkpoints) on a few points of the input set and checks that every output the runtime
returns lies in ``sound_interval_bounds(graph, Box(x, x))``, the box the engine itself derives for that
single point under the ``runtime`` semantics (the exact network and every evaluation of it in the model's
precision). The points: the centre of each spec, up to 16 corners and 16 uniformly random points of the
set's bounding box (seeded, so the check is reproducible), each rounded to the runtime's input precision
and then moved inside the box (to the nearest float of that precision inside it).

What it guarantees: on those points the runtime agrees with what the graph can produce, so an importer
that drops or misreads a node whose effect shows there (a lost branch, an ignored attribute, a Cast
imported as an identity when its rounding is visible, a float32 reference for a float16 model) is caught
before any backend runs, with the point and output named. No tolerance is used: the interval is sound.

What it cannot guarantee: agreement at finitely many points is not agreement on the set. A difference
confined to a region the points miss (a branch taken on a sliver of inputs, a rounding effect visible
only near a tie) passes unnoticed; the importer's own refusals (unknown attributes, random ops, tracer
warnings) are the first line of defence, this is the second. A point where the runtime may overflow
(``OverflowRisk``) is skipped: the backends answer unknown there anyway.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .engine.fp import OverflowRisk
from .errors import ModelError
from .models import Model
from .replay import runtime_float
from .sets import Box

N_CORNERS = 16
N_RANDOM = 16
MAX_CENTRES = 16
SEED = 20240611


def _inside(lo: np.ndarray, hi: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray] | None:
    """Per coordinate, the smallest and largest float of ``dtype`` in ``[lo, hi]`` (float64 arrays), or
    None when some coordinate holds no such float. Infinite bounds: a finite stand-in next to the
    other bound (any point beyond it is in the set too)."""
    lo, hi = lo.astype(np.float64).copy(), hi.astype(np.float64).copy()
    both = np.isinf(lo) & np.isinf(hi)
    lo[both], hi[both] = -1.0, 1.0
    lo = np.where(np.isinf(lo), hi - 1.0, lo)
    hi = np.where(np.isinf(hi), lo + 1.0, hi)
    with np.errstate(over="ignore"):
        a, b = lo.astype(dtype), hi.astype(dtype)
    a = np.where(a.astype(np.float64) < lo, np.nextafter(a, dtype(np.inf)), a)
    b = np.where(b.astype(np.float64) > hi, np.nextafter(b, dtype(-np.inf)), b)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or bool((a > b).any()):
        return None
    return a, b


def _points(specs: Sequence, dtype: type, n_in: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """The check points (``[P, n_in]`` in ``dtype``) and a label of each."""
    regions = []
    for s, spec in enumerate(specs):
        box = spec.input.bounds()
        lo = box.lower.detach().cpu().to(torch.float64).reshape(box.lower.shape[0], -1).numpy()
        hi = box.upper.detach().cpu().to(torch.float64).reshape(box.upper.shape[0], -1).numpy()
        for b in range(lo.shape[0]):
            inner = _inside(lo[b], hi[b], dtype)
            if inner is not None and inner[0].size == n_in:
                regions.append((f"spec {s}" + (f"[{b}]" if lo.shape[0] > 1 else ""), lo[b], hi[b], *inner))
    points, labels = [], []
    if not regions:
        return np.zeros((0, n_in), dtype=dtype), labels

    def add(x64: np.ndarray, region, what: str) -> None:
        name, _, _, a, b = region
        with np.errstate(over="ignore"):
            x = x64.astype(dtype)
        points.append(np.clip(x, a, b))
        labels.append(f"{what} of {name}")

    for region in regions[:MAX_CENTRES]:
        _, lo, hi, a, b = region
        add(np.where(np.isfinite(lo) & np.isfinite(hi), (lo + hi) / 2, (a.astype(np.float64) + b) / 2), region, "centre")
    for k in range(N_CORNERS):
        region = regions[k % len(regions)]
        a, b = region[3], region[4]
        if k >= 2 ** min(n_in, 30) * len(regions):
            break  # every corner taken already
        pick = rng.random(n_in) < 0.5 if k >= 2 * len(regions) else np.full(n_in, k // len(regions) == 0)
        add(np.where(pick, a.astype(np.float64), b.astype(np.float64)), region, f"corner {k}")
    for k in range(N_RANDOM):
        region = regions[k % len(regions)]
        a, b = region[3].astype(np.float64), region[4].astype(np.float64)
        add(a + (b - a) * rng.random(n_in), region, f"random point {k}")
    return np.stack(points), labels


def _sound_boxes(graph, x: np.ndarray) -> list[Box | None]:
    """``sound_interval_bounds`` at each point (None where the runtime may overflow), one batch when it can."""
    from .engine.ibp import sound_interval_bounds

    t = torch.as_tensor(x.astype(np.float64)).reshape(x.shape[0], *graph.input_shape)
    try:
        out = sound_interval_bounds(graph, Box(t, t.clone()))
        return [out[i:i + 1] for i in range(x.shape[0])]
    except OverflowRisk:
        pass
    boxes: list[Box | None] = []
    for i in range(x.shape[0]):
        try:
            boxes.append(sound_interval_bounds(graph, Box(t[i:i + 1], t[i:i + 1].clone())))
        except OverflowRisk:
            boxes.append(None)
    return boxes


def _specs_of(spec) -> tuple:
    return tuple(spec.specs) if hasattr(spec, "specs") else (spec,) if not isinstance(spec, (list, tuple)) else tuple(spec)


def check_import(model: Model, spec) -> int:
    """Raise ``ModelError`` when the model's runtime returns, at a check point of ``spec``'s input set (a
    ``Spec``, a ``Property`` or a sequence of specs), an output outside the imported graph's sound interval
    at that point (see the module docstring). Returns the number of points checked. Specs already
    checked on this model object are skipped (the model keeps them, so their ids cannot be reused)."""
    done: dict = model.__dict__.setdefault("_import_checked", {})
    specs = [s for s in _specs_of(spec) if id(s) not in done]
    if not specs:
        return 0
    graph = model.graph.with_semantics("runtime")
    dtype = runtime_float(model)
    rng = np.random.default_rng(SEED)
    x, labels = _points(specs, dtype, graph.n_inputs, rng)
    if x.shape[0]:
        try:  # one call: the reference batches when the runtime takes a batch, else loops itself
            y = np.asarray(model.reference(x.reshape(x.shape[0], *graph.input_shape)), dtype=np.float64)
            y = y.reshape(x.shape[0], -1)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{model.path}: {model.reference_name} failed on the import check points: {first}") from None
        boxes = _sound_boxes(graph, x)
        for i, box in enumerate(boxes):
            if box is None:
                continue  # the runtime may overflow here: nothing to compare (the backends answer unknown)
            lo = box.lower.reshape(-1).numpy()
            hi = box.upper.reshape(-1).numpy()
            bad = ~((y[i] >= lo) & (y[i] <= hi))  # NaN from the runtime is a mismatch too
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise ModelError(
                    f"{model.path}: the imported graph does not reproduce {model.reference_name} at check point {i} "
                    f"({labels[i]}): output {j} is {y[i, j]!r} there, outside the graph's sound interval "
                    f"[{lo[j]!r}, {hi[j]!r}] (the importer dropped or misread part of the model)")
    for s in specs:
        done[id(s)] = s
    return int(x.shape[0])
