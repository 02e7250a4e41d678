"""CROWN backend: backward linear bound propagation with CROWN intermediate bounds, float64 with
sound rounding (``certify.engine.crown``), optionally after a PGD attack."""
from __future__ import annotations

from typing import Any, ClassVar

from certify.bounding import BoundOptions, verify_with_bounds
from certify.budget import Budget
from certify.engine.crown import sound_crown_lower
from certify.models import Model
from certify.results import Guarantee, Result
from certify.spec import Property, Spec


def row_bounds(model: Model, spec: Spec, options: BoundOptions):
    C, d, _ = spec.matrix()
    return sound_crown_lower(model.graph, spec.input, C, d, device=options.device)


class CROWN:
    name: ClassVar[str] = "crown"
    description: ClassVar[str] = "CROWN linear bounds, float64 with sound rounding (sound, incomplete)"
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type] = BoundOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        return verify_with_bounds(self.name, row_bounds, model, prop, options or BoundOptions(), budget)
