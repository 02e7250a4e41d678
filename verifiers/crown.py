"""CROWN backend: backward linear bound propagation with CROWN intermediate bounds, float64 with
sound rounding (``certify.engine.crown``), optionally after a PGD attack."""
from __future__ import annotations

from certify.bounding import BoundOptions, BoundVerifier
from certify.budget import Budget
from certify.engine.crown import sound_crown_lower
from certify.models import Model
from certify.spec import Spec


def row_bounds(model: Model, spec: Spec, options: BoundOptions, budget: Budget):
    C, d, _ = spec.matrix()
    return sound_crown_lower(model.graph, spec.input, C, d, device=options.device)


class CROWN(BoundVerifier):
    name = "crown"
    description = "CROWN linear bounds, float64 with sound rounding (sound, incomplete)"
    row_bounds = staticmethod(row_bounds)
