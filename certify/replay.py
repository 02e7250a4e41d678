"""The only way to build a ``Counterexample``: re-run a candidate on the model's reference runtime.

``check`` rounds the candidate to the runtime's input precision (float32), keeping it inside the
input set, verifies membership exactly (``atol=0`` by default), runs the reference (onnxruntime for
ONNX files, the eager module for PyTorch checkpoints) and accepts only if the reference output lies
in an unsafe clause: ``max_j (C_j y - d_j) <= 0`` for some clause.
"""
from __future__ import annotations

import numpy as np
import torch

from .models import Model
from .results import _REPLAY_TOKEN, Counterexample
from .spec import Spec


def _float32_inside(spec: Spec, x: np.ndarray) -> np.ndarray:
    """Round to float32 so that the rounded point still satisfies the set's box bounds: the bounds
    are tightened to the nearest float32 values inside them."""
    box = spec.input.bounds()
    lo = box.lower.reshape(x.shape).cpu().numpy().astype(np.float64)
    hi = box.upper.reshape(x.shape).cpu().numpy().astype(np.float64)
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) < lo, np.nextafter(lo32, np.float32(np.inf)), lo32)
    hi32 = np.where(hi32.astype(np.float64) > hi, np.nextafter(hi32, np.float32(-np.inf)), hi32)
    x32 = np.clip(x.astype(np.float32), np.minimum(lo32, hi32), np.maximum(lo32, hi32))
    return x32


def check(model: Model, spec: Spec, x, spec_index: int = 0, atol: float = 0.0) -> Counterexample | None:
    """A replayed ``Counterexample`` if ``x`` is a genuine one for the single-instance ``spec``, else ``None``."""
    if spec.batch_size != 1:
        raise ValueError("replay.check takes a single-instance spec")
    x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    x = x.reshape(1, *model.input_shape)
    center = spec.input.center.reshape(x.shape).cpu().numpy().astype(np.float64)
    for _ in range(4):  # non-box sets: shrink towards the centre until rounding keeps the point inside
        candidate = _float32_inside(spec, x)
        as64 = torch.as_tensor(candidate.astype(np.float64)).reshape(1, *spec.input.shape)
        if bool(spec.input.contains(as64, atol)[0]):
            break
        x = center + (x - center) * (1 - 1e-6)
    else:
        return None
    y = np.asarray(model.reference(candidate), dtype=np.float64).reshape(1, -1)
    margins = spec.clause_margins(torch.as_tensor(y, dtype=torch.float64))[0]
    k = int(torch.argmin(margins))
    if float(margins[k]) > 0:
        return None
    return Counterexample(candidate.reshape(-1).astype(np.float64), y.reshape(-1), spec_index, k,
                          float(margins[k]), model.reference_name, _token=_REPLAY_TOKEN)
