"""IBP backend: sound interval bounds (float64, outward rounding), optionally after a PGD attack.

A clause is certified unreachable when one of its rows has a certified lower bound
``min (C_j y - d_j) > 0`` over the output box (``fp.certify_margin``); the property is proved when
every clause of every spec is.
"""
from __future__ import annotations

from typing import Any, ClassVar

from certify.bounding import BoundOptions, verify_with_bounds
from certify.budget import Budget
from certify.engine import certify_margin, sound_interval_bounds
from certify.models import Model
from certify.results import Guarantee, Result
from certify.spec import Property, Spec



def row_bounds(model: Model, spec: Spec, options: BoundOptions):
    """Certified lower bounds of ``C_r y - d_r`` over the IBP output box, ``[B, R]``."""
    y = sound_interval_bounds(model.graph, spec.input.bounds(), device=options.device)
    C, d, _ = spec.matrix()
    return certify_margin(C.to(y.lower.device), d.to(y.lower.device), y)


class IBP:
    name: ClassVar[str] = "ibp"
    description: ClassVar[str] = "interval bound propagation, float64 with outward rounding (sound, incomplete)"
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type] = BoundOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        return verify_with_bounds(self.name, row_bounds, model, prop, options or BoundOptions(), budget)
