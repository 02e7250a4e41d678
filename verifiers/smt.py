"""Exact backend: the network's piecewise-linear program (``certify.pwl``) as an SMT problem over the
reals, decided by z3.

Every constant (weights, biases, bounds, the spec's ``C`` and ``d``) enters as the exact rational value
of its float64 number, so z3's answer is exact for the encoded network; ``certify.exact`` adds the
margin that covers the encoded-vs-stored and the float-evaluation gaps (here without rounding
variables: ``certify.pwl.lower(..., float_rounding="margin")``, the a-priori bound as a constant). Encoding: the program's
variables, their bounds (the engine's sound boxes: redundant, but they let z3 cut early),
equalities and the rounding variables' bounds; an unstable ``y = max(z, a z)`` is ``y = If(z >= 0, z, a z)`` (only these and the max-pools
make z3 split); ``y = max_i z_i`` is ``y >= z_i`` for all ``i`` and ``Or_i(y = z_i)``. The input set:
a box is its bounds; an L-inf ball also ``|x_i - c_i| <= eps``; an L1 ball ``sum_i |x_i - c_i| <= eps``
with ``t_i >= +-(x_i - c_i)``; an L2 ball ``sum_i (x_i - c_i)^2 <= eps^2`` (nonlinear real arithmetic:
decidable, often slow). The network is asserted once; each clause is checked inside push/pop, with
z3's timeout set to the time left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np

from certify.exact import SAT, UNKNOWN, UNSAT, Check, ExactOptions, ExactVerifier
from certify.pwl import Program
from certify.results import TIMEOUT
from certify.sets import LpBall


@dataclass(frozen=True)
class SMTOptions(ExactOptions):
    """``seed``: z3's random seed (answers do not depend on it; time may)."""

    seed: int = 0


def _q(value: float, ctx):
    import z3

    f = Fraction(float(value))
    return z3.RealVal(f"{f.numerator}/{f.denominator}" if f.denominator != 1 else f.numerator, ctx)


def _linear(coef: np.ndarray, cols: np.ndarray, v: list, ctx):
    import z3

    terms = [v[int(c)] if w == 1.0 else _q(w, ctx) * v[int(c)] for w, c in zip(coef, cols)]
    return z3.Sum(terms) if len(terms) > 1 else (terms[0] if terms else z3.RealVal(0, ctx))


def _value(model, var) -> float:
    import z3

    val = model.eval(var, model_completion=True)
    if z3.is_algebraic_value(val):
        val = val.approx(30)
    frac = val.as_fraction()
    return float(Fraction(frac.numerator, frac.denominator))


class SMTSolver:
    def __init__(self, program: Program, seed: int = 0):
        import z3

        self.program = program
        self.ctx = ctx = z3.Context()  # one per program: no state shared between problems, freed with it
        s = z3.SolverFor("QF_NRA" if self._l2() else "QF_LRA", ctx=ctx)
        s.set("random_seed", seed)
        v = [z3.Real(f"v{i}", ctx) for i in range(program.n_vars)]

        def q(value):
            return _q(value, ctx)

        for i, (lo, hi) in enumerate(zip(program.lo, program.hi)):
            if math.isfinite(lo):
                s.add(v[i] >= q(lo))
            if math.isfinite(hi):
                s.add(v[i] <= q(hi))
        eq = program.eq.tocsr()
        for r in range(eq.shape[0]):
            lo, hi = eq.indptr[r], eq.indptr[r + 1]
            s.add(_linear(eq.data[lo:hi], eq.indices[lo:hi], v, ctx) == q(program.eq_rhs[r]))
        ub = program.ub.tocsr()  # the rounding variables' bounds
        for r in range(ub.shape[0]):
            lo, hi = ub.indptr[r], ub.indptr[r + 1]
            s.add(_linear(ub.data[lo:hi], ub.indices[lo:hi], v, ctx) <= q(program.ub_rhs[r]))
        for g in program.relus:
            for z, y in zip(g.z, g.y):
                zi, yi = v[int(z)], v[int(y)]
                s.add(yi == z3.If(zi >= 0, zi, q(g.slope) * zi) if g.slope else yi == z3.If(zi >= 0, zi, z3.RealVal(0, ctx)))
        for g in program.maxes:
            y = v[g.y]
            s.add(*[y >= v[int(z)] for z in g.z])
            s.add(z3.Or(*[y == v[int(z)] for z in g.z]))
        self._input_set(s, v)
        self.solver, self.v = s, v

    def _l2(self) -> bool:
        ball = self.program.input_set
        return isinstance(ball, LpBall) and ball.p == 2

    def _input_set(self, s, v) -> None:
        import z3

        ball = self.program.input_set
        if not isinstance(ball, LpBall):
            return  # a box: the input variables' bounds are the box
        c = ball.center.reshape(-1).double().cpu().numpy()
        ctx = self.ctx

        def q(value):
            return _q(value, ctx)

        eps = q(float(ball.eps.reshape(-1)[0]))
        x = v[: self.program.n_inputs]
        if ball.p == math.inf:
            for xi, ci in zip(x, c):
                s.add(xi - q(ci) <= eps, q(ci) - xi <= eps)
        elif ball.p == 1:
            t = [z3.Real(f"t{i}", ctx) for i in range(len(x))]
            for ti, xi, ci in zip(t, x, c):
                s.add(ti >= xi - q(ci), ti >= q(ci) - xi)
            s.add(z3.Sum(t) <= eps)
        else:
            s.add(z3.Sum([(xi - q(ci)) * (xi - q(ci)) for xi, ci in zip(x, c)]) <= eps * eps)

    def check(self, A, a, d, time_limit: float) -> Check:
        import z3

        s = self.solver
        s.push()
        try:
            A = A.tocsr()
            for j in range(A.shape[0]):
                lo, hi = A.indptr[j], A.indptr[j + 1]
                # exact: C_j y + a_j <= d_j, constants as rationals
                s.add(_linear(A.data[lo:hi], A.indices[lo:hi], self.v, self.ctx) + _q(a[j], self.ctx) <= _q(d[j], self.ctx))
            ms = 4_294_967_295 if not math.isfinite(time_limit) else max(1, int(time_limit * 1000))
            s.set("timeout", ms)
            answer = s.check()
            if answer == z3.unsat:
                return Check(UNSAT)
            if answer == z3.sat:
                m = s.model()
                return Check(SAT, x=np.array([_value(m, xi) for xi in self.v[: self.program.n_inputs]]))
            reason = s.reason_unknown()
            return Check(UNKNOWN, reason=TIMEOUT if "timeout" in reason or "canceled" in reason else f"z3: {reason}")
        finally:
            s.pop()


class SMT(ExactVerifier):
    name: ClassVar[str] = "smt"
    description: ClassVar[str] = ("exact on piecewise-linear networks: z3 over the reals with exact rational constants; "
                                  "only unstable ReLUs are case splits (engine bounds fix the rest)")
    requires: ClassVar[tuple[str, ...]] = ("z3",)
    Options: ClassVar[type] = SMTOptions
    float_rounding: ClassVar[str] = "margin"  # no rounding variables: z3 slows down several-fold with them

    def build(self, program: Program, options) -> SMTSolver:
        return SMTSolver(program, getattr(options, "seed", 0))
