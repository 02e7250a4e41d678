"""The only way to build a ``Counterexample``: re-run a candidate on the model's reference runtime.

``check`` rounds the candidate to the runtime's input precision (``model.graph.runtime_dtype``:
float64 for ONNX models with double inputs, else float32), choosing in every coordinate a float of
that precision inside the *exact* input set (strict bounds strictly: a bound that is itself a float
is stepped over with ``nextafter``), runs the reference (onnxruntime for ONNX files, the eager module
for PyTorch checkpoints) and accepts only if, in rational arithmetic on the float values actually fed
to the runtime and returned by it,

* the input lies in the exact input set (``Spec.exact_contains``: rational VNN-LIB bounds, the exact
  ``eps`` of a ball with the sum of squares compared to ``eps**2`` for L2, the clip box), and
* the output satisfies every row of some unsafe clause exactly (``Spec.exact_reached``: the rational
  rows of ``Clause.exact`` when present, else the float ``C``, ``d``; strict rows strictly).

No tolerance is involved anywhere.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .models import Model
from .results import _REPLAY_TOKEN, Counterexample
from .spec import Spec, round_float

#: Shrink factors towards the centre tried when a rounded candidate leaves a (non-box) set.
_SHRINK = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)


def runtime_float(model: Model) -> type:
    """The numpy float type the model's reference runtime takes (float64 / float16 / float32)."""
    dtype = model.graph.runtime_dtype
    if dtype == torch.float64:
        return np.float64
    if dtype == torch.float16:
        return np.float16
    return np.float32


def _inner_bounds(spec: Spec, dtype: type) -> tuple[np.ndarray, np.ndarray] | None:
    """Per input element, the smallest and largest float of ``dtype`` inside the exact interval that
    contains the set (``> lower`` / ``< upper`` for strict bounds); ``None`` if some interval holds no
    such float. For a box (and an L-inf ball with its clip box) these intervals are the set itself."""
    region = spec.exact_set()
    if region is None:  # no exact form: the float box of the set, tightened by membership later
        box = spec.input.bounds()
        lo = box.lower.detach().cpu().to(torch.float64).reshape(-1).tolist()
        hi = box.upper.detach().cpu().to(torch.float64).reshape(-1).tolist()
        intervals = [(a, False, b, False) for a, b in zip(lo, hi)]
    else:
        intervals = region.intervals(0)
    t = np.dtype(dtype).type
    lows, highs = [], []
    for lo, lo_strict, hi, hi_strict in intervals:
        if isinstance(lo, float) and math.isinf(lo):
            f_lo = -np.inf
        else:
            f_lo = round_float(lo, +1, dtype)  # smallest float >= lo
            if lo_strict and f_lo == lo:
                f_lo = float(np.nextafter(t(f_lo), t(np.inf)))
        if isinstance(hi, float) and math.isinf(hi):
            f_hi = np.inf
        else:
            f_hi = round_float(hi, -1, dtype)  # largest float <= hi
            if hi_strict and f_hi == hi:
                f_hi = float(np.nextafter(t(f_hi), t(-np.inf)))
        if not f_lo <= f_hi:
            return None
        lows.append(f_lo)
        highs.append(f_hi)
    return np.array(lows, dtype=np.float64), np.array(highs, dtype=np.float64)


def check(model: Model, spec: Spec, x, spec_index: int = 0, atol: float = 0.0) -> Counterexample | None:
    """A replayed ``Counterexample`` if ``x`` (a proposal, moved into the set) is a genuine one for the
    single-instance ``spec``, else ``None`` (module docstring).

    ``atol`` is kept for compatibility and no longer loosens anything: membership is exact.
    """
    if spec.batch_size != 1:
        raise ValueError("replay.check takes a single-instance spec")
    dtype = runtime_float(model)
    x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)
    if x.size != spec.n_inputs or not np.all(np.isfinite(x)):
        return None
    inner = _inner_bounds(spec, dtype)
    if inner is None:
        return None
    lo, hi = inner
    center = spec.input.center.detach().cpu().to(torch.float64).reshape(-1).numpy()
    for shrink in _SHRINK:  # non-box sets: shrink towards the centre until the rounded point is inside
        proposal = center + (x - center) * (1 - shrink) if shrink else x
        with np.errstate(over="ignore"):
            candidate = np.clip(proposal.astype(dtype).astype(np.float64), lo, hi)
        if spec.exact_contains(candidate):
            break
    else:
        return None
    fed = candidate.astype(dtype)  # exactly the candidate: every value is a float of the runtime's type
    y = np.asarray(model.reference(fed.reshape(1, *model.input_shape)), dtype=np.float64).reshape(-1)
    hit = spec.exact_reached(y)
    if hit is None:
        return None
    k, margin = hit
    return Counterexample(candidate, y, spec_index, k, round_float(margin), model.reference_name,
                          _token=_REPLAY_TOKEN)


def result_from_dict(d: dict, model: Model, prop) -> "Result":
    """A result read back from ``Result.to_dict`` (a worker's answer, a resume journal's row). A falsified
    answer's counterexample is re-run here on ``model`` with :func:`check`; if it does not replay, the
    answer becomes unknown with that reason (a counterexample is never taken on trust)."""
    from .results import Result, Verdict

    cex = None
    if d.get("verdict") == Verdict.FALSIFIED.value:
        c = d.get("counterexample") or {}
        index = int(c.get("spec_index", 0))
        specs = prop.specs[index] if 0 <= index < len(prop.specs) else None
        if specs is not None and c.get("x") is not None:
            x = np.asarray(c["x"], dtype=np.float64)
            for b in range(specs.batch_size):
                cex = check(model, specs if specs.batch_size == 1 else specs[b], x, spec_index=index)
                if cex is not None:
                    break
        if cex is None:
            d = {**d, "verdict": Verdict.UNKNOWN.value, "guarantee": None,
                 "reason": "backend_error: the counterexample sent back by a worker does not replay here"}
    return Result.from_dict(d, cex)
