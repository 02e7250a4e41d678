"""Multipliers of the SDP's dual by a primal-dual interior point method (HKM direction, Mehrotra).

The program ``min <G, P>`` s.t. ``<A_i, P> <= 0``, ``P_00 = 1``, ``P >= 0`` (``certify.sdp.problem``) has the dual

    max nu   s.t.   S(lambda, nu) = G + sum_i lambda_i A_i - nu e_0 e_0^T >= 0,   lambda >= 0.

``InteriorPoint.solve`` follows both with the primal slacks ``w_i = -<A_i, P>``; the dual iterates stay
strictly feasible, so every one is a candidate certificate. Measured (benchmarks/RESULTS.md): the
first-order methods (Burer-Monteiro's augmented Lagrangian, with an L-BFGS-B polish of the dual) stalled
3e-3..1e-2 relative from Clarabel's bound; a dual barrier (path-following) Newton method reached it but
took 1,200-1,500 steps at 784 inputs, where this takes about 30 iterations.

The Schur complement matrix is ``H_kl = tr(A_k P A_l S^-1)`` plus ``diag(w / lambda)``. Every row of the
program touches one variable ``j`` and its neighbours (``x_j`` with its layer's inputs, or the first row
only), so ``A_k = sym(e_j v_k^T) + kappa_k e_0 e_0^T`` with a sparse ``v_k``, and ``H`` costs ``P V``,
``S^-1 V``, ``V^T P V`` and ``V^T S^-1 V`` (``V`` sparse), not ``m`` dense products (``scaling_matrix``).
Rows without that form (the L2 ball's ``sum x_i^2``) are handled densely. The input variables' block of
``S`` is diagonal, so ``S`` is factorised through the Schur complement of that block. The multipliers are
only candidates: the reported bound is ``certificate.certify`` of them, in outward-rounded float64.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg
from scipy import sparse

from .certificate import pattern_matrix, pattern_sparse
from .problem import QCQP


class InteriorPoint:
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
        self.trace: list | None = None  # (iteration, complementarity, residual, step, nu) when a list

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

    def _factor(self, lam: np.ndarray, nu: float, obj: np.ndarray):
        """``(S, (D, W, L))``: ``S(lambda, nu)`` and a factorisation of it, or ``None`` if it is not positive
        definite.

        The input variables' block of ``S`` is diagonal (their rows are the box and the L2 ball: ``x_i^2``
        and ``x_i`` terms only), so ``S > 0`` iff that diagonal ``D > 0`` and the Schur complement
        ``T = S_cc - S_cd D^-1 S_dc = L L^T`` of the rest is (``W = S_cd D^-1``). With 784 inputs and 32
        neurons this is a 33 x 33 factorisation instead of an 817 x 817 one."""
        S = self.matrix(lam, nu, obj)
        d, c = self.d_idx, self.c_idx
        D = S[d, d]
        if D.size and not (D > 0).all():
            return None
        Scd = S[np.ix_(c, d)]
        W = Scd / D if D.size else Scd
        T = S[np.ix_(c, c)] - W @ Scd.T
        try:
            L = scipy.linalg.cholesky(T, lower=True)
        except (np.linalg.LinAlgError, ValueError):
            return None
        return S, (D, W, L)

    def _sigma(self, F) -> np.ndarray:
        """``S^-1`` from ``_factor``'s factorisation (block inverse through the Schur complement)."""
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

    def scaling_matrix(self, P: np.ndarray, Sig: np.ndarray, lam: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The Schur complement matrix of the HKM direction over ``(lambda, nu)``:
        ``H_ab = tr(B_a P B_b Sigma)`` (``B_k = A_k``, ``B_nu = -e_0 e_0^T``) plus ``diag(w / lambda, 0)``.

        With ``A_k = sym(u_k v_k^T) + kappa_k e_0 e_0^T``, ``u_k = e_{j_k}`` (module docstring),

            tr(sym(u v^T) P sym(u' v'^T) Sigma) = ((v^T P u')(v'^T Sigma u) + (v^T P v')(u'^T Sigma u)
                                                  + (u^T P u')(v'^T Sigma v) + (u^T P v')(u'^T Sigma v)) / 4,

        so it costs ``P V``, ``Sigma V``, ``V^T P V`` and ``V^T Sigma V``. ``P = Sigma``, ``w = 1 / lambda``
        gives the Hessian of the dual barrier ``-log det S - sum log lambda``."""
        p = self.problem
        m, j = self.m, self.j
        if self.V.nnz:
            SV = np.asarray(self.V.T @ Sig).T  # n1 x m
            PV = SV if P is Sig else np.asarray(self.V.T @ P).T
        else:
            SV = PV = np.zeros((self.n1, m))
        VSV = np.asarray(self.V.T @ SV)
        VPV = VSV if P is Sig else np.asarray(self.V.T @ PV)
        PVj, SVj = PV[j, :], SV[j, :]  # u_k^T P v_l, u_k^T Sigma v_l
        K = PVj.T * SVj
        K += K.T
        K += VPV * Sig[np.ix_(j, j)] + P[np.ix_(j, j)] * VSV
        K *= 0.25
        # kappa e_0 e_0^T terms: tr(sym(e_j v^T) P e_0 e_0^T Sigma) = (P_0j (Sigma v)_0 + Sigma_0j (P v)_0) / 2
        a = 0.5 * (P[0, j] * SV[0, :] + Sig[0, j] * PV[0, :])
        kap = self.kappa
        c00 = P[0, 0] * Sig[0, 0]
        K += np.outer(a, kap) + np.outer(kap, a) + np.outer(kap, kap) * c00
        H = np.zeros((m + 1, m + 1))
        H[:m, :m] = K
        H[:m, m] = -(a + kap * c00)
        for k in self.special:
            X = P @ self._dense_row(k) @ Sig
            X = 0.5 * (X + X.T)
            col = self.A @ X[p.pr, p.pc]
            H[:m, k] = col
            H[k, :m] = col
            H[k, m] = -X[0, 0]
        H[m, :m] = H[:m, m]
        H[m, m] = c00
        H[np.arange(m), np.arange(m)] += w / lam
        return H

    def _dense_row(self, k: int) -> np.ndarray:
        return pattern_matrix(self.problem, self.A.getrow(k).toarray()[0])

    def _delta_s(self, d: np.ndarray) -> sparse.csr_matrix:
        """``dS = sum_k d_k A_k - d_nu e_0 e_0^T``, sparse."""
        X = pattern_sparse(self.problem, self.A.T @ d[:-1])
        return X - sparse.csr_matrix(([d[-1]], ([0], [0])), shape=X.shape)

    def solve(self, obj: np.ndarray, lam0: np.ndarray | None = None, seconds: float = math.inf,
              tol: float = 1e-7, max_iter: int = 100, upper: float | None = None) -> tuple[np.ndarray, dict]:
        """Multipliers (``m`` values) near the dual optimum; stats: iterations, ``nu``, time, complementarity.

        Infeasible primal-dual interior point method (HKM direction, Mehrotra's predictor-corrector) on
        the primal ``min <G, P>``, ``<A_i, P> + w_i = 0``, ``P_00 = 1``, ``P >= 0``, ``w >= 0`` and the dual
        above; the dual iterates stay feasible (``S = S(lambda, nu) > 0``, ``lambda > 0``, checked by a
        Cholesky factorisation at every step) and the best ``nu`` is kept. With ``dS = sum dlambda_k A_k -
        dnu e_0 e_0^T``, the HKM step solves ``dP S + P dS = mu I - P S (- dP_a dS_a)`` and
        ``lambda dw + w dlambda = mu - lambda w (- dlambda_a dw_a)`` linearised; eliminating ``dP`` and
        ``dw`` leaves ``H d = mu (tr(A Sigma) + 1 / lambda, -Sigma_00) + e_nu (- corrector)`` with
        ``H = scaling_matrix(P, Sigma, lambda, w)``, so one factorisation of ``H`` serves the predictor
        (``mu = 0``) and the corrector. ``mu = sigma (<P, S> + w^T lambda) / (n + 1 + m)`` with
        ``sigma = (predicted / current complementarity)^3`` (the predicted value from the predictor's longest
        steps). One step length for primal and dual, 0.98 of the largest keeping ``P``, ``w``, ``S`` and
        ``lambda`` positive (generalised eigenvalues): separate lengths took 26 iterations on average instead
        of 18 on 48 small MLP rows (and from the earlier start below six of them stalled far from the optimum).
        Start: the dual point ``lam0`` made strictly feasible, ``nu = nu_max - mu`` below the largest feasible
        ``nu_max``, ``(P, w) = mu (Sigma, 1 / lambda)`` (so ``P_00 = 1``) with ``mu = max(1, |upper|) / (n + 1 +
        m)``: ``upper`` (a primal value) sets the scale only; starting from the small gap to it left the
        complementarity too small against the primal residual, and steps short.
        Measured on MNIST 2x16 (784 inputs, 958 rows): 30 iterations, 9-12 s, against 1,217 steps and 51 s of
        the dual barrier (path-following) method this replaces, to the same bound within 5e-10; on 48 rows of
        small MLPs 18 iterations on average (at most 35), never more than 2e-8 below the best bound found.
        Stops at ``<P, S> + w^T lambda <= tol max(1, |nu|)`` with the primal residual below ``tol``, when
        the best ``nu`` has not improved for 8 iterations at a primal residual below 1e-4, when a
        factorisation fails, or at ``seconds`` / ``max_iter``."""
        t0 = time.perf_counter()
        p = self.problem
        lam, nu_max = self._start(lam0, obj)
        size = self.n1 + self.m
        scale = max(1.0, abs(upper)) if upper is not None else max(1.0, abs(nu_max))
        mu = scale / size
        nu = nu_max - mu  # the Schur complement S_00 - h = mu: P_00 = mu Sigma_00 = 1
        F = self._factor(lam, nu, obj)
        if F is None:
            raise ArithmeticError("no positive definite starting point")
        S, Sig = F[0], self._sigma(F[1])
        e = np.zeros(self.m + 1)
        e[-1] = 1.0
        P, w = mu * Sig, mu / lam
        best_nu, best_lam, stall = nu, lam, 0
        comp = res = math.inf
        it = 0
        while it < max_iter and time.perf_counter() - t0 < seconds:
            it += 1
            comp = float(np.sum(P * S) + w @ lam)
            res = max(float(np.abs(self.A @ P[p.pr, p.pc] + w).max(initial=0.0)), abs(float(P[0, 0]) - 1.0))
            if comp <= tol * max(1.0, abs(nu)) and res <= tol:
                break
            H = self.scaling_matrix(P, Sig, lam, w)
            H[np.diag_indices_from(H)] += 1e-14 * max(1.0, float(np.abs(np.diag(H)).max()))
            try:
                cf = scipy.linalg.cho_factor(H)
                solve = lambda r: scipy.linalg.cho_solve(cf, r)  # noqa: E731
            except (np.linalg.LinAlgError, ValueError):
                solve = lambda r: np.linalg.lstsq(H, r, rcond=None)[0]  # noqa: E731
            rc = np.concatenate([self.A @ Sig[p.pr, p.pc] + 1.0 / lam, [-Sig[0, 0]]])
            try:
                # predictor (mu = 0)
                da = solve(e)
                dSa = self._delta_s(da)
                dPa = -P - _sym((dSa @ P).T @ Sig)
                dwa = -w - (w / lam) * da[:-1]
                ap = min(1.0, _max_step(P, dPa), _ray(w, dwa))
                dSa_dense = dSa.toarray()
                ad = min(1.0, _max_step(S, dSa_dense), _ray(lam, da[:-1]))
                pred = float(np.sum((P + ap * dPa) * (S + ad * dSa_dense)) + (w + ap * dwa) @ (lam + ad * da[:-1]))
                mu = min(1.0, max(0.0, pred / comp)) ** 3 * comp / size
                # corrector: the second-order terms dP_a dS_a and dlambda_a dw_a
                Q = _sym((dSa @ dPa).T @ Sig)
                corr = da[:-1] * dwa
                d = solve(mu * rc + e - np.concatenate([self.A @ Q[p.pr, p.pc] + corr / lam, [-Q[0, 0]]]))
                dS = self._delta_s(d)
                dP = mu * Sig - P - _sym((dS @ P).T @ Sig) - Q
                dw = (mu - corr) / lam - w - (w / lam) * d[:-1]
                a = min(1.0, 0.98 * min(_max_step(P, dP), _ray(w, dw), _max_step(S, dS.toarray()), _ray(lam, d[:-1])))
            except (np.linalg.LinAlgError, ValueError):  # P or S lost definiteness to rounding
                break
            lam2, nu2, F2 = lam + a * d[:-1], nu + a * d[-1], None
            for _ in range(30):  # only rounding can make the step infeasible
                F2 = self._factor(lam2, nu2, obj) if (lam2 > 0).all() else None
                if F2 is not None:
                    break
                a *= 0.5
                lam2, nu2 = lam + a * d[:-1], nu + a * d[-1]
            if F2 is None:
                break
            P, w = P + a * dP, w + a * dw
            lam, nu, S, Sig = lam2, nu2, F2[0], self._sigma(F2[1])
            if self.trace is not None:
                self.trace.append((it, comp, res, a, nu))
            if nu > best_nu + 1e-12 * max(1.0, abs(nu)):
                best_nu, best_lam, stall = nu, lam, 0
            elif res <= 1e-4:  # nu may fall while the primal residual is reduced: not a stall
                stall += 1
                if stall >= 8:
                    break
        return best_lam, {"iterations": it, "nu": best_nu, "complementarity": comp, "residual": res,
                          "time": time.perf_counter() - t0}


def _sym(X: np.ndarray) -> np.ndarray:
    return 0.5 * (X + X.T)


def _max_step(B: np.ndarray, D: np.ndarray) -> float:
    """The largest ``a`` with ``B + a D >= 0`` for ``B > 0`` (``inf`` when ``D >= 0``): ``-1 / lambda_min(D, B)``,
    the smallest generalised eigenvalue. ``LinAlgError`` when ``B`` does not factorise."""
    ev = float(scipy.linalg.eigh(_sym(D), B, eigvals_only=True, subset_by_index=[0, 0])[0])
    return math.inf if ev >= 0 else -1.0 / ev


def _ray(x: np.ndarray, dx: np.ndarray) -> float:
    """The largest ``a`` with ``x + a dx >= 0`` for ``x > 0``."""
    neg = dx < 0
    return float(np.min(-x[neg] / dx[neg])) if neg.any() else math.inf
