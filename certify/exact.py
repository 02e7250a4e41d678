"""What the exact backends (``smt``, ``milp``) share: the lowering to a piecewise-linear ``Program``, one
clause at a time, the proof margin and the rules that turn a solver's answer into a ``Result``.

For every instance of every spec and every unsafe clause ``{y : C y <= d}``, the solver is asked
whether some input of the set reaches the *enlarged* clause ``C y <= d + m`` (``m = Program.margin(C, d)``,
a bound on what the program leaves out of the gap between it, the stored network in exact arithmetic
and its float evaluation; see ``certify.pwl``).

* **unsat** for every clause: *proved*; nothing within ``m`` of the clause is reachable, so neither
  the exact network nor its float evaluation reaches the clause itself. The certified bound reported per
  clause is then 0 (its margin is positive); a clause not (yet) shown unsat reports ``-inf``.
* **sat**: the model's input is decoded to floats and replayed on the reference runtime
  (``certify.replay``); a replay that lands in the clause is a *falsified* answer. When rounding makes
  the replay miss, the neighbourhood is searched: the solver is asked again for inputs reaching the
  *shrunk* clause ``C y <= d - f (m + s)`` for growing ``f`` (``s`` covers rounding the input to the
  runtime's precision), each answer replayed; if none replays, the answer is unknown (a violation may
  exist only within the margin). Never falsified without a replay.
* a solver timeout or an unknown from the solver: unknown, with the solver's reason.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from scipy import sparse

from . import replay
from .bounding import BoundOptions, attack_first
from .budget import Budget
from .models import Model
from .pwl import Program, lower, unsupported_reason
from .results import INCONCLUSIVE, TIMEOUT, Guarantee, Result, Verdict
from .spec import Property, Spec

SAT, UNSAT, UNKNOWN = "sat", "unsat", "unknown"


@dataclass
class Check:
    """A solver's answer to "does some input reach ``A v + a <= d``?": ``x`` (the input, flat float64)
    with ``sat``; ``reason`` with ``unknown``."""

    status: str
    x: np.ndarray | None = None
    reason: str = ""


class Solver(Protocol):
    def check(self, A: sparse.csr_matrix, a: np.ndarray, d: np.ndarray, time_limit: float) -> Check:
        """Whether some point of the program (input set and network) has ``A v + a <= d`` row-wise."""


@dataclass(frozen=True)
class ExactOptions(BoundOptions):
    """``neighbourhood``: the factors ``f`` of the shrunk clauses tried after a failed replay."""

    neighbourhood: tuple[float, ...] = (1.0, 8.0, 64.0)


def _input_rounding_slack(program: Program, C: np.ndarray) -> np.ndarray:
    """A generous allowance for rounding the input to float32: ``2^-20`` relative to the output bounds."""
    var = program.out_var >= 0
    scale = np.zeros(program.out_var.shape)
    scale[var] = np.maximum(np.abs(program.lo[program.out_var[var]]), np.abs(program.hi[program.out_var[var]]))
    return np.abs(C) @ (scale * 2.0 ** -20) + 1e-9


class ExactVerifier:
    """Base of the exact backends: subclasses set the class attributes and ``build(program) -> Solver``."""

    name: ClassVar[str]
    description: ClassVar[str]
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]]
    Options: ClassVar[type] = ExactOptions
    float_rounding: ClassVar[str] = "variables"  # how the program covers float evaluation (certify.pwl.lower)

    def build(self, program: Program, options: Any) -> Solver:
        raise NotImplementedError

    def input_reason(self, spec: Spec) -> str | None:
        """Why this backend cannot encode the spec's input set, or None."""
        return None

    def supports(self, model: Model, prop: Property) -> str | None:
        why = unsupported_reason(model.graph)
        if why:
            return why
        for spec in prop.specs:
            why = self.input_reason(spec)
            if why:
                return why
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        options = options or self.Options()
        t0 = time.perf_counter()
        opts = asdict(options)
        attacked = attack_first(model, prop, options, budget, 0.1, cap=2.0)
        if attacked is not None:
            return attacked
        stats: dict[str, float] = {"clauses": 0, "unstable": 0}
        undecided = ""
        # per spec and clause: 0.0 once every instance's clause is unsat (its margin is then > 0), else -inf
        bounds = [[-math.inf] * len(spec.unsafe) for spec in prop.specs]
        for index, spec in enumerate(prop.specs):
            spec = spec.reshape_input(model.input_shape)
            unsat = [0] * len(spec.unsafe)
            for b in range(spec.batch_size):
                one = spec[b]
                rounding = self.float_rounding if model.graph.semantics == "runtime" else "none"
                program = lower(model.graph, one.input, float_rounding=rounding)
                stats["unstable"] = max(stats["unstable"], program.stats["unstable"])
                solver = self.build(program, options)
                if budget.expired():  # building a large encoding can take the whole budget
                    return self._unknown(prop, t0, TIMEOUT, opts, stats, bounds)
                for k, clause in enumerate(one.unsafe):
                    if budget.expired():
                        return self._unknown(prop, t0, TIMEOUT, opts, stats, bounds)
                    stats["clauses"] += 1
                    C = clause.C[0].detach().cpu().double().numpy()
                    d = clause.d[0].detach().cpu().double().numpy()
                    A, a = program.output_rows(C)
                    m = program.margin(C, d)
                    found = solver.check(A, a, d + m, budget.remaining())
                    if found.status == UNSAT:
                        unsat[k] += 1
                        if unsat[k] == spec.batch_size:
                            bounds[index][k] = 0.0
                        continue
                    if found.status == UNKNOWN:
                        if found.reason == TIMEOUT or budget.expired():
                            return self._unknown(prop, t0, TIMEOUT, opts, stats, bounds)
                        undecided = undecided or found.reason
                        continue
                    cex = replay.check(model, one, found.x[: program.n_inputs], spec_index=index)
                    slack = m + _input_rounding_slack(program, C)
                    for f in options.neighbourhood:
                        if cex is not None or budget.expired():
                            break
                        deeper = solver.check(A, a, d - f * slack, budget.remaining())
                        if deeper.status != SAT:
                            break
                        cex = replay.check(model, one, deeper.x[: program.n_inputs], spec_index=index)
                    if cex is not None:
                        return Result(Verdict.FALSIFIED, self.name, time.perf_counter() - t0, counterexample=cex,
                                      property=prop.name, options=opts, stats=stats)
                    undecided = undecided or (f"clause {k} of spec {index} is reached within the rounding margin "
                                              f"({float(m.max()):.3g}) but no point "
                                              f"found replays on "
                                              f"{model.reference_name}")
        if undecided:
            return self._unknown(prop, t0, f"{INCONCLUSIVE}: {undecided}", opts, stats, bounds)
        return Result(Verdict.PROVED, self.name, time.perf_counter() - t0, guarantee=Guarantee.SOUND,
                      property=prop.name, options=opts, stats=stats, bounds=tuple(map(tuple, bounds)))

    def _unknown(self, prop: Property, t0: float, reason: str, opts: dict, stats: dict,
                 bounds: list[list[float]]) -> Result:
        return Result(Verdict.UNKNOWN, self.name, time.perf_counter() - t0, reason=reason, property=prop.name,
                      options=opts, stats=stats, bounds=tuple(map(tuple, bounds)))
