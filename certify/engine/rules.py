"""The rule table: one ``OpRule`` per internal op, merged explicitly from ``ops/``.

A rule holds the op's concrete ``forward``, its interval transform ``ibp`` and what backward linear
bound propagation (CROWN) needs: for affine ops the transpose of the map (``transpose``) and ``|L|``
(``abs_forward``); for elementwise nonlinear ops a linear relaxation (``relax``, relaxation as data);
for other nonlinear ops (max-pooling) a custom ``backward`` rule. ``example`` draws random parameters
and input shapes so that the sampled soundness tests cover every rule without writing a new test.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..sets import Box, down, up
from .fp import OverflowRisk, Rounding, gamma, path_factor, unit_roundoff

Params = Mapping[str, Any]
Forward = Callable[..., Tensor]  # forward(params, *inputs) -> output
IBP = Callable[[Params, Sequence[Box], Rounding], Box]
Example = Callable[[torch.Generator], tuple[dict, list[tuple[int, ...]]]]


@dataclass(frozen=True)
class Relaxation:
    """Elementwise linear bounds valid on ``[l, u]``: ``lw * z + lb <= f(z) <= uw * z + ub``.

    Tensors broadcast against ``[B, R, *shape]`` (a lower slope may be per specification row, as in
    alpha-CROWN); with sound rounding the lines are valid in exact arithmetic for the stored floats.
    """

    lw: Tensor
    lb: Tensor
    uw: Tensor
    ub: Tensor


# relax(params, l, u, rounding, alpha) -> Relaxation; alpha (or None) is the optimisable lower slope
Relax = Callable[[Params, Tensor, Tensor, Rounding, "Tensor | None"], Relaxation]
# backward(params, A, input_boxes, rounding) -> (A per input, bias [N, R], rounding error [N, R])
Backward = Callable[[Params, Tensor, Sequence[Box], Rounding], tuple[tuple[Tensor, ...], Tensor, Tensor]]
# runtime_error(params, input_boxes, runtime dtype) -> E [B, *out]: |runtime value - exact op value| <= E
RuntimeError_ = Callable[[Params, Sequence[Box], torch.dtype], Tensor]


@dataclass(frozen=True)
class OpRule:
    """How the engine treats one op.

    ``forward(params, *xs)`` evaluates the op on batched tensors ``[B, *shape]``.
    ``ibp(params, boxes, rounding)`` returns a box containing ``forward`` of every point of the
    input boxes; with ``rounding.sound`` it contains the exact real-arithmetic image.
    ``linear`` marks ops that are affine in their inputs: ``transpose(params, A)`` maps coefficients
    ``A`` (``[N, *out_shape]``) on the output to coefficients on each input (``A L``), and for
    single-input maps ``abs_forward(params, x) = |L| x``; ``exact`` marks affine ops computed without
    rounding (moves, copies, negation).
    ``relax`` (elementwise nonlinear ops) or ``backward`` (other nonlinear ops) serve CROWN; ``alpha``
    marks a ``relax`` whose lower slope can be optimised within ``alpha_range``.
    ``example(generator)`` returns random ``(params, input_shapes)`` for the soundness tests.
    ``domain`` is where those tests draw box end points.
    ``runtime_error(params, boxes, fmt)`` bounds, elementwise, how far a runtime computing in ``fmt``
    may land from the exact op applied to the same inputs (any inputs in ``boxes``); None: the op only
    moves values (no arithmetic, nothing rounded or flushed).
    """

    op: str
    forward: Forward
    ibp: IBP
    example: Example
    linear: bool = False
    transpose: Callable[..., tuple[Tensor, ...]] | None = None
    abs_forward: Forward | None = None
    exact: bool = False
    relax: Relax | None = None
    backward: Backward | None = None
    alpha: bool = False
    domain: tuple[float, float] = (-4.0, 4.0)
    runtime_error: RuntimeError_ | None = None


def monotone_ibp(forward: Forward, rounding_ulps: float | None, elementwise: bool = False) -> IBP:
    """IBP of an op non-decreasing in every input: ``[f(l), f(u)]``.

    ``rounding_ulps=None`` means the op is exact in floating point (ReLU, max, reshape); otherwise the
    end points are widened by that many units of roundoff, relative, plus one ulp outward. A
    single-input op on stacked end points runs once on both, as one batch (every op acts per instance;
    an ``elementwise`` one directly on the ``[2, B, ...]`` tensor).
    """

    def ibp(params: Params, boxes: Sequence[Box], rnd: Rounding) -> Box:
        t = boxes[0].stacked if len(boxes) == 1 else None
        if t is not None:
            y = forward(params, t) if elementwise else forward(params, t.flatten(0, 1)).unflatten(0, t.shape[:2])
            out = Box.from_stacked(y)
        else:
            out = Box(forward(params, *[b.lower for b in boxes]), forward(params, *[b.upper for b in boxes]))
        if rounding_ulps is None:
            return out
        return rnd.relative(out, rounding_ulps)

    return ibp


@functools.lru_cache(maxsize=None)
def _signs(a: float, b: float, dims: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor([a, b], dtype=dtype, device=device).reshape(2, *(1,) * dims)


def _sum_width(box: Box) -> Tensor:
    """``[u + l; u - l]`` stacked, in one elementwise op (no copy of the end points first)."""
    t = box.stacked
    lo, hi = (t[:1], t[1:]) if t is not None else (box.lower.unsqueeze(0), box.upper.unsqueeze(0))
    return torch.addcmul(hi, _signs(1.0, -1.0, lo.dim() - 1, lo.dtype, lo.device), lo)


def _lower_upper(cw: Tensor) -> Tensor:
    """``[c - w/2; c + w/2]`` from stacked ``[c; w]``, in one elementwise op."""
    return torch.addcmul(cw[:1], _signs(-0.5, 0.5, cw.dim() - 1, cw.dtype, cw.device), cw[1:])


# pair(params, [u + l; u - l]) -> [L (u + l)/2 + b; |L| (u - l)]: the centre and width images in one call
Pair = Callable[[Params, Tensor], Tensor]


def affine_map_ibp(
    forward: Forward,
    abs_forward: Forward,
    bias_abs: Callable[[Params], Tensor | None],
    fan_in: Callable[[Params], int],
    pair: Pair | None = None,
) -> IBP:
    """IBP of a single-input affine op ``y = L x + b`` in centre-radius form.

    ``c' = L c + b`` and ``r' = |L| r``: two applications of the map, which is the floor for interval
    arithmetic. In sound mode the radius grows by ``gamma_{n+2} (|L| (|c| + r) + |b|)`` plus the
    node's recorded representation errors (``rel_err`` relative to ``|L||x|``, ``abs_err`` absolute);
    see ``fp``. In fast mode, an op with a ``pair`` map computes both images in one batched call, with
    the end points kept stacked: ``[c'; w'] = pair([u + l; u - l])``, then ``[c' - w'/2; c' + w'/2]``
    (three tensor ops per layer, two of them elementwise).
    """

    def ibp(params: Params, boxes: Sequence[Box], rnd: Rounding) -> Box:
        (box,) = boxes
        if not rnd.sound and pair is not None:
            return Box.from_stacked(_lower_upper(pair(params, _sum_width(box))))
        if not rnd.sound:  # fewest elementwise ops: c' = L lerp(l, u, 1/2) + b, w' = |L| (u - l), c' -+ w'/2
            c2 = forward(params, torch.lerp(box.lower, box.upper, 0.5))
            w2 = abs_forward(params, box.upper - box.lower)
            return Box(torch.add(c2, w2, alpha=-0.5), torch.add(c2, w2, alpha=0.5))
        c, r = rnd.center_radius(box)
        c2 = forward(params, c)
        r2 = abs_forward(params, r)
        mag = abs_forward(params, c.abs() + r)
        b = bias_abs(params)
        if b is not None:
            mag = mag + b
        err = rnd.error_bound(mag, fan_in(params) + 2, extra_rel=params.get("rel_err", 0.0))
        abs_err = params.get("abs_err")
        if abs_err is not None:
            err = err + abs_err
        return rnd.from_center_radius(c2, r2, err)

    return ibp


def magnitude(box: Box) -> Tensor:
    """``max(|l|, |u|)``, elementwise."""
    return torch.maximum(box.lower.abs(), box.upper.abs())


def _finish(E: Tensor, out_mag: Tensor, fmt: torch.dtype) -> Tensor:
    """``E`` rounded up past its own float64 evaluation (``fp.path_factor``: a nonnegative expression of
    dot products, plus the smallest normal); ``OverflowRisk`` when a value of magnitude ``out_mag + E`` may
    not be finite in ``fmt`` (the runtime would return inf, which no bound covers)."""
    E = up(E * path_factor(E.dtype) + torch.finfo(E.dtype).tiny)
    if bool((out_mag + E >= torch.finfo(fmt).max).any()) or not bool(torch.isfinite(E).all()):
        raise OverflowRisk(f"a value may exceed the largest {fmt} ({torch.finfo(fmt).max:.3g}) at runtime")
    return E


def affine_runtime_error(abs_forward: Forward, bias_abs: Callable[[Params], Tensor | None],
                         fan_in: Callable[[Params], int]) -> RuntimeError_:
    """Runtime error of ``y = L x + b`` evaluated in ``fmt`` (unit roundoff ``u``, smallest normal ``t``):

    ``E = gamma_{n+4+k} (|L| (m + t) + |b|_rt) + |L_sub| m + 2 (n + 4 + k) t``

    with ``n`` the terms per output, ``m`` the input magnitude, and ``k = params["runtime_ops"]`` extra
    roundings of the op's own definition (BatchNorm's subtract, square root, divide: the runtime may
    fold them into a scale and shift first). Higham's ``gamma`` covers any summation order and FMA;
    the four spare roundings cover the runtime fusing the op with a neighbouring affine op (Conv with
    BatchNorm, MatMul with Add). ``|b|_rt = params["runtime_bias_abs"]`` is the magnitude of the
    additive constants *as the file states them* (BatchNorm: ``|beta| + |mean scale|``, which may be
    far larger than the folded shift); otherwise ``|b|``. Flushing: a subnormal input read as zero
    loses at most ``|L| t`` (hence ``m + t``), a subnormal weight read as zero ``|L_sub| m``
    (``params["subnormal_abs"]`` overrides the parameters so that ``abs_forward`` applies ``|L_sub|``),
    and each of the ``n + 4 + k`` rounded results at most ``t`` when flushed."""

    def error(p: Params, boxes: Sequence[Box], fmt: torch.dtype) -> Tensor:
        (box,) = boxes
        m = magnitude(box)
        t = torch.finfo(fmt).tiny
        n = fan_in(p) + 4 + int(p.get("runtime_ops", 0))
        b = p.get("runtime_bias_abs")
        if b is None:
            b = bias_abs(p)
        bound = abs_forward(p, m + t)  # also bounds |L x + b| for the overflow check
        if b is not None:
            bound = bound + b
        E = gamma(n, fmt) * bound + 2 * n * t
        sub = p.get("subnormal_abs")
        if sub is not None:
            E = E + abs_forward({**p, **sub}, m)
        return _finish(E, bound, fmt)

    return error


def sum_runtime_error(p: Params, boxes: Sequence[Box], fmt: torch.dtype) -> Tensor:
    """``a + b`` (or ``a - b``) of two data tensors: one rounding, ``u (m_a + m_b)``, plus ``3 t`` for
    two flushed operands and a flushed result."""
    m = magnitude(boxes[0]) + magnitude(boxes[1])
    return _finish(unit_roundoff(fmt) * m + 3 * torch.finfo(fmt).tiny, m, fmt)


def flush_runtime_error(forward: Forward | None = None) -> RuntimeError_:
    """Ops exact in floating point (ReLU, max): only a flushed subnormal operand, at most ``t``.
    ``forward`` gives the output's shape for ops that change it (max-pooling); elementwise ops pass None."""

    def error(p: Params, boxes: Sequence[Box], fmt: torch.dtype) -> Tensor:
        shape_like = boxes[0].lower
        if forward is not None:
            with torch.no_grad():
                shape_like = forward(p, shape_like)
        return torch.full_like(shape_like, torch.finfo(fmt).tiny)

    return error


def runtime_perturbation(node, boxes: Sequence[Box], rnd: Rounding) -> Tensor | None:
    """``E`` of ``node`` for ``rnd.runtime`` (the node may override its precision with
    ``params["runtime_dtype"]``, e.g. after a Cast), or None when nothing is to be covered."""
    if rnd.runtime is None or not rnd.sound:
        return None
    rule = RULES[node.op]
    if rule.runtime_error is None:
        return None
    fmt = node.params.get("runtime_dtype")
    fmt = getattr(torch, fmt) if isinstance(fmt, str) else (fmt or rnd.runtime)
    return rule.runtime_error(node.params, boxes, fmt)


def widen(box: Box, E: Tensor | None) -> Box:
    """``[l - E, u + E]`` rounded outward."""
    if E is None:
        return box
    return Box(down(box.lower - E), up(box.upper + E))


def node_box(node, boxes: Sequence[Box], rnd: Rounding) -> tuple[Box, Tensor | None]:
    """The IBP box of ``node`` over its input boxes, widened by its runtime perturbation ``E`` (which
    is also returned, for CROWN): contains the exact op's value and the runtime's."""
    E = runtime_perturbation(node, boxes, rnd)
    return widen(RULES[node.op].ibp(node.params, boxes, rnd), E), E


def _merged() -> dict[str, OpRule]:
    from .ops import activations, arith, cast, linear, pool, shape

    merged: dict[str, OpRule] = {}
    for table in (linear.RULES, arith.RULES, activations.RULES, pool.RULES, shape.RULES, cast.RULES):
        for name, rule in table.items():
            if name in merged:
                raise RuntimeError(f"op {name!r} has two rules")
            merged[name] = rule
    return merged


RULES: dict[str, OpRule] = _merged()
