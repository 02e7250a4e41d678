"""Certified lower bounds of ``C_r f(x) - d_r`` from the SDP relaxation, one specification row per solve.

For a row ``c`` the objective is ``c^T y - d`` with ``y = W_o x_K + b_o + e_o`` (``certify.sdp.chain``):

    c^T y - d = g^T x_K + (c^T W_o - g^T) x_K + c^T b_o + c^T e_o - d,    g = fl(W_o^T c),

so ``min (c^T y - d) >= SDP(g) + fl(c^T b_o) - gamma_k (|W_o|^T |c|)^T m_K - gamma_k |c|^T |b_o| - |c|^T E_o - d``
with ``SDP(g)`` the certified bound of ``min g^T x_K`` (``certify.sdp.certificate``) and ``m_K`` the box
magnitude of ``x_K``. ``C`` and ``d`` are the nearest floats to the spec's rationals; their representation
error is subtracted as ``crown_lower`` does in sound mode (``u |d| + u |c|^T m_y + tiny (sum m_y + 1)``).
The objective is scaled by a power of two before solving (exact, checked) and the bound scaled back.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..engine.fp import gamma
from .certificate import Certificate
from .chain import Chain
from .problem import QCQP, TINY, U, upper

# solve(obj) -> Certificate of min obj . p (or None when the solver gave nothing)
Solve = Callable[[np.ndarray], "Certificate | None"]


def _down(x: float) -> float:
    return math.nextafter(float(x), -math.inf)


def _up(x: float) -> float:
    return math.nextafter(float(x), math.inf)


def scaled_objective(problem: QCQP, g: np.ndarray) -> tuple[np.ndarray, int]:
    """``(obj, e)``: the pattern objective of ``g 2^e`` with ``max |g_r| mag_r 2^e`` about 1 (exact), and ``e``."""
    size = float(np.max(np.abs(g) * np.ldexp(problem.mag[problem.out], problem.exp[problem.out]), initial=0.0))
    e = -math.frexp(size)[1] if size > 0 else 0
    gs = np.ldexp(g, e)
    if not np.array_equal(np.ldexp(gs, -e), g) or np.any((gs != 0) & (np.abs(gs) < TINY)):
        e, gs = 0, g
    try:
        return problem.objective(gs), e
    except ValueError:
        return problem.objective(g), 0


def row_bound(chain: Chain, problem: QCQP, solve: Solve, c: np.ndarray, d: float) -> tuple[float, Certificate | None]:
    """The certified lower bound of ``c^T f(x) - d`` over the chain's input set (module docstring)."""
    W, bo, E = chain.out.W.numpy(), chain.out.b.numpy(), chain.out.E.numpy()
    k = c.size
    g = W.T @ c
    m_K = np.ldexp(problem.mag[problem.out], problem.exp[problem.out])  # x's magnitude (mag is y's)
    absc = np.abs(c)
    g_err = gamma(k + 1, torch.float64) * float((np.abs(W).T @ absc) @ m_K)
    cb = float(c @ bo)
    cb_err = gamma(k + 1, torch.float64) * float(absc @ np.abs(bo))
    m_y = np.maximum(np.abs(chain.out.lower.numpy()), np.abs(chain.out.upper.numpy()))
    rep = U * abs(d) + U * float(absc @ m_y) + TINY * (float(m_y.sum()) + 1)
    loss = float(upper(g_err + cb_err + float(absc @ E) + rep, 2 * k + 4)) + 8 * TINY
    obj, e = scaled_objective(problem, g)
    cert = solve(obj)
    if cert is None or not math.isfinite(cert.bound):
        return -math.inf, cert
    sdp = math.ldexp(cert.bound, -e)
    if not math.isfinite(sdp):
        return -math.inf, cert
    value = _down(_down(_down(sdp + cb) - d) - loss)
    return value, cert
