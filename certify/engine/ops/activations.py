"""Elementwise activations. All are monotone, so IBP is ``[f(l), f(u)]``; each also supplies the
linear relaxation CROWN uses (Zhang et al. 2018), made valid in exact arithmetic under sound rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fp import Rounding, unit_roundoff
from ..rules import OpRule, Params, Relaxation, flush_runtime_error, magnitude, monotone_ibp

# SLEEF/glibc document <= 3.5 ulp for these routines; 16 units of roundoff (8 ulp) is a safe envelope.
LIBRARY_ULPS = 16.0
# The runtimes' own sigmoid/tanh (onnxruntime's MLAS approximations, PyTorch's SLEEF) are not correctly
# rounded. Measured on 1.4e8 float32 inputs (random bit patterns and uniform on [-30, 30] and [-3, 3]):
# onnxruntime 2.95 u (sigmoid) and 5.4 u (tanh) absolute, PyTorch 1.5 u; 64 u absolute is the envelope
# assumed (outputs lie in [-1, 1]). This is a measured, not a proven, property of those libraries.
RUNTIME_LIBRARY_ABS_U = 64.0


def _library_runtime_error(p: Params, boxes, fmt: torch.dtype) -> Tensor:
    m = magnitude(boxes[0])
    return torch.full_like(m, RUNTIME_LIBRARY_ABS_U * unit_roundoff(fmt) + 2 * torch.finfo(fmt).tiny)


def _leaky_runtime_error(p: Params, boxes, fmt: torch.dtype) -> Tensor:
    """``alpha * x`` is one rounding on the negative side, plus flushed operand and result."""
    m = magnitude(boxes[0])
    return 2 * unit_roundoff(fmt) * float(p["alpha"]) * m + 3 * torch.finfo(fmt).tiny


def _relu(p: Params, x: Tensor) -> Tensor:
    return torch.relu(x)


def _leaky_relu(p: Params, x: Tensor) -> Tensor:
    return F.leaky_relu(x, p["alpha"])


def _sigmoid(p: Params, x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def _tanh(p: Params, x: Tensor) -> Tensor:
    return torch.tanh(x)


def _vector(g: torch.Generator):
    return {}, [(7,)]


def _leaky_example(g: torch.Generator):
    return {"alpha": float(torch.rand(1, generator=g)) * 0.5}, [(7,)]


def _rows(t: Tensor, alpha: Tensor | None) -> Tensor:
    """Give an ``[B, *shape]`` tensor a row axis when the lower slope is per row (``[B, R, *shape]``)."""
    return t.unsqueeze(1) if alpha is not None else t


def _piecewise_relax(l: Tensor, u: Tensor, rnd: Rounding, alpha: Tensor | None, neg_slope: float) -> Relaxation:
    """ReLU (``neg_slope = 0``) and LeakyReLU: ``f(z) = z`` for ``z >= 0``, ``neg_slope * z`` below.

    Stable neurons are exact. Unstable ones (``l < 0 < u``): upper line the chord through
    ``(l, f(l))`` and ``(u, u)``, with its slope rounded up so that it stays above the chord on
    ``[l, u]``; lower line ``a z`` through the origin, valid for any ``a`` in ``[neg_slope, 1]``: the
    optimisable ``alpha`` (alpha-CROWN), else CROWN's adaptive choice (1 if ``u >= -l``).
    """
    if not rnd.sound and alpha is None and neg_slope == 0:
        return _fast_relu_relax(l, u)
    unstable = (l < 0) & (u > 0)
    active = (l >= 0).to(l.dtype)
    stable_slope = active + (1 - active) * neg_slope
    one = torch.ones_like(l)
    denom = rnd.lo(torch.where(unstable, u - l, one))
    num = rnd.hi(u - rnd.lo(neg_slope * l)) if neg_slope else u
    s = rnd.hi(torch.where(unstable, num, one) / denom)
    uw = torch.where(unstable, s, stable_slope)
    # intercept f(l) - s l = l (neg_slope - s) >= 0: l < 0, so the lower estimate of (neg_slope - s) bounds it above
    ub = torch.where(unstable, rnd.hi(l * rnd.lo(neg_slope - s)), torch.zeros_like(l))
    if alpha is None:
        a = torch.where(u >= -l, one, one * neg_slope)
    else:
        a = alpha.clamp(min=neg_slope, max=1.0)
    lw = torch.where(_rows(unstable, alpha), a, _rows(stable_slope, alpha))
    return Relaxation(lw, torch.zeros_like(l), uw, ub)


def _fast_relu_relax(l: Tensor, u: Tensor) -> Relaxation:
    """CROWN's ReLU lines in fast mode (training, no rounding argument) without branches: with
    ``l- = min(l, 0)`` and ``u+ = max(u, 0)`` the upper slope ``u+ / (u+ - l-)`` is 1 for active neurons, 0 for
    inactive ones and the chord's for unstable ones, its intercept ``-l- * slope``; the lower slope is 1 where
    ``u >= -l`` and ``u > 0``. The same lines as the general rule (but where ``l = u = 0``: slope 0, either is
    valid), in five elementwise ops instead of a dozen, which matters when few rows follow (loss fusion)."""
    neg, pos = l.clamp(max=0), u.clamp(min=0)
    uw = pos / (pos - neg).clamp(min=torch.finfo(l.dtype).tiny)
    lw = ((u + l >= 0) & (u > 0)).to(l.dtype)
    return Relaxation(lw, torch.zeros_like(l), uw, -neg * uw)


def _relu_relax(p: Params, l: Tensor, u: Tensor, rnd: Rounding, alpha: Tensor | None) -> Relaxation:
    return _piecewise_relax(l, u, rnd, alpha, 0.0)


def _leaky_relax(p: Params, l: Tensor, u: Tensor, rnd: Rounding, alpha: Tensor | None) -> Relaxation:
    return _piecewise_relax(l, u, rnd, alpha, float(p["alpha"]))


def _s_shaped_relax(f, df, l: Tensor, u: Tensor, rnd: Rounding) -> Relaxation:
    """Sigmoid-like ``f`` (increasing, convex below 0, concave above), as in CROWN's general activations:

    * ``u <= 0`` (convex): upper = chord, lower = tangent at the midpoint;
    * ``l >= 0`` (concave): lower = chord, upper = tangent at the midpoint;
    * ``l < 0 < u``: lower = tangent at the largest ``d`` in ``[l, 0]`` whose tangent passes below
      ``(u, f(u))`` (bisection on ``h(d) = f(d) + f'(d)(u - d) - f(u)``, increasing on ``[l, 0]``,
      keeping the ``h <= 0`` end), or the chord when the tangent at ``l`` already passes above (then
      ``f - chord`` is convex-increasing, then concave with a zero at ``u``: non-negative); the upper
      line symmetric on ``[0, u]`` through ``(l, f(l))``.

    Nearly degenerate intervals use the constant bounds ``f(l)``, ``f(u)``. Under sound rounding each
    intercept moves outward by ``64 u (2 + |slope| (|l| + |u|))``: the function values come from a
    vector math library (a few ulps), and the slope and tangency conditions are computed in floating
    point; the margin is checked against 200-bit arithmetic in the tests.
    """
    fl, fu = f(l), f(u)
    width = u - l
    tiny_width = width <= 1e-9 * (1 + l.abs() + u.abs())
    safe_width = torch.where(tiny_width, torch.ones_like(width), width)
    chord_w = (fu - fl) / safe_width
    chord_b = fl - chord_w * l
    mid = (l + u) / 2
    tan_mid_w = df(mid)
    tan_mid_b = f(mid) - tan_mid_w * mid

    zero = torch.zeros_like(l)
    mixed = (l < 0) & (u > 0)
    # lower line in the mixed case
    tan_l_over = fl + df(l) * (u - l) > fu  # tangent at l passes above (u, f(u)): use the chord
    d_low = _bisect(torch.where(mixed, l, zero), zero, lambda m: f(m) + df(m) * (u - m) - fu <= 0)
    low_w_m = df(d_low)
    low_b_m = f(d_low) - low_w_m * d_low
    low_w_m = torch.where(tan_l_over, chord_w, low_w_m)
    low_b_m = torch.where(tan_l_over, chord_b, low_b_m)
    # upper line in the mixed case: tangent at the smallest d in [0, u] with g(d) = f(d) + f'(d)(l - d) - f(l)
    # >= 0 (g increases on the concave side), or the chord when the tangent at u passes below (l, f(l))
    tan_u_under = fu + df(u) * (l - u) < fl
    d_up = _bisect(torch.where(mixed, u, zero), zero, lambda m: f(m) + df(m) * (l - m) - fl >= 0)
    up_w_m = df(d_up)
    up_b_m = f(d_up) - up_w_m * d_up
    up_w_m = torch.where(tan_u_under, chord_w, up_w_m)
    up_b_m = torch.where(tan_u_under, chord_b, up_b_m)

    convex = u <= 0
    lw = torch.where(mixed, low_w_m, torch.where(convex, tan_mid_w, chord_w))
    lb = torch.where(mixed, low_b_m, torch.where(convex, tan_mid_b, chord_b))
    uw = torch.where(mixed, up_w_m, torch.where(convex, chord_w, tan_mid_w))
    ub = torch.where(mixed, up_b_m, torch.where(convex, chord_b, tan_mid_b))
    lw = torch.where(tiny_width, zero, lw)
    uw = torch.where(tiny_width, zero, uw)
    lb = torch.where(tiny_width, fl, lb)
    ub = torch.where(tiny_width, fu, ub)
    if rnd.sound:
        k = 64 * unit_roundoff(l.dtype)
        span = l.abs() + u.abs()
        lb = rnd.lo(lb - k * (2 + lw.abs() * span))
        ub = rnd.hi(ub + k * (2 + uw.abs() * span))
    return Relaxation(lw, lb, uw, ub)


def _bisect(valid: Tensor, invalid: Tensor, is_valid, steps: int = 40) -> Tensor:
    """Move ``valid`` towards ``invalid`` while ``is_valid`` holds (monotone predicate); the result is
    always a point where it held (or the starting ``valid`` end)."""
    for _ in range(steps):
        m = (valid + invalid) / 2
        ok = is_valid(m)
        valid = torch.where(ok, m, valid)
        invalid = torch.where(ok, invalid, m)
    return valid


def _dsigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _dtanh(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return 1 - t * t


def _sigmoid_relax(p: Params, l: Tensor, u: Tensor, rnd: Rounding, alpha: Tensor | None) -> Relaxation:
    return _s_shaped_relax(torch.sigmoid, _dsigmoid, l, u, rnd)


def _tanh_relax(p: Params, l: Tensor, u: Tensor, rnd: Rounding, alpha: Tensor | None) -> Relaxation:
    return _s_shaped_relax(torch.tanh, _dtanh, l, u, rnd)


RULES = {
    "relu": OpRule("relu", _relu, monotone_ibp(_relu, None, elementwise=True), _vector, relax=_relu_relax, alpha=True,
                   runtime_error=flush_runtime_error()),
    # alpha * x is one rounding: 2 units of roundoff relative covers it
    "leaky_relu": OpRule("leaky_relu", _leaky_relu, monotone_ibp(_leaky_relu, 2.0, elementwise=True), _leaky_example,
                         relax=_leaky_relax, alpha=True, runtime_error=_leaky_runtime_error),
    "sigmoid": OpRule("sigmoid", _sigmoid, monotone_ibp(_sigmoid, LIBRARY_ULPS, elementwise=True), _vector, relax=_sigmoid_relax,
                      domain=(-12.0, 12.0), runtime_error=_library_runtime_error),
    "tanh": OpRule("tanh", _tanh, monotone_ibp(_tanh, LIBRARY_ULPS, elementwise=True), _vector, relax=_tanh_relax, domain=(-6.0, 6.0),
                   runtime_error=_library_runtime_error),
}
