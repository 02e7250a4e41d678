"""The lifted program of a ``Chain``: constraints ``<A_i, P> <= 0`` on ``P = w w^T``, ``w = (1, x_0, x_1, ..., x_K)``.

Every actual evaluation of the network (exact, or the runtime's under ``semantics="runtime"``) gives a
rank-one ``P = w w^T`` that satisfies every constraint below, stated with the float64 coefficients it is
given (that is what the dual certificate needs, ``certify.sdp.certificate``). The relaxation drops
``rank P = 1`` and keeps ``P >= 0``, ``P_00 = 1``.

Constraints (Raghunathan, Steinhardt and Liang 2018, with the perturbation of ``certify.sdp.chain``;
``a = W x_{k-1} + b``, ``z = a + e``, ``|e| <= E``, ``[l, u]`` the engine's box of ``z``, ``u > 0``):

* ``x >= 0`` and ``x >= a - E`` (from ``x = relu(z) >= z``);
* ``x o x - x o a <= E o x`` and ``x o x - x o a >= -E o x`` (``x (x - z) = 0``, so ``x (x - a) = x e``
  and ``x >= 0``): RSL's ``x o x = x o (W x + b)`` with the perturbation;
* ``(x - max(l, 0)) o (x - u) <= 0``: the engine's bounds, also what bounds ``trace(P)``;
* unstable neurons (``l < 0``): the triangle ``(u - l) x <= u (a + E - l)``; active ones (``l >= 0``):
  ``x <= a + E`` (``x = z``). With these the relaxation contains the LP relaxation CROWN's bound bounds,
  so its optimum is at least CROWN's;
* input: ``(x_0 - l_0) o (x_0 - u_0) <= 0`` (the box, for every set), and for an L2 ball
  ``||x_0 - c||^2 <= eps^2`` natively.

Floating-point statement. A constraint's coefficients are stored floats (``W``, ``-1``, ``1``) or
computed ones (``b - E``, ``l + u``, ``l u``, ``u W``, ...). For computed ones the difference to the exact
value is bounded (one rounding: ``2 u |value| + tiny``; three: ``gamma_4``) and multiplied by the
monomial's magnitude from the boxes (``|x_r x_c| <= m_r m_c``); the sum, the row's *slack*, is an upper
bound on how much the float constraint can exceed the exact one, so ``<A~_i, w w^T> + kappa~_i - slack_i <= 0``
holds for every actual ``w``. The constant is stored at ``P_00`` rounded down (``down(kappa~ - slack)``),
so the float row is valid in exact arithmetic.

Scaling (exact, checked). Each variable is divided by a power of two ``s_r >= mag_r`` (``x_r = s_r y_r``,
``s_0 = 1``): position ``(r, c)``'s coefficients are multiplied by ``s_r s_c``, and ``|y_r| <= mag_r / s_r <= 1``,
so every quantity the solvers and the certificate see is of order one whatever the network's magnitudes
(a bias of ``1e8`` would otherwise make ``trace(P)`` ~ ``1e16``). Rows are then scaled by powers of two too.
If a scaled coefficient would leave the normal range, nothing is scaled (``s = 1``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ..engine.fp import gamma
from .chain import Chain

U = 2.0**-53
TINY = float(np.finfo(np.float64).tiny)


def down(x: np.ndarray) -> np.ndarray:
    return np.nextafter(x, -np.inf)


def upper(x: np.ndarray, k: int) -> np.ndarray:
    """A non-negative float64 sum of about ``k`` roundings made an upper bound of its exact value."""
    return np.nextafter(np.asarray(x) * (1 + 2 * gamma(k + 8, _t64())) + (k + 8) * TINY, np.inf)


def _t64():
    import torch

    return torch.float64


@dataclass
class QCQP:
    """``n`` variables (``P`` is ``(n+1) x (n+1)``); pattern positions ``(pr[k], pc[k])`` with ``pr <= pc``;
    rows ``A`` (``[m, Np]``, csr): ``g_i(P) = sum_k A[i, k] P[pr_k, pc_k] <= 0`` (an off-diagonal position
    counts once, so the symmetric matrix of row ``i`` has ``A[i, k] / 2`` there); ``mag``: ``|w_r| <= mag[r]``
    (``mag[0] = 1``); ``out``: the indices of the last block's variables (the objective's); ``kind``: a label
    per row; ``offsets``: the first index of each block (input, hidden layers)."""

    n: int
    pr: np.ndarray
    pc: np.ndarray
    A: sparse.csr_matrix
    mag: np.ndarray
    out: np.ndarray
    kind: np.ndarray
    offsets: list[int]
    pos_first_row: np.ndarray  # position of (0, r) for r = 0..n
    exp: np.ndarray  # the variables' scales s_r = 2^exp[r]: the program is in y = x / s

    @property
    def m(self) -> int:
        return self.A.shape[0]

    def trace_bound(self) -> float:
        """``T >= trace(w w^T) = 1 + sum_r w_r^2`` for every actual ``w`` (``mag[0] = 1``)."""
        return float(upper(np.sum(self.mag**2), self.n + 1))

    def objective(self, g: np.ndarray) -> np.ndarray:
        """Pattern coefficients of the linear objective ``g^T x_K`` (in the scaled variables: ``g_r s_r``;
        ``ValueError`` if that is not exact)."""
        obj = np.zeros(self.pr.size)
        gs = np.ldexp(g, self.exp[self.out])
        if not np.array_equal(np.ldexp(gs, -self.exp[self.out]), g) or np.any((gs != 0) & (np.abs(gs) < TINY)):
            raise ValueError("objective coefficients out of the exactly scalable range")
        obj[self.pos_first_row[self.out]] = gs
        return obj

    def to_scaled(self, x: np.ndarray) -> np.ndarray:
        """``y = x / s`` for a point ``x`` of the ``n`` variables (no rounding beyond the normal range)."""
        return np.ldexp(x, -self.exp[1:])


class _Rows:
    def __init__(self):
        self.r, self.c, self.v, self.row = [], [], [], []
        self.const, self.slack, self.kind = [], [], []
        self.m = 0

    def add(self, kind: str, n_rows: int, entries, const, slack) -> None:
        """``entries``: ``(local_row, r, c, value)`` arrays (``r <= c``); ``const`` and ``slack`` per row."""
        for lr, r, c, v in entries:
            lr, r, c, v = (np.broadcast_to(np.asarray(a), np.broadcast_shapes(
                np.shape(lr), np.shape(r), np.shape(c), np.shape(v))).ravel() for a in (lr, r, c, v))
            self.row.append(lr + self.m)
            self.r.append(r)
            self.c.append(c)
            self.v.append(v.astype(np.float64))
        self.const.append(np.broadcast_to(np.asarray(const, dtype=np.float64), (n_rows,)))
        self.slack.append(np.broadcast_to(np.asarray(slack, dtype=np.float64), (n_rows,)))
        self.kind += [kind] * n_rows
        self.m += n_rows


def _rounded(value: np.ndarray) -> np.ndarray:
    """Error bound of one correctly rounded (possibly underflowing) operation with result ``value``."""
    return 2 * U * np.abs(value) + TINY


def build(chain: Chain, l2: tuple[np.ndarray, float] | None = None) -> QCQP:
    """The constraints of ``chain`` (module docstring); ``l2 = (centre, eps)`` adds the L2 ball."""
    sizes = chain.sizes
    offsets = list(np.cumsum([1] + sizes[:-1]))
    n = int(sum(sizes))
    lo0, hi0 = chain.x_lower.numpy(), chain.x_upper.numpy()
    mags = [np.maximum(np.abs(lo0), np.abs(hi0))] + [np.maximum(h.upper.numpy(), 0.0) for h in chain.hidden]
    mag = np.concatenate([[1.0], *mags])
    rows = _Rows()
    zero = np.zeros(1, dtype=np.int64)

    # the input box: x^2 - (l + u) x + l u <= 0
    n0 = sizes[0]
    i0 = offsets[0] + np.arange(n0)
    s, p = lo0 + hi0, lo0 * hi0
    rows.add("input box", n0, [(np.arange(n0), i0, i0, 1.0), (np.arange(n0), zero, i0, -s)], p,
             upper(_rounded(s) * mags[0] + _rounded(p), 2))
    if l2 is not None:  # ||x - c||^2 <= eps^2: sum x^2 - 2 c x + (c.c - eps^2) <= 0
        c, eps = l2
        cc = float(np.sum(c * c))
        const = cc - eps * eps
        err = upper(gamma(n0 + 2, _t64()) * (cc + eps * eps) + (n0 + 2) * TINY, 2)
        rows.add("l2 ball", 1, [(0, i0, i0, 1.0), (0, zero, i0, -2.0 * c)], const, err)

    for k, layer in enumerate(chain.hidden, start=1):
        W, b, E = layer.W.numpy(), layer.b.numpy(), layer.E.numpy()
        lo, hi = layer.lower.numpy(), layer.upper.numpy()
        nk, nprev = W.shape
        j = offsets[k] + np.arange(nk)
        jl = np.arange(nk)
        prev = offsets[k - 1] + np.arange(nprev)
        m_j, m_prev = mags[k], mags[k - 1]
        rr, cc_ = np.nonzero(W)  # only stored nonzeros enter the pattern
        w = W[rr, cc_]
        bmE, bpE = b - E, b + E
        rows.add("relu x>=0", nk, [(jl, zero, j, -1.0)], 0.0, 0.0)
        rows.add("relu x>=a-E", nk, [(rr, zero, prev[cc_], w), (jl, zero, j, -1.0)], bmE, upper(_rounded(bmE), 1))
        rows.add("relu x(x-a)<=Ex", nk, [(jl, j, j, 1.0), (rr, prev[cc_], j[rr], -w), (jl, zero, j, -bpE)], 0.0,
                 upper(_rounded(bpE) * m_j, 1))
        rows.add("relu x(x-a)>=-Ex", nk, [(jl, j, j, -1.0), (rr, prev[cc_], j[rr], w), (jl, zero, j, bmE)], 0.0,
                 upper(_rounded(bmE) * m_j, 1))
        lx, ux = np.maximum(lo, 0.0), hi
        s, p = lx + ux, lx * ux
        rows.add("relu box", nk, [(jl, j, j, 1.0), (jl, zero, j, -s)], p, upper(_rounded(s) * m_j + _rounded(p), 2))
        act = lo >= 0
        if act.any():  # x = z <= a + E
            ia = np.nonzero(act)[0]
            loc = np.full(nk, -1)
            loc[ia] = np.arange(ia.size)
            sel = act[rr]
            rows.add("active x<=a+E", ia.size, [(loc[rr[sel]], zero, prev[cc_[sel]], -w[sel]),
                                                (np.arange(ia.size), zero, j[ia], 1.0)],
                     -bpE[ia], upper(_rounded(bpE[ia]), 1))
        if (~act).any():  # (u - l) x - u W x' - u (b + E - l) <= 0
            iu = np.nonzero(~act)[0]
            loc = np.full(nk, -1)
            loc[iu] = np.arange(iu.size)
            sel = ~act[rr]
            uw = hi[rr[sel]] * w[sel]
            width = hi[iu] - lo[iu]
            const = -(hi[iu] * (bpE[iu] - lo[iu]))
            uw_err = np.zeros(iu.size)
            np.add.at(uw_err, loc[rr[sel]], _rounded(uw) * m_prev[cc_[sel]])
            err = (_rounded(width) * m_j[iu] + uw_err
                   + gamma(4, _t64()) * hi[iu] * (np.abs(b[iu]) + E[iu] + np.abs(lo[iu])) + 4 * TINY)
            rows.add("triangle", iu.size, [(loc[rr[sel]], zero, prev[cc_[sel]], -uw),
                                           (np.arange(iu.size), zero, j[iu], width)], const, upper(err, nprev + 2))

    row = np.concatenate(rows.row)
    r, c, v = np.concatenate(rows.r), np.concatenate(rows.c), np.concatenate(rows.v)
    const, slack = np.concatenate(rows.const), np.concatenate(rows.slack)
    a00 = np.where(slack == 0, const, down(const - slack))  # the constant, lowered by its slack (docstring)
    row = np.concatenate([row, np.arange(rows.m)])
    r = np.concatenate([r, np.zeros(rows.m, dtype=np.int64)])
    c = np.concatenate([c, np.zeros(rows.m, dtype=np.int64)])
    v = np.concatenate([v, a00])
    keep = v != 0
    row, r, c, v = row[keep], r[keep], c[keep], v[keep]
    # pattern: (0, 0), the first row, the diagonal and the used cross positions
    base_r = np.concatenate([np.zeros(n + 1, dtype=np.int64), np.arange(1, n + 1)])
    base_c = np.concatenate([np.arange(n + 1), np.arange(1, n + 1)])
    keys_all = np.concatenate([base_r * (n + 1) + base_c, r * (n + 1) + c])
    uniq, inv = np.unique(keys_all, return_inverse=True)
    pos = inv[base_r.size:]
    pr, pc = uniq // (n + 1), uniq % (n + 1)
    A = sparse.csr_matrix((v, (row, pos)), shape=(rows.m, uniq.size))
    if A.nnz != v.size:
        raise AssertionError("a constraint states one position twice")
    A, mag, exp = _scale_variables(A, pr, pc, mag)
    A = _scale_rows(A, mag[pr] * mag[pc])
    first = inv[: n + 1]
    return QCQP(n, pr, pc, A, mag, offsets[-1] + np.arange(sizes[-1]), np.array(rows.kind), offsets, first, exp)


def _scale_variables(A: sparse.csr_matrix, pr: np.ndarray, pc: np.ndarray, mag: np.ndarray):
    """``x_r = 2^e_r y_r`` with ``2^e_r >= mag_r`` (module docstring): ``(A, mag of y, e)``."""
    e = np.where(mag > 0, np.frexp(np.where(mag > 0, mag, 1.0))[1], 0)
    e[0] = 0
    col_e = (e[pr] + e[pc])[A.indices]
    data = np.ldexp(A.data, col_e)
    y_mag = np.ldexp(mag, -e)
    exact = np.array_equal(np.ldexp(data, -col_e), A.data) and np.all(np.isfinite(data)) \
        and not np.any((data != 0) & (np.abs(data) < TINY)) and np.array_equal(np.ldexp(y_mag, e), mag)
    if not exact:
        return A, mag, np.zeros_like(e)
    A = A.copy()
    A.data = data
    return A, y_mag, e


def _scale_rows(A: sparse.csr_matrix, term_mag: np.ndarray) -> sparse.csr_matrix:
    """Each row times a power of two so that its largest ``|coefficient| * magnitude`` is about 1; rows where
    that would not be exact (a coefficient leaving the normal range) are left as they are."""
    A = A.tocsr(copy=True)
    size = np.abs(A.data) * term_mag[A.indices]
    row_of = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    top = np.zeros(A.shape[0])
    np.maximum.at(top, row_of, size)
    e = np.where(top > 0, -np.frexp(np.where(top > 0, top, 1.0))[1], 0)
    scaled = np.ldexp(A.data, e[row_of])
    exact = (np.ldexp(scaled, -e[row_of]) == A.data) & ((np.abs(scaled) >= TINY) | (A.data == 0))
    ok = np.ones(A.shape[0], dtype=bool)
    np.logical_and.at(ok, row_of, exact)
    A.data = np.where(ok[row_of], scaled, A.data)
    return A
