"""Multipliers of the SDP's dual by a barrier Newton method (a dual path-following method, as DSDP).

The dual of ``min <G, P>`` s.t. ``<A_i, P> <= 0``, ``P_00 = 1``, ``P >= 0`` (``certify.sdp.problem``) is

    max nu   s.t.   S(lambda, nu) = G + sum_i lambda_i A_i - nu e_0 e_0^T >= 0,   lambda >= 0.

For a barrier weight ``t > 0`` the centre ``(lambda, nu)`` minimises

    f_t = -nu / t - log det S - sum_i log lambda_i,

reached by damped Newton steps that keep ``S`` positive definite (a Cholesky factorisation) and
``lambda > 0``; ``t`` then shrinks. On the central path the duality gap is at most ``(n + 1 + m) t``.
Measured (benchmarks/RESULTS.md): the first-order methods (Burer-Monteiro's augmented Lagrangian with an
L-BFGS-B polish of the dual, a smoothed eigenvalue ascent) stalled 3e-3..1e-2 relative from Clarabel's
bound on these programs; this reaches it to 1e-5 or better.

Newton's matrix is ``K + diag(1 / lambda^2, 0)`` with ``K_kl = tr(S^-1 A_k S^-1 A_l)``. Every row of the
program touches one variable ``j`` and its neighbours (``x_j`` with its layer's inputs, or the first row
only), so ``A_k = sym(e_j v_k^T) + kappa_k e_0 e_0^T`` with a sparse ``v_k``; with ``Sigma = S^-1``,

    tr(Sigma sym(u v^T) Sigma sym(u' v'^T)) = ((u^T Sigma u')(v^T Sigma v') + (u^T Sigma v')(v^T Sigma u')) / 2,

so ``K`` costs ``Sigma V`` and ``V^T Sigma V`` (``V`` sparse), not ``m`` dense products. Rows without
that form (the L2 ball's ``sum x_i^2``) are handled densely. The multipliers are only candidates: the
reported bound is ``certificate.certify`` of them, in outward-rounded float64.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg
from scipy import sparse

from .certificate import pattern_matrix
from .problem import QCQP


class DualNewton:
    """The row structure of one ``QCQP`` (computed once); ``solve(obj)`` per objective."""

    def __init__(self, problem: QCQP):
        self.problem = problem
        n1 = problem.n + 1
        A = problem.A.tocsr()
        self.A = A
        m = A.shape[0]
        rows = np.repeat(np.arange(m), np.diff(A.indptr))
        r, c, a = problem.pr[A.indices], problem.pc[A.indices], A.data
        is00 = (r == 0) & (c == 0)
        # j per row: 0 for rows on the first row only, else the largest column index among its entries
        first_only = np.ones(m, dtype=bool)
        np.logical_and.at(first_only, rows, r == 0)
        j = np.zeros(m, dtype=np.int64)
        np.maximum.at(j, rows, c)
        j[first_only] = 0
        jr = j[rows]
        single = np.ones(m, dtype=bool)
        # an entry fits sym(e_j v^T) if it lies in row or column j or is (0, 0)
        np.logical_and.at(single, rows, (c == jr) | (r == jr) | is00)
        # v_k: entry (r, c) with j among (r, c) -> v_other += a; (0, 0) -> kappa, or v_0 if j == 0
        other = np.where(c == jr, r, c)
        in_v = ~is00 | first_only[rows]
        kappa = np.zeros(m)
        np.add.at(kappa, rows[is00 & ~first_only[rows]], a[is00 & ~first_only[rows]])
        sel = in_v & single[rows]
        self.V = sparse.csc_matrix((a[sel], (other[sel], rows[sel])), shape=(n1, m))
        self.j = j
        self.kappa = kappa
        self.special = np.nonzero(~single)[0]
        self.kappa[self.special] = 0.0
        self.box = np.isin(problem.kind, ["input box", "relu box"])
        self.n1, self.m = n1, m
        inputs = np.arange(problem.offsets[0], problem.offsets[1] if len(problem.offsets) > 1 else n1)
        is_in = np.zeros(n1, dtype=bool)
        is_in[inputs] = True
        if np.any(is_in[problem.pr] & is_in[problem.pc] & (problem.pr != problem.pc)):
            inputs = inputs[:0]  # not diagonal: no elimination
            is_in[:] = False
        self.d_idx, self.c_idx = inputs, np.nonzero(~is_in)[0]
        self.trace: list | None = None  # (iteration, t, decrement, step, nu) per step when a list

    def matrix(self, lam: np.ndarray, nu: float, obj: np.ndarray) -> np.ndarray:
        """``S(lambda, nu)``."""
        S = pattern_matrix(self.problem, obj + self.A.T @ lam)
        S[0, 0] -= nu
        return S

    def _start(self, lam0: np.ndarray | None, obj: np.ndarray) -> tuple[np.ndarray, float]:
        m = self.m
        lam = np.full(m, 1e-3) if lam0 is None else np.maximum(np.nan_to_num(lam0), 0.0) + 1e-3
        add = 0.0
        for _ in range(60):
            S = self.matrix(lam + add * self.box, 0.0, obj)
            try:
                L = scipy.linalg.cholesky(S[1:, 1:], lower=True)
                y = scipy.linalg.solve_triangular(L, S[1:, 0], lower=True)
                lam = lam + add * self.box
                h = float(y @ y)
                return lam, float(S[0, 0] - h)
            except (np.linalg.LinAlgError, ValueError):
                add = max(2 * add, 1e-2)
        raise ArithmeticError("no positive definite starting point")

    def _f(self, lam, nu, t, obj, reg=0.0):
        """``f_t`` and a factorisation of ``S`` (``inf, None`` outside the domain).

        The input variables' block of ``S`` is diagonal (their rows are the box and the L2 ball: ``x_i^2``
        and ``x_i`` terms only), so ``S > 0`` iff that diagonal ``D > 0`` and the Schur complement
        ``T = S_cc - S_cd D^-1 S_dc`` of the rest is; ``log det S = sum log D + log det T``. With 784 inputs
        and 32 neurons this is a 33 x 33 factorisation instead of an 817 x 817 one."""
        S = self.matrix(lam, nu, obj)
        d, c = self.d_idx, self.c_idx
        D = S[d, d]
        if D.size and not (D > 0).all():
            return math.inf, None
        Scd = S[np.ix_(c, d)]
        W = Scd / D if D.size else Scd
        T = S[np.ix_(c, c)] - W @ Scd.T
        try:
            L = scipy.linalg.cholesky(T, lower=True)
        except (np.linalg.LinAlgError, ValueError):
            return math.inf, None
        logdet = 2 * float(np.log(np.diag(L)).sum()) + float(np.log(D).sum())
        return -nu / t + reg * float(lam.sum()) - logdet - float(np.log(lam).sum()), (D, W, L)

    def _sigma(self, F) -> np.ndarray:
        """``S^-1`` from ``_f``'s factorisation (block inverse through the Schur complement)."""
        D, W, L = F
        d, c = self.d_idx, self.c_idx
        Linv = scipy.linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True)
        Tinv = Linv.T @ Linv
        Sig = np.empty((self.n1, self.n1))
        Sig[np.ix_(c, c)] = Tinv
        if D.size:
            X = -(W.T @ Tinv)  # Sigma_dc = -D^-1 S_dc T^-1
            Sig[np.ix_(d, c)] = X
            Sig[np.ix_(c, d)] = X.T
            Sdd = -(X @ W)  # D^-1 S_dc T^-1 S_cd D^-1
            Sdd[np.diag_indices_from(Sdd)] += 1.0 / D
            Sig[np.ix_(d, d)] = Sdd
        return Sig

    def _newton(self, lam, nu, F, t, obj, reg):
        """Newton's matrix and the gradient of ``f_t`` (module docstring)."""
        p = self.problem
        n1 = self.n1
        Sig = self._sigma(F)
        # gradient of f_t: -e_nu / t - tr(Sigma A_k) - 1/lambda ; for nu: A = -E00
        tr = self.A @ Sig[p.pr, p.pc]
        g = np.concatenate([-tr - 1.0 / lam + reg, [-1.0 / t + Sig[0, 0]]])
        SV = np.asarray(self.V.T @ Sig).T if self.V.nnz else np.zeros((n1, self.m))  # Sigma V, n1 x m
        VSV = np.asarray(self.V.T @ SV)
        j = self.j
        Suv = SV[j, :]  # u_k^T Sigma v_l
        K = 0.5 * (Sig[np.ix_(j, j)] * VSV + Suv * Suv.T)
        # kappa_k E00 terms: tr(Sigma sym(e_j v^T) Sigma E00) = Sigma_0j (Sigma v)_0
        a = Sig[0, j] * SV[0, :]
        kap = self.kappa
        K += np.outer(a, kap) + np.outer(kap, a) + np.outer(kap, kap) * Sig[0, 0] ** 2
        H = np.zeros((self.m + 1, self.m + 1))
        H[: self.m, : self.m] = K
        # nu's matrix -E00: tr(Sigma A_k Sigma (-E00)) = -(Sigma A_k Sigma)_00
        H[: self.m, self.m] = -(a + kap * Sig[0, 0] ** 2)
        for k in self.special:
            X = Sig @ self._dense_row(k) @ Sig
            col = self.A @ X[p.pr, p.pc]
            H[: self.m, k] = col
            H[k, : self.m] = col
            H[k, self.m] = -X[0, 0]
        H[self.m, : self.m] = H[: self.m, self.m]
        H[self.m, self.m] = Sig[0, 0] ** 2
        H[np.arange(self.m), np.arange(self.m)] += 1.0 / lam**2
        return H, g

    def _dense_row(self, k: int) -> np.ndarray:
        return pattern_matrix(self.problem, self.A.getrow(k).toarray()[0])

    def solve(self, obj: np.ndarray, lam0: np.ndarray | None = None, seconds: float = math.inf,
              tol: float = 1e-8, max_iter: int = 300, shrink: float = 0.2, upper: float | None = None,
              reg: float = 10.0) -> tuple[np.ndarray, dict]:
        """Multipliers (``m`` values) near the dual optimum; stats: iterations, final ``t``, ``nu``, time.

        Long-step path following. ``f_t`` is self-concordant (log det, log, linear), so the damped Newton
        step ``1 / (1 + delta)`` (``delta``: the Newton decrement) stays feasible and decreases ``f_t``; a
        longer step is taken when it decreases ``f_t`` by a tenth of the model's prediction. Once centred
        (``delta < 1/4``, or the decrement stalls at the rounding floor), ``t <- shrink t``: Newton's matrix does
        not depend on ``t`` and the gradient is ``a / t + b`` (``a = -e_nu``), so this reuses the factorisation.
        ``upper``: an estimate of the optimum from above (a primal value); the first ``t`` is the gap to the
        start's ``nu`` (at least 1e-2 and at most 1 times ``max(1, |upper|)``) over ``n + 1 + m``, and ``nu``
        starts where ``S``'s Schur complement equals ``t``.
        ``reg``: the barrier of each multiplier is ``reg lambda - log lambda`` (bounded below): rows that come
        in nearly opposite pairs (``x >= a - E``, ``x <= a + E``) would otherwise let both multipliers grow
        without end; its weight in the dual objective, ``t reg sum(lambda)``, vanishes with ``t``. Measured
        (digits 2x16, MNIST 2x16): 10 against 1e-3 took 163 / 1,217 Newton steps instead of 205 / 1,486
        and ended 6e-6 higher (huge multipliers cost digits).
        After a full step, 2, 4, 8 and 16 times it are tried while ``f_t`` keeps decreasing (the barrier of
        a multiplier that must shrink or grow by a large factor is flatter than its quadratic model).
        Stops when centred with ``(n + 1 + m) t <= tol max(1, |nu|)`` (the central path's duality gap)
        or at ``seconds`` / ``max_iter``; the multipliers are feasible (``S > 0``) at every iterate."""
        t0 = time.perf_counter()
        lam, nu_max = self._start(lam0, obj)
        size = self.n1 + self.m
        scale = max(1.0, abs(upper)) if upper is not None else max(1.0, abs(nu_max))
        # a primal value from an unconverged solver can even lie below the dual one: never trust a small gap
        gap = min(scale, max(upper - nu_max, 1e-2 * scale)) if upper is not None else scale
        s = size / gap  # 1 / t
        nu = nu_max - 1.0 / s  # the Schur complement S_00 - h = t: central in nu (P_00 = t Sigma_00 = 1)
        e = np.zeros(self.m + 1)  # the objective's gradient: -nu
        e[-1] = -1.0
        L = self._f(lam, nu, 1.0, obj)[1]
        it = 0
        prev_dec = math.inf
        while it < max_iter and time.perf_counter() - t0 < seconds:
            it += 1
            H, g = self._newton(lam, nu, L, 1.0, obj, reg)
            b = g - e  # g(t = 1) = a + b, a = e
            H[np.diag_indices_from(H)] += 1e-14 * max(1.0, float(np.abs(np.diag(H)).max()))
            try:
                c = scipy.linalg.cho_factor(H)
                da, db = scipy.linalg.cho_solve(c, e), scipy.linalg.cho_solve(c, b)
            except (np.linalg.LinAlgError, ValueError):
                da, db = np.linalg.lstsq(H, np.stack([e, b], 1), rcond=None)[0].T
            A2, AB, B2 = float(e @ da), float(e @ db), float(b @ db)
            dec = max(s * s * A2 + 2 * s * AB + B2, 0.0)
            done = False
            stalled = dec >= 0.9 * prev_dec and dec < 1.0  # rounding floor of the centring
            prev_dec = dec
            while dec < 0.06 or stalled:  # centred (delta < 1/4): shrink t, same factorisation
                stalled = False
                if size / s <= tol * max(1.0, abs(nu)):
                    done = True
                    break
                s /= shrink
                dec = max(s * s * A2 + 2 * s * AB + B2, 0.0)
            if done:
                break
            d = -(s * da + db)
            delta = math.sqrt(dec)
            neg = d[:-1] < 0
            alpha = min(1.0, 0.95 * float(np.min(-lam[neg] / d[:-1][neg]))) if neg.any() else 1.0
            t = 1.0 / s
            f = self._f(lam, nu, t, obj, reg)[0]
            damped = 1.0 / (1.0 + delta)
            L2 = None  # the factorisation at the accepted step, when the search evaluated it
            while alpha > damped:  # a longer step than the guaranteed one, if it decreases f_t enough
                f2, F2 = self._f(lam + alpha * d[:-1], nu + alpha * d[-1], t, obj, reg)
                if F2 is not None and f2 <= f - 0.1 * alpha * dec:
                    L2 = F2
                    break
                alpha *= 0.5
            if L2 is None:
                alpha = min(damped, 1.0)
            elif alpha == 1.0:  # full step taken: try longer ones along the same direction
                cap = 0.95 * float(np.min(-lam[neg] / d[:-1][neg])) if neg.any() else math.inf
                best_f = f2
                for a in (2.0, 4.0, 8.0, 16.0):
                    if a > cap:
                        break
                    fa, Fa = self._f(lam + a * d[:-1], nu + a * d[-1], t, obj, reg)
                    if not fa < best_f:
                        break
                    alpha, best_f, L2 = a, fa, Fa
            lam2, nu2 = lam + alpha * d[:-1], nu + alpha * d[-1]
            for _ in range(60 if L2 is None else 0):
                L2 = self._f(lam2, nu2, 1.0, obj)[1] if (lam2 > 0).all() else None
                if L2 is not None:
                    break
                alpha *= 0.5  # only rounding can make the damped step infeasible
                lam2, nu2 = lam + alpha * d[:-1], nu + alpha * d[-1]
            if L2 is None:
                break
            lam, nu, L = lam2, nu2, L2
            if self.trace is not None:
                self.trace.append((it, 1.0 / s, dec, alpha, nu))
        return lam, {"iterations": it, "t": 1.0 / s, "nu": nu, "time": time.perf_counter() - t0}
