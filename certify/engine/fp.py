"""Sound floating point: the argument that lets a computed bound stand for the network's values.

What a *proved* verdict means (``semantics="runtime"``, the default): for every input of the set, the
property holds for the network evaluated in exact real arithmetic on its stored weights **and** for the
network as its runtime evaluates it in the model's own precision (IEEE arithmetic in any summation
order, with or without fused multiply-add, with or without flushing subnormal operands and results to
zero, explicit casts included). ``semantics="real"`` keeps the first half only. Two kinds of rounding
are therefore accounted for, separately:

* the rounding of the *bound computation itself* (float64, below), and
* the *runtime's* rounding, one perturbation per op (``runtime_perturbation`` in ``rules``): the value
  the runtime produces at a node is the exact op applied to the runtime's inputs plus an error ``e``
  with ``|e| <= E(node, input magnitudes)`` in the runtime's unit roundoff ``u_r`` and smallest normal
  ``t_r``. IBP widens each node's box by ``E``; CROWN adds ``e`` as a bounded variable at the node's
  output, so the backward pass subtracts ``<|Lambda|, E>``. Since ``e = 0`` is admissible, the same
  sets also contain the exact network's values. A runtime that can overflow to infinity on the box is
  refused for a proof (``OverflowRisk``).

The argument (standard a-priori error analysis, Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., Lemma 3.1 and section 3.1):

* With unit roundoff ``u`` (``2**-53`` for float64) and ``gamma_n = n u / (1 - n u)``, a dot product
  of length ``n`` computed in any summation order, with or without fused multiply-add, satisfies
  ``|fl(a.x) - a.x| <= gamma_n |a|.|x|``. Adding a bias is one more term: ``gamma_{n+1}``.
* An interval ``[l, u]`` is carried as centre ``c`` and radius ``r``. Rounding in ``c = (l+u)/2`` is
  absorbed by taking ``r = up(max(u - c, c - l))``. For a linear map ``y = W x + b`` the interval
  transform is ``c' = W c + b``, ``r' = |W| r``; each is off by at most
  ``gamma_{n+2} (|W| (|c| + r) + |b|)``, so widening ``r'`` by that amount (computed with its own
  rounding absorbed by ``path_factor``, plus the smallest normal) gives an interval that
  contains the exact image. The same holds for any linear op evaluated as sums of products
  (convolution computed by im2col/GEMM, average pooling); ``sound_context`` disables the
  oneDNN/cuDNN paths that may use Winograd or FFT algorithms, and TF32.
* Elementwise ops: ReLU and max-pooling are exact in floating point. ``a * x + b`` (a folded
  BatchNorm, Mul/Div/Add/Sub by a constant) is a length-2 dot product plus the representation
  error of the folded constants, which the importer records per node (``scale_err``,
  ``shift_err``). Sigmoid and tanh come from a vector math library whose error is a few ulps of
  the result; the bound is widened by ``16 u`` relative (four times the worst documented error of
  the SLEEF/glibc routines) plus the smallest normal.
* Monotone end points are rounded outward with ``nextafter``, and the input box itself is widened
  by one ulp, which covers the decimal-to-binary rounding of VNN-LIB constants.
* Underflow: ``sound_context`` switches flush-to-zero *off* (IEEE gradual underflow), so subnormal
  weights and inputs are used as they are (a float64 weight ``1e-310`` is not an exact zero); each
  error bound still adds ``2 (n + 2) tiny`` absolute, which covers both gradual underflow and a result
  flushed to zero by a thread whose flag some other library set.
* The final margin ``C y - d`` of every specification row is concretised in float64 with
  ``gamma_{n+1}`` plus the representation error of ``C`` and ``d`` subtracted (``certify_margin``).

In fast mode (``Rounding(sound=False)``), used for training and for speed, no correction is made
and nothing computed in that mode may be reported as proved.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sets import Box, down, up


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: half the machine epsilon of ``dtype``."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """``gamma_n = n u / (1 - n u)``, the relative error bound of an ``n``-term dot product."""
    nu = n * unit_roundoff(dtype)
    if nu >= 0.5:
        raise ValueError(f"dot product of length {n} too long for a rounding bound in {dtype}")
    return nu / (1 - nu)


#: A bound on the roundings along any path of a nonnegative quantity the engine computes to bound an error (a
#: magnitude ``<|A|, m>``, an error total summed over the graph's nodes): dot products of fewer than 2**36 terms,
#: nested a few levels, over fewer than 2**36 nodes. Far above anything that fits in memory.
PATH_ROUNDINGS = 2 ** 40


def path_factor(dtype: torch.dtype) -> float:
    """``1 + 2 gamma_P`` (``P = PATH_ROUNDINGS``; 1.0002 in float64): a computed nonnegative sum or product of ``k
    <= P`` rounded operations is at least ``(1 - gamma_k)`` times its exact value (Higham, Lemma 3.1: no
    cancellation), so the exact value is at most the computed one times ``1 / (1 - gamma_P) <= 1 + 2 gamma_P``, with
    room left for the few roundings of the multiplication by this factor. Multiplying a computed error bound by it
    makes the bound cover its own evaluation. Raises for a format too short for the argument (float32)."""
    return 1 + 2 * gamma(PATH_ROUNDINGS, dtype)


@dataclass(frozen=True)
class Rounding:
    """How bound rules treat rounding: ``sound=True`` widens every result to cover it."""

    sound: bool = True
    # the runtime's precision whose per-op rounding is covered too (None: exact real arithmetic only)
    runtime: torch.dtype | None = None

    def outward(self, box: Box) -> Box:
        """End points of one rounded operation, moved outward: one ulp for the rounding and the
        smallest normal for a result flushed to zero."""
        if not self.sound:
            return box
        tiny = torch.finfo(box.lower.dtype).tiny
        return Box(down(box.lower - tiny), up(box.upper + tiny))

    def input_box(self, box: Box) -> Box:
        """The starting box: one ulp outward (covers decimal parsing), and no subnormal end points
        (``sound_context`` flushes subnormals, so they are replaced by 0 or -+ the smallest normal,
        whichever lies outside)."""
        if not self.sound:
            return box
        tiny = torch.finfo(box.lower.dtype).tiny
        lo, hi = down(box.lower), up(box.upper)
        lo = torch.where(lo.abs() < tiny, torch.where(lo < 0, -tiny, 0.0).to(lo.dtype), lo)
        hi = torch.where(hi.abs() < tiny, torch.where(hi > 0, tiny, 0.0).to(hi.dtype), hi)
        return Box(lo, hi)

    def hi(self, t: Tensor) -> Tensor:
        """An upper bound on the exact value of one correctly rounded (possibly flushed) operation."""
        return up(t + torch.finfo(t.dtype).tiny) if self.sound else t

    def lo(self, t: Tensor) -> Tensor:
        """A lower bound on the exact value of one correctly rounded (possibly flushed) operation."""
        return down(t - torch.finfo(t.dtype).tiny) if self.sound else t

    def center_radius(self, box: Box) -> tuple[Tensor, Tensor]:
        """``(c, r)`` with ``[l, u]`` inside ``[c - r, c + r]`` in real arithmetic (when sound).

        Point intervals get radius exactly 0 (``c = l = u``), which keeps ``nextafter(0)`` subnormals out
        of the next matrix product; other radii are rounded up past a possible flush to zero."""
        c = torch.lerp(box.lower, box.upper, 0.5)  # (l + u) / 2 in one op
        if not self.sound:
            return c, (box.upper - box.lower) * 0.5
        m = torch.maximum(box.upper - c, c - box.lower)
        tiny = torch.finfo(m.dtype).tiny  # a subnormal difference may have been flushed to zero
        return c, torch.where(box.upper == box.lower, torch.zeros_like(m), up(m + tiny))

    def from_center_radius(self, c: Tensor, r: Tensor, err: Tensor | float | None = None) -> Box:
        """``[c - r - err, c + r + err]`` rounded outward; ``err`` (a computed error bound) is scaled by
        ``path_factor`` to cover its own evaluation."""
        if not self.sound:
            return Box(c - r, c + r)
        width = r + err * path_factor(c.dtype) if err is not None else r
        return self.outward(Box(c - up(width), c + up(width)))

    def error_bound(self, magnitude: Tensor, n: int, extra_rel: Tensor | float = 0.0) -> Tensor:
        """``(gamma_n + extra_rel) * magnitude + 2 (n + 2) tiny``, itself rounded up: ``path_factor``
        covers the rounding of this product and of ``magnitude``'s own computation (a nonnegative dot
        product, computed low by at most ``gamma_k`` relative), and the absolute term the underflow of each
        of the ``n + 2`` operations (flushed to zero: at most ``tiny`` each)."""
        dt = magnitude.dtype
        g = gamma(n, dt)
        tiny = torch.finfo(dt).tiny
        return (g + extra_rel) * magnitude * path_factor(dt) + 2 * (n + 2) * tiny

    def relative(self, box: Box, rel_ulps: float) -> Box:
        """Widen by ``rel_ulps * u * |value|`` plus the smallest normal (library functions)."""
        if not self.sound:
            return box
        dt = box.lower.dtype
        k = rel_ulps * unit_roundoff(dt)
        tiny = 4 * torch.finfo(dt).tiny  # covers results flushed to zero
        return Box(down(box.lower - k * box.lower.abs() - tiny), up(box.upper + k * box.upper.abs() + tiny))


SOUND = Rounding(True)
FAST = Rounding(False)


class OverflowRisk(ArithmeticError):
    """The runtime may overflow to infinity somewhere on the input set: no bound can stand for it."""


def sound_rounding(graph) -> Rounding:
    """The sound ``Rounding`` for ``graph.semantics``: covering the runtime's rounding in
    ``graph.runtime_dtype`` (``"runtime"``), or real arithmetic only (``"real"``)."""
    return Rounding(True, runtime=graph.runtime_dtype if graph.semantics == "runtime" else None)


@contextlib.contextmanager
def sound_context():
    """Run linear ops as plain sums of products: no oneDNN/cuDNN (Winograd, FFT) and no TF32, and
    with IEEE gradual underflow: flush-to-zero is switched off, since it also flushes subnormal
    *operands* (a subnormal weight would count as an exact zero). Each error bound still carries an
    absolute ``tiny`` per operation. On exit the flush stays off (torch's default)."""
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_flush_denormal(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the mkldnn context manager warns about Intel GPUs
            mkldnn = torch.backends.mkldnn.flags(enabled=False)
            mkldnn.__enter__()
        try:
            with torch.backends.cudnn.flags(enabled=False):
                yield
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mkldnn.__exit__(None, None, None)
            torch.set_flush_denormal(False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32


def certify_margin(C: Tensor, d: Tensor, y: Box) -> Tensor:
    """Certified lower bounds of ``C_j y - d_j`` over the output box ``y``, per row, in float64.

    ``C`` is ``[B, R, n]``, ``d`` is ``[B, R]``, ``y`` is a box of ``[B, n]``. The interval value
    ``sum_k (C+_jk l_k - C-_jk u_k) - d_j`` is computed in float64, then reduced by
    ``(gamma_{n+1} + u) (|C| max(|l|, |u|) + |d|)``: rounding of the sum plus the representation error
    of ``C`` and ``d`` parsed from decimal text (relative in the normal range), and by
    ``tiny (sum_k max(|l_k|, |u_k|) + 1)`` for entries whose rounding fell below it (absolute). The result is ``<=`` the exact real-arithmetic minimum
    of ``C_j y - d_j`` over the box, so ``> 0`` proves the row's constraint is never met.
    """
    C = C.to(torch.float64)
    d = d.to(torch.float64)
    lo = y.lower.to(torch.float64).reshape(y.lower.shape[0], 1, -1)
    hi = y.upper.to(torch.float64).reshape(y.upper.shape[0], 1, -1)
    zero = torch.zeros((), dtype=torch.float64, device=C.device)
    value = (torch.where(C > 0, C * lo, zero) + torch.where(C < 0, C * hi, zero)).sum(-1) - d
    mag = torch.where(C != 0, C.abs() * torch.maximum(lo.abs(), hi.abs()), zero).sum(-1) + d.abs()
    n = C.shape[-1] + 1
    err = SOUND.error_bound(mag, n, extra_rel=unit_roundoff(torch.float64))
    # C, d rounded to a subnormal (or to 0) from an exact rational: absolute error, under tiny per entry
    m = torch.maximum(lo.abs(), hi.abs()).sum(-1)
    err = (err + torch.finfo(torch.float64).tiny * (m + 1)) * path_factor(torch.float64)
    return down(value - err)
