"""``round``: a narrowing float cast (ONNX ``Cast`` to a narrower float type), as the runtime does it.

``params``: ``dtype`` (the target, ``"float16"`` or ``"float32"``), ``rel_err = u_t`` (the target's
unit roundoff, ``finfo.eps / 2``), ``abs_err = t_t`` (the target's smallest normal), and optionally
``via`` (an intermediate type: a runtime may cast float64 to float16 through float32, rounding twice).

The math. Round-to-nearest ``rd`` (ties to even) is non-decreasing, and so is any composition of such
roundings, so over an input interval ``[l, u]`` every cast value lies in ``[rd(l), rd(u)]``. A runtime
may also *not* round: onnxruntime on CPU has no float16 kernels for most ops, computes them in float32
and removes the resulting ``Cast(float16) -> Cast(float32)`` pair, so the value passes unrounded (the
ops after it then err at most as in float16, which their own runtime error, in float16, covers). The
box is therefore the hull of both, ``[min(l, rd(l)), max(u, rd(u))]``, widened outward by ``t_t`` for a
runtime that flushes subnormal results to zero (``down``/``up`` take one more float64 step, so the end
points are never rounded inward). As a linear relaxation (CROWN), ``rd(x) = x + e`` with
``|e| <= u_t |x| + t_t`` wherever ``|x|`` is below the target's largest finite value (relative error
``u_t`` in the normal range, at most half the subnormal spacing ``u_t t_t`` below it, at most ``t_t``
when flushed; ``e = 0`` is the unrounded value); twice rounded (``via``), the importer records
``rel_err = u_t + u_v + u_t u_v`` and ``abs_err = t_t + t_v``. The rule is therefore declared linear
(identity transpose, ``|L| = I``) and not exact: the engine adds ``(gamma + rel_err) |A| |x| + |A| abs_err``
to the bound. A value that may round to infinity (``|x| >= finfo(target).max``) cannot be bounded:
``OverflowRisk``.

``forward`` rounds for real (``x.to(target).to(x.dtype)``, the ONNX semantics and PyTorch's ``.half()``),
so attacks and ``graph.forward`` evaluate the cast as a rounding runtime does; the gradient passes
through unchanged (straight-through).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...sets import Box, down, up
from ..fp import OverflowRisk
from ..rules import OpRule, Params


def _target(p: Params) -> torch.dtype:
    return getattr(torch, str(p["dtype"]))


def _round(p: Params, x: Tensor) -> Tensor:
    return x.to(_target(p)).to(x.dtype)


def _round_via(p: Params, x: Tensor) -> Tensor:
    via = p.get("via")
    return x.to(getattr(torch, str(via))).to(_target(p)).to(x.dtype) if via else _round(p, x)


def _ibp(p: Params, boxes, rnd) -> Box:
    (box,) = boxes
    fmt = _target(p)
    big = torch.finfo(fmt).max
    if bool((box.lower <= -big).any()) or bool((box.upper >= big).any()) or \
            not (bool(torch.isfinite(box.lower).all()) and bool(torch.isfinite(box.upper).all())):
        raise OverflowRisk(f"a value cast to {fmt} may round to infinity (|x| >= {big:.5g})")
    lo, hi = _round(p, box.lower), _round(p, box.upper)
    if p.get("via"):  # either order of roundings: the union of both monotone images
        lo, hi = torch.minimum(lo, _round_via(p, box.lower)), torch.maximum(hi, _round_via(p, box.upper))
    lo, hi = torch.minimum(lo, box.lower), torch.maximum(hi, box.upper)  # or no rounding at all
    if not rnd.sound:
        return Box(lo, hi)
    tiny = float(p.get("abs_err", torch.finfo(fmt).tiny))
    return Box(down(lo - tiny), up(hi + tiny))


def _identity(p: Params, x: Tensor) -> Tensor:
    return x


def _identity_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    return (A,)


def round_params(target: str, via: str | None = None) -> dict:
    """The ``round`` node's parameters for a cast to ``target`` (through ``via`` if given)."""
    f = torch.finfo(getattr(torch, target))
    rel, tiny = f.eps / 2, f.tiny
    params: dict = {"dtype": target, "rel_err": rel, "abs_err": tiny}
    if via:
        v = torch.finfo(getattr(torch, via))
        params.update(via=via, rel_err=rel + v.eps / 2 + rel * v.eps / 2, abs_err=tiny + v.tiny)
    # the bounds are computed in float64: round the error terms up (they are sums of powers of two here)
    params["rel_err"] = float(up(torch.tensor(params["rel_err"], dtype=torch.float64)))
    params["abs_err"] = float(up(torch.tensor(params["abs_err"], dtype=torch.float64)))
    return params


def _example(g: torch.Generator):
    target = "float16" if int(torch.randint(0, 2, (1,), generator=g)) else "float32"
    return round_params(target), [(7,)]


RULES = {
    "round": OpRule("round", _round_via, _ibp, _example, linear=True, exact=False, transpose=_identity_t,
                    abs_forward=_identity),
}
