"""Multipliers from the low-rank (Burer-Monteiro) restriction of the SDP, in torch.

``P = V V^T`` with ``V`` of ``r`` columns (Burer and Monteiro 2003; for this relaxation Chiu and Zhang,
ICML 2023): the rows ``<A_i, V V^T> <= 0`` and ``|v_0|^2 = 1`` are handled by an augmented Lagrangian
(Rockafellar's for inequalities),

    L_rho(V) = <G, V V^T> + (rho / 2) sum_i max(0, g_i(V) + lambda_i / rho)^2 + mu h(V) + (rho / 2) h(V)^2,

minimised over ``V`` by L-BFGS, then ``lambda <- max(0, lambda + rho g)``, ``mu <- mu + rho h``, and ``rho``
grows when the violation does not shrink. Only the pattern entries ``P_rc = <v_r, v_c>`` are formed
(the first row, the diagonal and the neighbouring layers' products): the cost per step is
``O(r (n + sum of layer weights))``. Variables are scaled by their box magnitude (``V = diag(mag) Y``).

Global optimality (the paper's check): with the multipliers, form the dual slack ``S = G + sum_i lambda_i
A_i - mu' e_0 e_0^T`` (``mu'`` its Schur complement, ``certify.sdp.certificate``). If ``S >= 0`` the low-rank
point is optimal for the full SDP; otherwise the eigenvector ``q`` of its most negative eigenvalue is a
descent direction of rank one, ``V <- [V, eps q]``, and the rank grows. Either way the reported bound is
``certificate.certify`` of the multipliers: nothing here is trusted.

Precision. The augmented Lagrangian's multipliers are first-order: they stalled 3e-3..1e-2 relative
from the full SDP's bound on PGD-trained MLPs, with or without the dual polish. So by default a few rounds
give a warm start (multipliers, and the primal value as the scale of the gap) and the primal-dual interior
point method of ``certify.sdp.interior_point`` finishes; the best certificate of either is returned.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

from .certificate import Certificate, certify, dual_matrix, schur_h
from .problem import QCQP


@dataclass(frozen=True)
class BMOptions:
    """``rank``: initial number of columns of ``V``; ``max_rank``: the escape stops there; ``outer``/``inner``:
    augmented-Lagrangian rounds and L-BFGS iterations per round; ``tol``: relative gap between the primal
    value and the certified bound at which to stop; ``check_every``: rounds between certificates;
    ``polish``: L-BFGS-B iterations on the dual function at each check (0: none); ``finish``: after the
    rounds, refine the multipliers by the primal-dual interior point method (``certify.sdp.interior_point``),
    warm started at the low-rank point's multipliers and primal value, on the time left (``finish_iter``
    iterations at most). Measured: a few rounds of the low-rank method then the interior point method beat
    thirty rounds with the polish in both time and bound (benchmarks/RESULTS.md); two rounds against five:
    the same bound to 1e-8, MNIST 2x16 rows 14 s instead of 17, digits 2x32 rows 1.3 s instead of 2.6."""

    rank: int = 12
    max_rank: int = 40
    outer: int = 2
    inner: int = 300
    rho: float = 10.0
    rho_max: float = 1e4
    tol: float = 1e-4
    check_every: int = 5
    polish: int = 0
    finish: bool = True
    finish_iter: int = 100


@dataclass
class BMResult:
    lam: np.ndarray
    certificate: Certificate | None
    primal: float
    rank: int
    rounds: int
    escapes: int
    stats: dict = field(default_factory=dict)


class BMSDP:
    """The low-rank solver of one ``QCQP`` (compiled once; ``solve(obj)`` per objective)."""

    def __init__(self, problem: QCQP, device: str | torch.device = "cpu"):
        self.problem = problem
        self.device = torch.device(device)
        dt = torch.float64
        A = problem.A.tocsr()
        with warnings.catch_warnings():  # torch: sparse CSR is "beta"
            warnings.simplefilter("ignore")
            self.A = torch.sparse_csr_tensor(torch.as_tensor(A.indptr, dtype=torch.int64),
                                             torch.as_tensor(A.indices, dtype=torch.int64),
                                             torch.as_tensor(A.data, dtype=dt), size=A.shape, device=self.device)
        self.pr = torch.as_tensor(problem.pr, device=self.device)
        self.pc = torch.as_tensor(problem.pc, device=self.device)
        self.mag = torch.as_tensor(np.where(problem.mag > 0, problem.mag, 1.0), dtype=dt, device=self.device)
        self._ip = None

    def _p(self, Y: torch.Tensor) -> torch.Tensor:
        V = Y * self.mag[:, None]
        return (V[self.pr] * V[self.pc]).sum(1)

    def solve(self, obj: np.ndarray, options: BMOptions = BMOptions(), seconds: float = math.inf,
              start: np.ndarray | None = None, lam0: np.ndarray | None = None) -> BMResult:
        """Multipliers for ``min obj . p``; ``start``: a point ``x`` (``n`` values) to start from (e.g. a forward
        pass at the input's centre); ``lam0``: warm-start multipliers."""
        t0 = time.perf_counter()
        dev, dt = self.device, torch.float64
        prob = self.problem
        n1 = prob.n + 1
        c = torch.as_tensor(obj, dtype=dt, device=dev)
        gen = torch.Generator(device="cpu").manual_seed(0)
        Y = 0.1 * torch.randn(n1, options.rank, generator=gen, dtype=dt).to(dev) / math.sqrt(options.rank)
        Y[0] = 0.0
        Y[0, 0] = 1.0
        if start is not None:
            Y[1:, 0] = torch.as_tensor(start, dtype=dt, device=dev) / self.mag[1:]
        lam = torch.zeros(prob.m, dtype=dt, device=dev) if lam0 is None else torch.as_tensor(lam0, dtype=dt, device=dev)
        mu = torch.zeros((), dtype=dt, device=dev)
        rho = options.rho
        best: Certificate | None = None
        best_lam = lam.cpu().numpy()
        viol_prev = math.inf
        escapes = 0
        primal = math.nan
        rounds = 0
        for rounds in range(1, options.outer + 1):
            Y = Y.detach().requires_grad_(True)
            opt = torch.optim.LBFGS([Y], lr=1.0, max_iter=options.inner, history_size=30,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-11, tolerance_change=1e-14)

            def closure():
                opt.zero_grad()
                p = self._p(Y)
                g = torch.mv(self.A, p)
                h = p[0] - 1.0
                loss = c @ p + 0.5 / rho * (torch.clamp(lam + rho * g, min=0) ** 2).sum() + mu * h + 0.5 * rho * h * h
                loss.backward()
                return loss

            opt.step(closure)
            with torch.no_grad():
                p = self._p(Y)
                g = torch.mv(self.A, p)
                h = p[0] - 1.0
                lam = torch.clamp(lam + rho * g, min=0)
                mu = mu + rho * h
                viol = max(float(g.clamp(min=0).max()) if g.numel() else 0.0, abs(float(h)))
                primal = float(c @ p / p[0])
            if viol > 0.5 * viol_prev:
                rho = min(rho * 2, options.rho_max)
            viol_prev = viol
            last = rounds == options.outer or time.perf_counter() - t0 > seconds
            if rounds % options.check_every == 0 or last:
                lam_np = lam.cpu().numpy()
                if options.polish:
                    lam_np = polish_dual(prob, lam_np, obj, options.polish, max(1.0, seconds - (time.perf_counter() - t0)))
                cert = certify(prob, lam_np, obj)
                if best is None or cert.bound > best.bound:
                    best, best_lam = cert, lam_np
                gap = primal - best.bound
                if (gap <= options.tol * (1 + abs(primal)) and viol < 1e-5) or last:
                    break
                if cert.lambda_min < -1e-6 and Y.shape[1] < min(options.max_rank, n1):
                    q = _escape_direction(prob, lam_np, obj)
                    if q is not None:  # a rank-one descent direction: V <- [V, eps q]
                        col = torch.as_tensor(q, dtype=dt, device=dev) / self.mag
                        Y = torch.cat([Y.detach(), 1e-3 * col[:, None] / max(float(col.abs().max()), 1e-30)], 1)
                        escapes += 1
        stats: dict = {}
        if options.finish:
            try:
                lam_n, stats = self._interior_point().solve(obj, best_lam, max_iter=options.finish_iter,
                                                            seconds=max(0.0, seconds - (time.perf_counter() - t0)),
                                                            upper=primal if math.isfinite(primal) else None)
            except ArithmeticError as exc:  # no positive definite start: the low-rank certificate stands
                stats = {"error": str(exc)}
            else:
                cert = certify(prob, lam_n, obj)
                if best is None or cert.bound > best.bound:
                    best, best_lam = cert, lam_n
        return BMResult(best_lam, best, primal, Y.shape[1], rounds, escapes,
                        {"time": time.perf_counter() - t0, "rho": rho, "finish": stats})

    def _interior_point(self):
        """The interior point solver of this problem (its row structure computed once, on first use)."""
        if self._ip is None:
            from .interior_point import InteriorPoint

            self._ip = InteriorPoint(self.problem)
        return self._ip


def _escape_direction(problem: QCQP, lam: np.ndarray, obj: np.ndarray) -> np.ndarray | None:
    """The eigenvector of the most negative eigenvalue of the dual slack matrix (Schur-complement ``h`` at 0)."""
    M, _ = dual_matrix(problem, np.maximum(lam, 0.0), obj)
    h, _ = schur_h(M)
    M[0, 0] = h
    try:
        w, Q = scipy.linalg.eigh(M, subset_by_index=[0, 0])
    except (np.linalg.LinAlgError, ValueError):
        return None
    return Q[:, 0] if w[0] < 0 else None


def polish_dual(problem: QCQP, lam0: np.ndarray, obj: np.ndarray, iters: int = 200,
                seconds: float = math.inf) -> np.ndarray:
    """Multipliers improved by maximising the concave dual function the certificate evaluates,

        phi(lambda, tau) = M_00 - m^T (R + tau I)^{-1} m - tau (T - 1),   lambda >= 0, tau >= 0,

    (``M = G + sum_i lambda_i A_i`` with first row ``m`` and lower block ``R``; ``-tau ||y||^2 >= -tau (T - 1)``),
    by L-BFGS-B from ``lam0``. Concave since ``m^T X^{-1} m`` is jointly convex in ``(m, X)``, ``X > 0``.
    The result is only a candidate: ``certificate.certify`` checks it."""
    import scipy.optimize

    t0 = time.perf_counter()
    dt = torch.float64
    n1 = problem.n + 1
    A = problem.A.tocsc()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AT = torch.sparse_csr_tensor(torch.as_tensor(A.indptr, dtype=torch.int64),
                                     torch.as_tensor(A.indices, dtype=torch.int64),
                                     torch.as_tensor(A.data, dtype=dt), size=(A.shape[1], A.shape[0]))
    pr, pc = torch.as_tensor(problem.pr), torch.as_tensor(problem.pc)
    off = pr != pc
    c = torch.as_tensor(obj, dtype=dt)
    T1 = problem.trace_bound() - 1.0
    eye = torch.eye(n1 - 1, dtype=dt)
    M0 = dual_matrix(problem, np.maximum(lam0, 0), obj)[0]
    w = scipy.linalg.eigvalsh(M0[1:, 1:]) if n1 > 1 else np.zeros(1)
    tau0 = max(0.0, -float(w[0])) * 1.5 + 1e-10
    scale = max(1.0, float(np.abs(M0).max()))

    lam0 = np.maximum(lam0, 0)
    sig = torch.ones(lam0.size + 1, dtype=dt)

    def fg(z: np.ndarray):
        zt = torch.tensor(z, dtype=dt, requires_grad=True)
        v = zt * sig
        lam, tau = v[:-1], v[-1]
        vals = c + torch.mv(AT, lam)
        half = torch.where(off, vals / 2, vals)
        M = torch.zeros(n1, n1, dtype=dt).index_put((pr, pc), half)
        M = M + torch.triu(M, 1).T
        R = M[1:, 1:] + tau * eye
        L, info = torch.linalg.cholesky_ex(R)
        if int(info) != 0:
            return 1e6 * scale, np.zeros_like(z)
        y = torch.linalg.solve_triangular(L, M[1:, :1], upper=False)
        phi = M[0, 0] - (y * y).sum() - tau * T1
        (-phi).backward()
        return float(-phi.detach()), zt.grad.numpy().astype(np.float64)

    z0 = np.concatenate([lam0, [tau0]]) / sig.numpy()
    bounds = [(0, None)] * z0.size
    best = z0
    try:
        res = scipy.optimize.minimize(fg, z0, jac=True, method="L-BFGS-B", bounds=bounds,
                                      options={"maxiter": iters, "maxfun": 2 * iters, "ftol": 1e-15, "gtol": 1e-12},
                                      callback=lambda zk: _stop(t0, seconds))
        best = res.x
    except _Timeout:
        pass
    return np.maximum(best[:-1] * sig.numpy()[:-1], 0)


class _Timeout(Exception):
    pass


def _stop(t0: float, seconds: float) -> None:
    if time.perf_counter() - t0 > seconds:
        raise _Timeout

