"""The exact worst-case margin of a small network on a spec, from an oracle independent of certify's lowering.

``exact_margin(model, spec)`` is ``min_x max_j (C_j f(x) - d_j)`` minimised over the spec's input set
and over its clauses (the property holds iff it is positive), for the network in exact arithmetic on
its stored weights. The value comes from the graph oracle of ``tests/oracles/milp.py`` (its own
encoding of every op the exact backends accept: linear maps read off PyTorch's functional forward on
basis vectors, max-pool windows from its own index arithmetic, big-M constants from its own float64
interval arithmetic; HiGHS, zero gaps, 1e-9 tolerances). Nothing here uses ``certify.pwl``, the
engine's bounds or the backends under test.

Each value is confirmed twice, and a disagreement raises :class:`OracleDisagreement`:

* the MILP's minimiser, evaluated by a plain float64 forward pass of the graph
  (``graph.to(dtype=torch.float64).forward``, i.e. certify's own op implementations, and by the
  oracle's ``graph_forward``), reaches ``t* + tol``;
* z3 (exact rationals) on the oracle's *own* encoding with no bound at all besides the input set's
  (every ReLU/LeakyReLU ``y = If(z >= 0, z, a z)``, every max ``y >= z_i and Or_i(y = z_i)`` over all
  window candidates) finds the clause shifted to ``t* - tol`` unreachable; so neither the interval
  bounds (big-M constants, stable-neuron decisions, pruned max candidates) nor HiGHS' tolerances can
  corrupt the value by more than ``tol``. (To keep z3 fast, the oracle's interval bounds of the ReLU
  inputs and max candidates enter z3 only as lemmas z3 has first proved itself, node by node, from
  the input set and the earlier lemmas: no unproved bound is ever assumed.)
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

try:  # imported as tests.oracles.exact / oracles.exact
    from .milp import GraphProgram, graph_forward, graph_min, input_bounds, lower_graph
except ImportError:  # imported as a top-level module
    from milp import GraphProgram, graph_forward, graph_min, input_bounds, lower_graph


class OracleDisagreement(AssertionError):
    pass


def _q(value: float, ctx):
    import z3

    f = Fraction(float(value))
    return z3.RealVal(f"{f.numerator}/{f.denominator}" if f.denominator != 1 else f.numerator, ctx)


class Z3Network:
    """The oracle's program asserted in z3 without bounds; ``reachable(C, d, t)`` decides whether some
    input of the set has ``C_j y - d_j <= t`` for every row ``j``."""

    def __init__(self, prog: GraphProgram, lemmas: bool = True):
        import z3

        self.prog = prog
        self.ctx = ctx = z3.Context()
        s = self.solver = z3.SolverFor("QF_LRA", ctx=ctx)
        v = self.v = [z3.Real(f"v{i}", ctx) for i in range(prog.n_vars)]

        def lin(coefs, cols):
            terms = [v[int(c)] if w == 1.0 else _q(w, ctx) * v[int(c)] for w, c in zip(coefs, cols) if w != 0.0]
            return z3.Sum(terms) if len(terms) > 1 else (terms[0] if terms else z3.RealVal(0, ctx))

        self.lin = lin
        self._input_set(s, v, prog, ctx)
        # the program's blocks in the order of the graph (variables are numbered in node order)
        blocks = [(int(out[0]) if out.size else -1, "eq", (out, L, ins, b)) for out, L, ins, b in prog.eqs]
        blocks += [(int(y[0]), "relu", (z, y, a)) for z, y, a in prog.relus if y.size]
        blocks += [(int(y[0]), "max", (y, c)) for y, c in prog.maxes if y.size]
        for _, kind, blk in sorted(blocks, key=lambda t: t[0]):
            if kind == "eq":
                out, L, ins, b = blk
                for r in range(out.size):
                    a, e = L.indptr[r], L.indptr[r + 1]
                    s.add(v[int(out[r])] == lin(L.data[a:e], ins[L.indices[a:e]]) + _q(b[r], ctx))
                continue
            if lemmas:
                self._prove_bounds(np.unique(blk[0] if kind == "relu" else np.concatenate(blk[1])))
            if kind == "relu":
                z, y, a = blk
                for zi, yi in zip(z, y):
                    zv, yv = v[int(zi)], v[int(yi)]
                    s.add(yv == z3.If(zv >= 0, zv, _q(a, ctx) * zv if a else z3.RealVal(0, ctx)))
                    l, u = Fraction(prog.lo[zi]), Fraction(prog.hi[zi])
                    if lemmas and l < 0 < u:
                        # implied by the proved l <= z <= u (convexity): the chord, in exact rationals
                        fa = Fraction(float(a))
                        slope = (u - fa * l) / (u - l)
                        s.add(yv <= z3.RealVal(slope, ctx) * (zv - z3.RealVal(l, ctx)) + z3.RealVal(fa * l, ctx))
            else:
                for yi, zs in zip(*blk):
                    yv = v[int(yi)]
                    s.add(*[yv >= v[int(zi)] for zi in zs])
                    s.add(z3.Or(*[yv == v[int(zi)] for zi in zs]))

    def _prove_bounds(self, zs: np.ndarray) -> None:
        """z3 proves, over the input set and everything asserted so far (the graph up to this ReLU/max
        node, with the lemmas of the earlier ones), that the oracle's interval bounds hold for the
        node's inputs ``zs``, then asserts them: facts z3 has established itself, which spare it the
        case splits the bounds settle. A bound z3 refutes raises (wrong interval arithmetic)."""
        import z3

        prog, s, v, ctx = self.prog, self.solver, self.v, self.ctx
        facts = [(v[int(i)] >= _q(prog.lo[i], ctx), v[int(i)] <= _q(prog.hi[i], ctx)) for i in zs]
        s.push()
        s.set("timeout", 600_000)
        s.add(z3.Or(*[z3.Not(f) for pair in facts for f in pair]))
        status = str(s.check())
        s.pop()
        if status != "unsat":
            raise OracleDisagreement(f"z3 answers {status} to the oracle's interval bounds of variables {zs.tolist()}")
        for pair in facts:
            s.add(*pair)

    @staticmethod
    def _input_set(s, v, prog, ctx) -> None:
        import z3

        x = v[: prog.n_inputs]
        kind = prog.input_set[0]
        if kind == "box":
            _, lo, hi = prog.input_set
            for xi, l, u in zip(x, lo, hi):
                s.add(xi >= _q(l, ctx), xi <= _q(u, ctx))
        else:
            _, p, c, eps, clo, chi = prog.input_set
            e = _q(eps, ctx)
            if clo is not None:
                for xi, l, u in zip(x, clo, chi):
                    s.add(xi >= _q(l, ctx), xi <= _q(u, ctx))
            if p == 1.0:
                t = [z3.Real(f"t{i}", ctx) for i in range(len(x))]
                for ti, xi, ci in zip(t, x, c):
                    s.add(ti >= xi - _q(ci, ctx), ti >= _q(ci, ctx) - xi)
                s.add(z3.Sum(t) <= e)
            else:
                for xi, ci in zip(x, c):
                    s.add(xi - _q(ci, ctx) <= e, _q(ci, ctx) - xi <= e)

    def reachable(self, C: np.ndarray, d: np.ndarray, t: float, timeout_s: float = 600.0) -> str:
        s = self.solver
        s.push()
        try:
            s.set("timeout", int(timeout_s * 1000))
            for Cj, dj in zip(np.atleast_2d(C), np.asarray(d).reshape(-1)):
                nz = np.nonzero(Cj)[0]
                s.add(self.lin(Cj[nz], self.prog.out[nz]) - _q(dj, self.ctx) <= _q(t, self.ctx))
            return str(s.check())
        finally:
            s.pop()


def program(model, spec):
    """The oracle's program of ``model.graph`` over the single-instance ``spec``'s input set."""
    spec = spec.reshape_input(model.input_shape)
    return lower_graph(model.graph, spec.input)


def clause_minimum(graph, prog: GraphProgram, C: np.ndarray, d: np.ndarray, z3net: Z3Network | None,
                   tol: float = 1e-6) -> tuple[float, np.ndarray]:
    """``min_x max_j (C_j f(x) - d_j)`` with both confirmations (see the module docstring), and its minimiser."""
    value, x = graph_min(prog, C, d)
    slack = tol * (1 + abs(value))
    xt = torch.as_tensor(x, dtype=torch.float64).reshape(1, *graph.input_shape)
    Ct, dt = torch.as_tensor(C, dtype=torch.float64), torch.as_tensor(d, dtype=torch.float64)
    for name, f in (("graph.forward", graph.to(dtype=torch.float64).forward),
                    ("the oracle's forward", lambda t: graph_forward(graph, t))):
        with torch.no_grad():
            y = f(xt).reshape(-1).double()
        achieved = float((Ct @ y - dt).max())
        if achieved > value + slack:
            raise OracleDisagreement(f"the MILP minimiser reaches {achieved} by {name}, not its objective {value}")
    if z3net is not None:
        status = z3net.reachable(C, d, value - slack)
        if status != "unsat":
            raise OracleDisagreement(f"z3 answers {status} {slack:g} below the MILP margin {value}")
    return value, x


def clause_margins(model, spec, cross_check: bool = True, tol: float = 1e-6, return_x: bool = False):
    """Per clause of the single-instance ``spec``: the exact worst-case margin (see the module docstring);
    with ``return_x`` also the minimisers (flat float64 inputs)."""
    spec = spec.reshape_input(model.input_shape)
    graph = model.graph
    prog = lower_graph(graph, spec.input)
    z3net = Z3Network(prog) if cross_check else None
    out, xs = [], []
    for clause in spec.unsafe:
        C = clause.C[0].double().numpy()
        d = clause.d[0].double().numpy()
        value, x = clause_minimum(graph, prog, C, d, z3net, tol)
        out.append(value)
        xs.append(x)
    return (np.array(out), xs) if return_x else np.array(out)


def exact_margin(model, spec, cross_check: bool = True) -> float:
    """The exact worst-case margin over all clauses: positive iff the spec holds."""
    return float(clause_margins(model, spec, cross_check).min())


__all__ = ["OracleDisagreement", "Z3Network", "clause_margins", "clause_minimum", "exact_margin", "input_bounds",
           "program"]
