"""alpha-CROWN backend: CROWN with lower slopes optimised per specification row (Adam, float32),
re-certified in float64 with sound rounding and never looser than CROWN."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from certify.bounding import BoundOptions, verify_with_bounds
from certify.budget import Budget
from certify.engine.alpha import AlphaOptions, alpha_crown_lower
from certify.models import Model
from certify.results import Guarantee, Result
from certify.spec import Property, Spec


@dataclass(frozen=True)
class AlphaCROWNOptions(BoundOptions):
    """``alpha``: iterations and learning rate of the slope optimisation."""

    alpha: AlphaOptions = field(default_factory=AlphaOptions)


def row_bounds(model: Model, spec: Spec, options: AlphaCROWNOptions):
    C, d, _ = spec.matrix()
    return alpha_crown_lower(model.graph, spec.input, C, d, options.alpha, device=options.device)


class AlphaCROWN:
    name: ClassVar[str] = "alpha-crown"
    description: ClassVar[str] = "CROWN with optimised relaxation slopes, re-certified in float64 (sound, incomplete)"
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type] = AlphaCROWNOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        return verify_with_bounds(self.name, row_bounds, model, prop, options or AlphaCROWNOptions(), budget)
