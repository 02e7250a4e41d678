"""The optimiser of the engine's slope searches (alpha-CROWN, beta-CROWN in branch-and-bound)."""
from __future__ import annotations

from typing import Any, Iterable

import torch

#: devices with a fused Adam kernel (torch checks only at the first step, too late to fall back)
_FUSED_DEVICES = ("cpu", "cuda")


def adam(params: Iterable[Any], lr: float = 1e-3) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params`` (tensors, or parameter groups with their own ``lr``), with the fused
    kernel where this torch has one for the device: one pass per tensor instead of about ten, the same update up
    to rounding (measured on CPU: 5.8 -> 1.1 ms per step over eight [128, 9, 256] slope tensors). Slopes and
    multipliers are clamped to their valid ranges after every step and re-certified with sound rounding, so
    rounding in the update cannot affect soundness."""
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    if tensors and all(t.device.type in _FUSED_DEVICES and t.dtype.is_floating_point for t in tensors):
        try:  # a torch before 2.4 has no fused CPU kernel and says so here
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr)
