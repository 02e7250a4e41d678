"""alpha-CROWN backend: CROWN with lower slopes optimised per specification row (Adam, float32),
re-certified in float64 with sound rounding and never looser than CROWN."""
from __future__ import annotations

from dataclasses import dataclass, field

from certify.bounding import BoundOptions, BoundVerifier
from certify.budget import Budget
from certify.engine.alpha import AlphaOptions, alpha_crown_lower
from certify.models import Model
from certify.spec import Spec


@dataclass(frozen=True)
class AlphaCROWNOptions(BoundOptions):
    """``alpha``: iterations and learning rate of the slope optimisation."""

    alpha: AlphaOptions = field(default_factory=AlphaOptions)


def row_bounds(model: Model, spec: Spec, options: AlphaCROWNOptions, budget: Budget):
    C, d, _ = spec.matrix()
    return alpha_crown_lower(model.graph, spec.input, C, d, options.alpha, device=options.device,
                             time_limit=budget.remaining())


class AlphaCROWN(BoundVerifier):
    name = "alpha-crown"
    description = "CROWN with optimised relaxation slopes, re-certified in float64 (sound, incomplete)"
    Options = AlphaCROWNOptions
    row_bounds = staticmethod(row_bounds)
