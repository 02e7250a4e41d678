"""Falsifier-only backend: PGD with restarts, every candidate replayed. Never proves anything."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, ClassVar

from certify import replay
from certify.attack import AttackOptions, pgd
from certify.budget import Budget
from certify.models import Model
from certify.results import INCONCLUSIVE, TIMEOUT, Counterexample, Guarantee, Result, Verdict
from certify.spec import Property


def falsify(model: Model, prop: Property, options: AttackOptions, budget: Budget) -> Counterexample | None:
    """Run PGD on every spec of the property; return the first candidate that replays."""
    for index, spec in enumerate(prop.specs):
        for x in pgd(model.graph, spec, options, budget):
            cex = replay.check(model, spec, x, spec_index=index)
            if cex is not None:
                return cex
        if budget.expired():
            break
    return None


class PGD:
    name: ClassVar[str] = "pgd"
    description: ClassVar[str] = "projected gradient attack with restarts (falsifier only, never proves)"
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type] = AttackOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        options = options or AttackOptions()
        t0 = time.perf_counter()
        cex = falsify(model, prop, options, budget)
        dt = time.perf_counter() - t0
        if cex is not None:
            return Result(Verdict.FALSIFIED, self.name, dt, counterexample=cex, property=prop.name, options=asdict(options))
        reason = TIMEOUT if budget.expired() else f"{INCONCLUSIVE}: no counterexample found"
        return Result(Verdict.UNKNOWN, self.name, dt, reason=reason, property=prop.name, options=asdict(options))
