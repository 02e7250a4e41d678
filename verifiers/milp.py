"""Exact backend: the network's piecewise-linear program (``certify.pwl``) as a mixed-integer linear
program, solved by HiGHS through ``scipy.optimize.milp``.

Encoding (Tjeng, Xiao and Tedrake 2019, big-M with the engine's sound bounds): the program's
variables and equalities; for every unstable ``y = max(z, a z)`` with ``l < 0 < u`` one binary
``delta`` (1: active) and

    y >= z,   y >= a z,   y <= z + (a - 1) l (1 - delta),   y <= a z + (1 - a) u delta,

which forces ``y = z, z >= 0`` at ``delta = 1`` and ``y = a z, z <= 0`` at ``delta = 0``; for every
``y = max_i z_i`` one binary per candidate, ``sum_i delta_i = 1``, ``y >= z_i`` and
``y <= z_i + (max_j u_j - l_i) (1 - delta_i)``. An L1 ball adds ``t_i >= |x_i - c_i|``,
``sum t_i <= eps``; an L-inf ball or a box is the input variables' bounds. L2 balls need a quadratic
constraint: use ``smt``.

The rounding bounds of ``certify.pwl`` are inequality rows. A clause ``C y <= d`` is decided by minimising ``t`` subject to ``C_j y - d_j <= t`` for its rows (the
clause's worst-case margin), with ``t <= tol`` where only feasibility matters. HiGHS works to
tolerances (feasibility and integrality ``1e-9``), so its answers are exact only up to them: a clause
counts as unreachable only when HiGHS finds the enlarged clause infeasible with the margin
``tol = tolerance * (1 + max |bound|)`` added on top of ``certify.pwl``'s margin
(``tolerance = 1e-6`` by default), or by the derived margin below if that is larger. Every *falsified*
answer is replayed, so a solver inaccuracy there is caught, not reported.

Why a margin, and how large (the derivation). HiGHS's *primal* and *integrality* tolerances only enlarge the
set it searches (a row or a binary off by ``1e-9`` admits more points), so they can make it report a point
that does not exist, never hide one: they err on the safe side for an UNSAT answer. What can hide a point is
a pruning or infeasibility decision taken on an LP bound whose dual solution is only feasible to the dual
tolerance ``eps``: by weak duality with bounded variables, such a bound exceeds the true LP bound by at most
``eps * sum_j (hi_j - lo_j)``. Every variable therefore gets a finite range (L1 slacks up to the input's
reach, ``t`` from below by its interval bound) and the clause is enlarged by ``DUAL_SLACK * sum of ranges``
with ``DUAL_SLACK = 10 eps``; the factor 10 is for HiGHS's internal row/column scaling, which this argument
does not bound (an assumption, not a proof). Coefficients HiGHS would drop are never given to it
(``certify.pwl.SMALL_COEF``). Tested at the edge: properties whose exact margin is ``+-1e-4``
(``tests/test_bab_exact.py``) are decided correctly on both sides.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from certify.exact import SAT, UNKNOWN, UNSAT, Check, ExactOptions, ExactVerifier
from certify.pwl import Program
from certify.results import TIMEOUT
from certify.sets import LpBall
from certify.spec import Spec

#: Ten times HiGHS's dual feasibility tolerance (1e-9): the factor covers its internal scaling by powers of
#: two only as an assumption (see the module docstring).
DUAL_SLACK = 1e-8

#: Magnitudes HiGHS does not take at face value (bounds >= 1e20 are infinite to it; coefficients >= 1e15 are
#: refused); with margin to spare.
HIGHS_LARGE = 1e15

#: HiGHS options for exact answers (scipy forwards the tolerances verbatim, with a warning we silence).
EXACT = {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0, "primal_feasibility_tolerance": 1e-9,
         "dual_feasibility_tolerance": 1e-9, "mip_feasibility_tolerance": 1e-9}


@dataclass(frozen=True)
class MILPOptions(ExactOptions):
    """``tolerance``: relative allowance for HiGHS's tolerances (see the module docstring)."""

    tolerance: float = 1e-6


class _Rows:
    def __init__(self, n: int):
        self.n, self.r, self.c, self.v, self.lo, self.hi = n, [], [], [], [], []
        self.m = 0

    def add(self, cols: list[np.ndarray], vals: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> None:
        """Rows ``lo <= sum_k vals[k] * v[cols[k]] <= hi``, one per entry of ``lo`` (vectorised over rows)."""
        k = lo.size
        rows = np.arange(self.m, self.m + k)
        for col, val in zip(cols, vals):
            col, val = np.broadcast_to(col, (k,)), np.broadcast_to(val, (k,))
            self.r.append(rows)
            self.c.append(col)
            self.v.append(val)
        self.lo.append(np.broadcast_to(lo, (k,)).astype(float))
        self.hi.append(np.broadcast_to(hi, (k,)).astype(float))
        self.m += k

    def add_sum(self, cols: np.ndarray, lo: float, hi: float) -> None:
        """One row ``lo <= sum v[cols] <= hi``."""
        self.r.append(np.full(cols.size, self.m))
        self.c.append(cols)
        self.v.append(np.ones(cols.size))
        self.lo.append(np.array([lo], dtype=float))
        self.hi.append(np.array([hi], dtype=float))
        self.m += 1

    def matrix(self, n: int) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
        if not self.m:
            return sparse.csr_matrix((0, n)), np.zeros(0), np.zeros(0)
        A = sparse.csr_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                              shape=(self.m, n))
        return A, np.concatenate(self.lo), np.concatenate(self.hi)


class MILPSolver:
    """The program as a MILP over ``[v, binaries, L1 slacks, t]``."""

    def __init__(self, program: Program, tolerance: float = 1e-6):
        self.program = program
        V = program.n_vars
        n_bin = sum(g.z.size for g in program.relus) + sum(g.z.size for g in program.maxes)
        ball = program.input_set if isinstance(program.input_set, LpBall) and program.input_set.p == 1 else None
        n_l1 = program.n_inputs if ball is not None else 0
        self.n = V + n_bin + n_l1 + 1
        self.t = self.n - 1
        lo = np.concatenate([program.lo, np.zeros(n_bin), np.zeros(n_l1), [-np.inf]])
        if ball is not None:  # |x_i - c_i| is at most the input variable's distance to the centre
            c0 = ball.center.reshape(-1).double().cpu().numpy()
            reach = np.maximum(np.abs(program.hi[: n_l1] - c0), np.abs(program.lo[: n_l1] - c0))
        else:
            reach = np.zeros(0)
        hi = np.concatenate([program.hi, np.ones(n_bin), reach, [np.inf]])
        self.integrality = np.concatenate([np.zeros(V), np.ones(n_bin), np.zeros(n_l1), [0]])
        rows = _Rows(self.n)
        eq = program.eq.tocoo()
        rows.r.append(eq.row + rows.m)
        rows.c.append(eq.col)
        rows.v.append(eq.data)
        rows.lo.append(program.eq_rhs)
        rows.hi.append(program.eq_rhs)
        rows.m += eq.shape[0]
        ub = program.ub.tocoo()  # the rounding variables' bounds
        rows.r.append(ub.row + rows.m)
        rows.c.append(ub.col)
        rows.v.append(ub.data)
        rows.lo.append(np.full(ub.shape[0], -np.inf))
        rows.hi.append(program.ub_rhs)
        rows.m += ub.shape[0]
        nxt = V
        for g in program.relus:
            k = g.z.size
            dl = np.arange(nxt, nxt + k)
            nxt += k
            a = g.slope
            rows.add([g.y, g.z], [1.0, -1.0], np.zeros(k), np.full(k, np.inf))        # y >= z
            if a:
                rows.add([g.y, g.z], [1.0, -a], np.zeros(k), np.full(k, np.inf))     # y >= a z
            rows.add([g.y, g.z, dl], [1.0, -1.0, (a - 1) * g.lower], np.full(k, -np.inf), (a - 1) * g.lower)
            rows.add([g.y, g.z, dl], [1.0, -a, -(1 - a) * g.upper], np.full(k, -np.inf), np.zeros(k))
        for g in program.maxes:
            k = g.z.size
            dl = np.arange(nxt, nxt + k)
            nxt += k
            top = g.upper.max()
            rows.add([np.full(k, g.y), g.z], [1.0, -1.0], np.zeros(k), np.full(k, np.inf))
            rows.add([np.full(k, g.y), g.z, dl], [1.0, -1.0, top - g.lower], np.full(k, -np.inf), top - g.lower)
            rows.add_sum(dl, 1.0, 1.0)                                            # one winner
        if ball is not None:
            c = ball.center.reshape(-1).double().cpu().numpy()
            x = np.arange(program.n_inputs)
            tl = np.arange(nxt, nxt + n_l1)
            rows.add([tl, x], [1.0, -1.0], -c, np.full(x.size, np.inf))   # t >= x - c
            rows.add([tl, x], [1.0, 1.0], c, np.full(x.size, np.inf))     # t >= c - x
            rows.add_sum(tl, -np.inf, float(ball.eps.reshape(-1)[0]))             # sum t <= eps
        self.base = rows.matrix(self.n)
        self.bounds = Bounds(lo, hi)
        finite = np.concatenate([np.abs(program.lo), np.abs(program.hi)])
        self.tol = tolerance * (1.0 + float(finite[np.isfinite(finite)].max(initial=0.0)))
        # what HiGHS's dual tolerance can hide (see the module docstring): DUAL_SLACK * sum of variable ranges
        self.ranges = float(np.sum(hi[:-1] - lo[:-1]))

    def _solve(self, A: sparse.csr_matrix, a: np.ndarray, d: np.ndarray, time_limit: float, t_max: float,
               exact: bool):
        """min t s.t. base rows, ``A v + a - d <= t``, ``t <= t_max``."""
        R = A.shape[0]
        clause = sparse.hstack([A, sparse.csr_matrix((R, self.n - 1 - A.shape[1])),
                                sparse.csr_matrix(-np.ones((R, 1)))]).tocsr()
        base, blo, bhi = self.base
        cons = [LinearConstraint(sparse.vstack([base, clause]).tocsr(),
                                 np.concatenate([blo, np.full(R, -np.inf)]), np.concatenate([bhi, d - a]))]
        lo, hi = self.bounds.lb.copy(), self.bounds.ub.copy()
        hi[self.t] = t_max
        lo[self.t] = self.t_floor(A, a, d)
        cost = np.zeros(self.n)
        cost[self.t] = 1.0
        options = dict(EXACT) if exact else {"mip_feasibility_tolerance": 1e-9, "primal_feasibility_tolerance": 1e-9}
        if math.isfinite(time_limit):
            options["time_limit"] = max(float(time_limit), 0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return milp(cost, constraints=cons, integrality=self.integrality, bounds=Bounds(lo, hi), options=options)

    def t_floor(self, A: sparse.csr_matrix, a: np.ndarray, d: np.ndarray) -> float:
        """A lower bound of ``t >= max_j (A_j v + a_j - d_j)`` from the variables' bounds (one row suffices),
        less one: it gives ``t`` a finite range for the dual-tolerance margin, and cuts nothing off."""
        V = A.shape[1]
        lo, hi = self.bounds.lb[:V], self.bounds.ub[:V]
        row = A[0].toarray().ravel()
        with np.errstate(invalid="ignore"):
            low = np.where(row > 0, row * lo, np.where(row < 0, row * hi, 0.0)).sum() + a[0] - d[0]
        return float(low) - 1.0 if np.isfinite(low) else -np.inf

    def margin(self, A: sparse.csr_matrix, a: np.ndarray, d: np.ndarray) -> float:
        """The enlargement behind an UNSAT answer: the larger of ``tolerance (1 + max |bound|)`` and
        ``DUAL_SLACK * sum of variable ranges`` (``t``'s included), see the module docstring."""
        t_range = self.tol - self.t_floor(A, a, d)
        derived = DUAL_SLACK * (self.ranges + t_range)
        return max(self.tol, derived) if np.isfinite(derived) else np.inf

    def out_of_range(self, A: sparse.csr_matrix, a: np.ndarray, d: np.ndarray) -> str:
        """Why HiGHS cannot be trusted with these numbers, or "": it reads bounds of magnitude >= 1e20 as
        infinite (``infinite_bound``: a lower bound of 1e30 makes the problem look infeasible) and rejects
        coefficients >= 1e15 (``large_matrix_value``)."""
        b = np.concatenate([self.bounds.lb[:-1], self.bounds.ub[:-1]])
        b = b[np.isfinite(b)]
        base, blo, bhi = self.base
        rhs = np.concatenate([blo, bhi, d - a])
        rhs = rhs[np.isfinite(rhs)]
        coef = np.concatenate([np.abs(base.data), np.abs(A.data)])
        if b.size and float(np.abs(b).max()) >= HIGHS_LARGE or rhs.size and float(np.abs(rhs).max()) >= HIGHS_LARGE:
            return f"a bound of magnitude >= {HIGHS_LARGE:g}, which HiGHS would read as infinite"
        if coef.size and float(coef.max()) >= HIGHS_LARGE:
            return f"a coefficient of magnitude >= {HIGHS_LARGE:g}, beyond what HiGHS accepts"
        return ""

    def check(self, A, a, d, time_limit: float) -> Check:
        why = self.out_of_range(A, a, d)
        if why:
            return Check(UNKNOWN, reason=f"unsupported numbers for the MILP solver: {why}")
        margin = self.margin(A, a, d)
        if not np.isfinite(margin):
            return Check(UNKNOWN, reason="unbounded variables: no margin covers the solver's tolerances")
        res = self._solve(A, a, d, time_limit, margin, exact=False)
        if res.status == 2:  # infeasible: even the enlarged clause (by tol) is unreachable
            return Check(UNSAT)
        if res.x is not None and res.status in (0, 1):
            return Check(SAT, x=np.asarray(res.x[: self.program.n_vars]))
        if res.status == 1:
            return Check(UNKNOWN, reason=TIMEOUT)
        return Check(UNKNOWN, reason=f"HiGHS: {res.message}")

    def minimum(self, A, a, d, time_limit: float = math.inf) -> tuple[float, np.ndarray | None]:
        """``min_x max_j (A_j v + a_j - d_j)`` to HiGHS's tolerances, and a minimiser (``nan`` on failure)."""
        res = self._solve(A, a, d, time_limit, np.inf, exact=True)
        if res.status != 0:
            return math.nan, None
        return float(res.fun), np.asarray(res.x[: self.program.n_vars])


class MILP(ExactVerifier):
    name: ClassVar[str] = "milp"
    description: ClassVar[str] = ("exact on piecewise-linear networks: big-M mixed-integer program with the engine's "
                                  "bounds, solved by HiGHS (exact to its tolerances, with a margin kept against them)")
    requires: ClassVar[tuple[str, ...]] = ("scipy",)
    Options: ClassVar[type] = MILPOptions

    def build(self, program: Program, options) -> MILPSolver:
        return MILPSolver(program, getattr(options, "tolerance", 1e-6))

    def input_reason(self, spec: Spec) -> str | None:
        if isinstance(spec.input, LpBall) and spec.input.p == 2:
            return "an L2 ball needs a quadratic constraint, which a MILP cannot state; use smt (or crown for bounds)"
        return None
