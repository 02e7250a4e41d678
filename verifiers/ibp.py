"""IBP backend: sound interval bounds (float64, outward rounding), optionally after a PGD attack.

A clause is certified unreachable when one of its rows has a certified lower bound
``min (C_j y - d_j) > 0`` over the output box (``fp.certify_margin``); the property is proved when
every clause of every spec is.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from certify.attack import AttackOptions
from certify.budget import Budget
from certify.engine import certify_margin, sound_interval_bounds
from certify.models import Model
from certify.results import INCONCLUSIVE, TIMEOUT, Guarantee, Result, Verdict
from certify.spec import Property, Spec
from verifiers.pgd import falsify


@dataclass(frozen=True)
class IBPOptions:
    """``attack``: run the PGD falsifier first; ``device``: where bounds are computed."""

    attack: bool = True
    attack_options: AttackOptions = field(default_factory=AttackOptions)
    device: str = "cpu"


def clause_bounds(model: Model, spec: Spec, device: str = "cpu") -> torch.Tensor:
    """Certified lower bound of each clause's best row, ``[B, K]`` (float64)."""
    spec = spec.reshape_input(model.input_shape)
    y = sound_interval_bounds(model.graph, spec.input.bounds(), device=device)
    C, d, clause_of_row = spec.matrix()
    rows = certify_margin(C.to(y.lower.device), d.to(y.lower.device), y)  # [B, R]
    K = len(spec.unsafe)
    out = torch.full((rows.shape[0], K), -torch.inf, dtype=rows.dtype, device=rows.device)
    return out.scatter_reduce(1, clause_of_row.to(rows.device).expand_as(rows), rows, reduce="amax").cpu()


class IBP:
    name: ClassVar[str] = "ibp"
    description: ClassVar[str] = "interval bound propagation, float64 with outward rounding (sound, incomplete)"
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type] = IBPOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        options = options or IBPOptions()
        t0 = time.perf_counter()
        steps = []
        if options.attack:
            cex = falsify(model, prop, options.attack_options, budget.sub(0.5))
            steps.append(("pgd", time.perf_counter() - t0, "falsified" if cex else "unknown"))
            if cex is not None:
                return Result(Verdict.FALSIFIED, "pgd", time.perf_counter() - t0, counterexample=cex,
                              property=prop.name, options=asdict(options), steps=tuple(steps))
        t1 = time.perf_counter()
        bounds = [clause_bounds(model, spec, options.device)[0] for spec in prop.specs]
        proved = all(bool((b > 0).all()) for b in bounds)
        steps.append(("ibp", time.perf_counter() - t1, "proved" if proved else "unknown"))
        dt = time.perf_counter() - t0
        common = dict(bounds=tuple(tuple(float(v) for v in b) for b in bounds), property=prop.name,
                      options=asdict(options), steps=tuple(steps))
        if proved:
            return Result(Verdict.PROVED, self.name, dt, guarantee=Guarantee.SOUND, **common)
        reason = TIMEOUT if budget.expired() else f"{INCONCLUSIVE}: interval bounds too loose"
        return Result(Verdict.UNKNOWN, self.name, dt, reason=reason, **common)
