"""IBP backend: sound interval bounds (float64, outward rounding), optionally after a PGD attack.

A clause is certified unreachable when one of its rows has a certified lower bound
``min (C_j y - d_j) > 0`` over the output box (``fp.certify_margin``); the property is proved when
every clause of every spec is.
"""
from __future__ import annotations

from certify.bounding import BoundOptions, BoundVerifier
from certify.budget import Budget
from certify.engine import certify_margin, sound_interval_bounds
from certify.models import Model
from certify.spec import Spec


def row_bounds(model: Model, spec: Spec, options: BoundOptions, budget: Budget):
    """Certified lower bounds of ``C_r y - d_r`` over the IBP output box, ``[B, R]``."""
    y = sound_interval_bounds(model.graph, spec.input.bounds(), device=options.device)
    C, d, _ = spec.matrix()
    return certify_margin(C.to(y.lower.device), d.to(y.lower.device), y)


class IBP(BoundVerifier):
    name = "ibp"
    description = "interval bound propagation, float64 with outward rounding (sound, incomplete)"
    row_bounds = staticmethod(row_bounds)
