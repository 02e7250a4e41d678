"""Multipliers from the full SDP, solved by cvxpy (Clarabel by default, or SCS).

``min <G, P>`` subject to ``<A_i, P> <= 0`` (the rows of ``certify.sdp.problem``), ``P_00 = 1``,
``P >= 0`` (positive semidefinite). The program is compiled once per network and input set, with the
objective a parameter, and solved once per specification row. Only the inequality rows' dual values
are used, by ``certify.sdp.certificate``, which checks them; the solver's accuracy affects the
tightness of the reported bound, never its soundness.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .problem import QCQP

#: Solvers tried, in order (measured in benchmarks/RESULTS.md: Clarabel was faster and more accurate here).
SOLVERS = ("CLARABEL", "SCS")


class CvxSDP:
    """The compiled program of one ``QCQP``; ``solve(obj)`` returns the multipliers (or None) and a status."""

    def __init__(self, problem: QCQP, solver: str = "CLARABEL"):
        import cvxpy as cp

        self.problem = problem
        self.solver = solver
        n1 = problem.n + 1
        self.P = cp.Variable((n1, n1), PSD=True)
        p = self.P[problem.pr, problem.pc]
        self.obj = cp.Parameter(problem.pr.size)
        self.rows = problem.A @ p <= 0
        self.prog = cp.Problem(cp.Minimize(self.obj @ p), [self.rows, self.P[0, 0] == 1])

    def solve(self, obj: np.ndarray, time_limit: float = math.inf) -> tuple[np.ndarray | None, str]:
        import cvxpy as cp

        self.obj.value = obj
        opts: dict = {}
        if math.isfinite(time_limit):
            opts = {"time_limit": max(float(time_limit), 0.1)} if self.solver == "CLARABEL" else \
                {"time_limit_secs": max(float(time_limit), 0.1)}
        if self.solver == "CLARABEL":  # tighter than its defaults (1e-8): the certificate pays for every digit
            opts.update(tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, tol_ktratio=1e-9, max_iter=400)
        if self.solver == "SCS":
            opts.update(eps_abs=1e-7, eps_rel=1e-7, max_iters=200000)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.prog.solve(solver=self.solver, **opts)
        except (cp.error.SolverError, ValueError, ArithmeticError) as exc:
            return None, f"{self.solver}: {exc}"
        lam = self.rows.dual_value
        if lam is None:
            return None, f"{self.solver}: {self.prog.status}"
        return np.asarray(lam, dtype=np.float64).reshape(-1), str(self.prog.status)
