"""The bound the SDP backends report: the value of a dual point, checked in floating point with outward rounding.

**The argument.** Let ``w = (1, x)`` be any actual evaluation of the network, so that every row of the
program holds: ``<A_i, w w^T> <= 0`` (``certify.sdp.problem``; valid in exact arithmetic for its float
coefficients). For multipliers ``lambda >= 0`` (enforced here: negative or non-finite ones are set to 0)
and the objective's symmetric matrix ``G``,

    f(w) = <G, w w^T> >= <G, w w^T> + sum_i lambda_i <A_i, w w^T> = <M, w w^T>,   M = G + sum_i lambda_i A_i.

Write ``M = H + (M_00 - h) e_0 e_0^T`` for any float ``h`` (``H`` is ``M`` with ``h`` at ``(0, 0)``). Since
``w_0 = 1``,

    <M, w w^T> = (M_00 - h) + <H, w w^T> >= (M_00 - h) + min(0, lambda_min(H)) ||w||^2,

and ``||w||^2 <= T = 1 + sum_r mag_r^2`` from the engine's boxes (every actual ``w`` lies in them). So
``bound = (M_00 - h) + min(0, s) T - Delta`` is a lower bound of ``f`` over every actual evaluation when

* ``s <= lambda_min(H)`` rigorously (``lambda_min_lower``), and
* ``Delta`` bounds the error of assembling ``M`` in float64: each entry is a sum of at most ``K + 1``
  products of two floats, so ``|M~ - M| <= gamma_{K+1} (|G| + sum_i lambda_i |A_i|)`` entrywise (plus the
  smallest normal per operation, and per halved off-diagonal entry), and ``|<M - M~, w w^T>| <=
  sum_rc |M - M~|_rc mag_r mag_c =: Delta``.

The solver's primal value is never used; the multipliers are just numbers. ``h`` is chosen as the
Schur complement ``m^T R^{-1} m`` of ``M`` (largest ``h`` keeping ``H`` positive semidefinite; ``R`` the
lower-right block, shifted by ``tau I`` until its Cholesky factorisation succeeds), enlarged by ``1e-9``
relative; any ``h`` is valid, this one is good. Every scalar operation is rounded down with ``nextafter``.

**lambda_min, rigorously** (``lambda_min_lower``). If the floating-point Cholesky factorisation of
``H' = fl(H - sigma I)`` runs to completion with computed factor ``R``, then ``R^T R = H' + dH`` with
``|dH| <= gamma_{n+1} |R^T| |R|`` (Higham, *Accuracy and Stability of Numerical Algorithms*, Thm 10.3;
it holds for any order of the inner products, so for LAPACK's blocked ``dpotrf`` over a conventional
BLAS too, and its proof needs only that the factorisation completed: this is how Rump verifies positive
definiteness, BIT 2006). Then ``lambda_min(H') >= -||dH||_2 >= -gamma_{n+1} || |R| ||_2^2 >=
-gamma_{n+1} ||R||_F^2``, and with the diagonal's own rounding ``|fl(H_ii - sigma) - (H_ii - sigma)| <=
2 u |H'_ii| + tiny``, ``lambda_min(H) >= sigma - gamma_{n+1} ||R||_F^2 - max_i (2 u |H'_ii| + tiny) -
4 n (n + 2) tiny`` (the last term covers underflow in the factorisation). ``sigma`` starts just below
the estimate of ``lambda_min`` and moves down until the factorisation completes; if it never does,
Gershgorin's bound ``min_i (H_ii - sum_{j != i} |H_ij|)`` is used, rounded down.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..engine.fp import gamma
from .problem import QCQP, TINY, U, upper

def _g(n: int) -> float:
    import torch

    return gamma(n, torch.float64)


def _down(x: float) -> float:
    return math.nextafter(float(x), -math.inf)


def chol_lower(H: np.ndarray, sigma: float) -> float | None:
    """A rigorous lower bound of ``lambda_min(H)`` if the Cholesky factorisation of ``fl(H - sigma I)``
    completes, else None (module docstring)."""
    n = H.shape[0]
    Hs = np.array(H, dtype=np.float64, copy=True)
    diag = np.diag(H) - sigma
    Hs[np.diag_indices(n)] = diag
    try:
        R = scipy.linalg.cholesky(Hs, lower=False, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return None
    if not np.isfinite(R).all():
        return None
    frob = float(upper(np.sum(R * R), n * n))
    delta = float(upper(_g(n + 1) * frob, 1)) + 4 * n * (n + 2) * TINY
    dg = float(np.max(2 * U * np.abs(diag))) + TINY
    return _down(_down(_down(sigma - delta) - dg))


def gershgorin_lower(H: np.ndarray) -> float:
    """``min_i (H_ii - sum_{j != i} |H_ij|)``, rounded down."""
    n = H.shape[0]
    d = np.diag(H)
    rows = upper(np.abs(H).sum(1), n)  # an upper bound of sum_j |H_ij|
    return float(np.min(np.nextafter((d + np.abs(d)) - rows, -np.inf)))  # d + |d| is exact


def lambda_min_lower(H: np.ndarray, estimate: float | None = None, tries: int = 10) -> float:
    """A rigorous lower bound of the smallest eigenvalue of the symmetric float64 matrix ``H`` (in exact
    arithmetic on its entries); ``estimate``: a guess of it (default: LAPACK's, unverified)."""
    H = np.asarray(H, dtype=np.float64)
    if not np.isfinite(H).all():
        return -math.inf
    if not np.array_equal(H, H.T):
        raise ValueError("lambda_min_lower takes a symmetric matrix")
    n = H.shape[0]
    if n == 0:
        return math.inf
    scale = max(float(np.abs(H).max()), TINY)
    if estimate is None:
        estimate = float(scipy.linalg.eigvalsh(H, subset_by_index=[0, 0])[0])
    gap = (n + 1) * U * scale
    for _ in range(tries):
        s = chol_lower(H, estimate - gap)
        if s is not None:
            return s
        gap *= 8
    return gershgorin_lower(H)


@dataclass
class Certificate:
    """``bound``: certified lower bound of the objective over every actual evaluation; the parts:
    ``mu = M_00 - h`` (rounded down), ``lambda_min`` (rigorous lower bound of ``lambda_min(H)``),
    ``trace`` (``T``), ``assembly`` (``Delta``)."""

    bound: float
    mu: float
    lambda_min: float
    trace: float
    assembly: float


def dual_matrix(problem: QCQP, lam: np.ndarray, obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M~`` (dense, symmetric) and the entrywise error bound of each pattern position (module docstring)."""
    A = problem.A
    vals = obj + A.T @ lam
    absv = np.abs(obj) + abs(A).T @ lam
    K = int(np.diff(A.tocsc().indptr).max(initial=0)) + 1
    err = upper(_g(K + 1) * absv, K) + (K + 4) * TINY
    return pattern_matrix(problem, vals), err


def pattern_matrix(problem: QCQP, vals: np.ndarray) -> np.ndarray:
    """The dense symmetric matrix of pattern values ``vals`` (an off-diagonal position's value is split in
    halves over ``(r, c)`` and ``(c, r)``)."""
    n1 = problem.n + 1
    M = np.zeros((n1, n1))
    half = np.where(problem.pr != problem.pc, vals / 2, vals)
    M[problem.pr, problem.pc] = half
    M[problem.pc, problem.pr] = half
    return M


def pattern_sparse(problem: QCQP, vals: np.ndarray):
    """``pattern_matrix`` as a ``scipy.sparse`` CSR matrix (same halving of off-diagonal values)."""
    from scipy import sparse

    off = problem.pr != problem.pc
    half = np.where(off, vals / 2, vals)
    r = np.concatenate([problem.pr, problem.pc[off]])
    c = np.concatenate([problem.pc, problem.pr[off]])
    n1 = problem.n + 1
    return sparse.csr_matrix((np.concatenate([half, half[off]]), (r, c)), shape=(n1, n1))


def schur_h(M: np.ndarray) -> tuple[float, float]:
    """``(h, tau)``: ``h = m^T (R + tau I)^{-1} m`` enlarged by ``1e-9`` relative, the smallest ``tau >= 0`` of a
    geometric sequence for which ``R + tau I`` factorises (module docstring)."""
    m, R = M[0, 1:], M[1:, 1:]
    if m.size == 0:
        return float(M[0, 0]), 0.0
    scale = max(float(np.abs(R).max()), TINY)
    tau = 0.0
    for _ in range(40):
        try:
            c = scipy.linalg.cho_factor(R + tau * np.eye(R.shape[0]), check_finite=True)
            y = scipy.linalg.cho_solve(c, m)
            h = float(m @ y)
            if math.isfinite(h):
                return h + 1e-9 * abs(h) + 1e-12 * scale, tau
        except (np.linalg.LinAlgError, ValueError):
            pass
        tau = max(4 * tau, 1e-13 * scale)
    return float(M[0, 0]), math.inf


def certify(problem: QCQP, lam: np.ndarray, obj: np.ndarray, h: float | None = None) -> Certificate:
    """The certified lower bound of ``min obj . p`` over every actual evaluation, from multipliers ``lam``
    (one per row of ``problem.A``; see the module docstring); ``h``: the split of ``M_00`` (default: the
    Schur complement; any value is sound)."""
    lam = np.where(np.isfinite(lam), np.maximum(np.asarray(lam, dtype=np.float64), 0.0), 0.0)
    M, err = dual_matrix(problem, lam, obj)
    if not np.isfinite(M).all():
        return Certificate(-math.inf, -math.inf, -math.inf, math.inf, math.inf)
    mag = problem.mag
    delta = float(upper(np.sum(err * mag[problem.pr] * mag[problem.pc]), err.size + 2))
    if h is None:
        h, tau = schur_h(M)
    else:
        tau = None
    H = M.copy()
    H[0, 0] = h
    mu = _down(M[0, 0] - h)
    s = lambda_min_lower(H, estimate=-tau if tau is not None and math.isfinite(tau) else None)
    T = problem.trace_bound()
    value = mu
    if s < 0:
        value = _down(value + _down(s * T))
    value = _down(value - delta)
    if not math.isfinite(value):
        value = -math.inf
    return Certificate(value, mu, s, T, delta)
