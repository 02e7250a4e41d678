"""The exact worst-case margin of a small network on a spec, cross-checked by both exact backends.

``exact_margin(model, spec)`` is ``min_x max_j (C_j f(x) - d_j)`` minimised over the spec's input set
and over its clauses (the property holds iff it is positive), for the network in exact arithmetic on
its stored weights. The value comes from the MILP backend's solver (HiGHS, zero gap, 1e-9
tolerances, the engine's bounds as big-M constants); it is then confirmed by z3 on an encoding that
uses *no* engine bounds (``lower(..., use_bounds=False)``: every ReLU a case split): the clause
shifted by ``t* - tol`` must be unreachable; and the MILP's minimiser, evaluated by a plain float64
forward pass, must reach ``t* + tol``. A disagreement raises, so wrong engine bounds (which would
corrupt the big-M constants) cannot slip into the oracle's value.
"""
from __future__ import annotations

import numpy as np
import torch

from certify.pwl import lower
from certify.spec import Spec
from verifiers.milp import MILPSolver
from verifiers.smt import SMTSolver


class OracleDisagreement(AssertionError):
    pass


def clause_margins(model, spec: Spec, cross_check: bool = True, tol: float = 1e-6) -> np.ndarray:
    """Per clause of the single-instance ``spec``: the exact worst-case margin (see the module docstring)."""
    spec = spec.reshape_input(model.input_shape)
    program = lower(model.graph, spec.input, float_rounding="none")
    milp = MILPSolver(program)
    z3 = SMTSolver(lower(model.graph, spec.input, use_bounds=False, float_rounding="none")) if cross_check else None
    out = []
    for clause in spec.unsafe:
        C = clause.C[0].double().numpy()
        d = clause.d[0].double().numpy()
        A, a = program.output_rows(C)
        value, v = milp.minimum(A, a, d)
        if not np.isfinite(value):
            raise OracleDisagreement("HiGHS did not solve the oracle MILP")
        slack = tol * (1 + abs(value))
        x = torch.as_tensor(v[: program.n_inputs]).reshape(1, *model.input_shape)
        y = model.graph.to(dtype=torch.float64).forward(x.clamp(spec.input.bounds().lower, spec.input.bounds().upper))
        achieved = float((torch.as_tensor(C) @ y[0].double() - torch.as_tensor(d)).max())
        if achieved > value + slack:
            raise OracleDisagreement(f"the MILP minimiser reaches {achieved}, not its objective {value}")
        if z3 is not None:
            A0, a0 = z3.program.output_rows(C)
            below = z3.check(A0, a0, d + value - slack, float("inf")).status
            if below != "unsat":
                raise OracleDisagreement(f"z3 finds the clause reachable {slack:g} below the MILP margin {value}")
        out.append(value)
    return np.array(out)


def exact_margin(model, spec: Spec, cross_check: bool = True) -> float:
    """The exact worst-case margin over all clauses: positive iff the spec holds."""
    return float(clause_margins(model, spec, cross_check).min())
