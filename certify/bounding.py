"""What every bound-based backend (IBP, CROWN, alpha-CROWN) shares: optional falsification first, a
certified lower bound per specification row, the clause rule (a clause is unreachable when one of
its rows has a positive certified bound), and the result."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

from torch import Tensor

from .attack import AttackOptions
from .budget import Budget
from .models import Model
from .results import INCONCLUSIVE, TIMEOUT, Guarantee, Result, Verdict
from .spec import Property, Spec, clause_max

# row_bounds(model, spec, options, budget) -> certified lower bounds of C_r f(x) - d_r, [B, R] float64
RowBounds = Callable[[Model, Spec, object, Budget], Tensor]


@dataclass(frozen=True)
class BoundOptions:
    """``attack``: run the PGD falsifier first; ``device``: where bounds are computed."""

    attack: bool = True
    attack_options: AttackOptions = field(default_factory=AttackOptions)
    device: str = "cpu"


def attack_first(model: Model, prop: Property, options, budget: Budget, fraction: float,
                 cap: float = math.inf) -> Result | None:
    """With ``options.attack``: the PGD falsifier on ``fraction`` of the budget (at most ``cap`` seconds);
    a *falsified* result (method ``pgd``) when it finds a replayed counterexample, else None."""
    from verifiers.pgd import falsify

    if not options.attack:
        return None
    t0 = time.perf_counter()
    cex = falsify(model, prop, options.attack_options, budget.sub(fraction, cap=cap))
    if cex is None:
        return None
    return Result(Verdict.FALSIFIED, "pgd", time.perf_counter() - t0, counterexample=cex, property=prop.name,
                  options=asdict(options))


def clause_bounds(rows: Tensor, spec: Spec) -> Tensor:
    """Best row per clause: ``[B, R]`` row bounds -> ``[B, K]`` clause bounds."""
    _, _, clause_of_row = spec.matrix()
    return clause_max(rows, clause_of_row, len(spec.unsafe)).cpu()


def verify_with_bounds(name: str, row_bounds: RowBounds, model: Model, prop: Property, options,
                       budget: Budget) -> Result:
    """Falsify (optionally), then prove every clause of every spec unreachable, or report unknown."""
    from verifiers.pgd import falsify

    t0 = time.perf_counter()
    steps = []
    opts = asdict(options)
    if options.attack:
        cex = falsify(model, prop, options.attack_options, budget.sub(0.5))
        steps.append(("pgd", time.perf_counter() - t0, "falsified" if cex else "unknown"))
        if cex is not None:
            return Result(Verdict.FALSIFIED, "pgd", time.perf_counter() - t0, counterexample=cex,
                          property=prop.name, options=opts, steps=tuple(steps))
    t1 = time.perf_counter()
    bounds = []
    for spec in prop.specs:
        rows = row_bounds(model, spec.reshape_input(model.input_shape), options, budget)
        bounds.append(clause_bounds(rows, spec)[0])
        if not bool((bounds[-1] > 0).all()) or budget.expired():
            break  # this spec is not proved: the property cannot be
    proved = len(bounds) == len(prop.specs) and all(bool((b > 0).all()) for b in bounds)
    steps.append((name, time.perf_counter() - t1, "proved" if proved else "unknown"))
    common = dict(bounds=tuple(tuple(float(v) for v in b) for b in bounds), property=prop.name, options=opts,
                  steps=tuple(steps))
    dt = time.perf_counter() - t0
    if proved:
        return Result(Verdict.PROVED, name, dt, guarantee=Guarantee.SOUND, **common)
    reason = TIMEOUT if budget.expired() else f"{INCONCLUSIVE}: {name} bounds too loose"
    return Result(Verdict.UNKNOWN, name, dt, reason=reason, **common)


class BoundVerifier:
    """A sound, incomplete backend defined by its ``row_bounds``: subclasses set ``name``,
    ``description``, ``Options`` and ``row_bounds`` (a static function
    ``(model, spec, options, budget) -> [B, R]``)."""

    name: ClassVar[str]
    description: ClassVar[str]
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type] = BoundOptions
    row_bounds: ClassVar[RowBounds]

    def supports(self, model: Model, prop: Property) -> str | None:
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        return verify_with_bounds(self.name, type(self).row_bounds, model, prop, options or self.Options(), budget)
