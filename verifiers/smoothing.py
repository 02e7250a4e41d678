"""Randomized-smoothing backend: a *probabilistic* certificate about the smoothed classifier g.

A local-robustness property ("no other class scores at least as high as class ``l`` on the input
set") is answered by certifying ``g`` at the set's centre (``certify.smoothing``) and comparing its
radius with the L2 radius of a ball that contains the set: ``eps`` for an L2 or L1 ball,
``eps * sqrt(d)`` for an L-inf ball, the half-diagonal for a box (clipping only shrinks the set).
*Proved* then means: with probability >= 1 - alpha over the noise, ``g`` predicts ``l`` on the whole
set. It never says anything about the base network, so it is never a VNN-COMP ``unsat``; and it
never falsifies (a misclassification by ``g`` is not a counterexample of ``f``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from certify.budget import Budget
from certify.models import Model
from certify.results import INCONCLUSIVE, TIMEOUT, Guarantee, Result, Verdict
from certify.sets import Box, LpBall
from certify.smoothing import Smoothed, example_generator
from certify.spec import Property, Spec


@dataclass(frozen=True)
class SmoothingOptions:
    """Cohen et al.'s defaults: ``n0`` selection and ``n`` estimation samples, confidence ``1 - alpha``;
    ``sigma`` is the Gaussian noise level (use the one the model was trained with); ``batch`` noisy
    copies per forward pass on ``device``; ``seed`` makes the samples reproducible."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int = 10_000
    seed: int = 0
    device: str = "cpu"


def robustness_label(spec: Spec) -> int | None:
    """The class ``l`` if ``spec`` (one instance) is exactly "some other class ``j`` has ``y_l - y_j <= 0``"
    for every ``j != l`` (one single-row clause each), else None."""
    if spec.batch_size != 1 or len(spec.unsafe) != spec.n_outputs - 1:
        return None
    label, others = None, set()
    for clause in spec.unsafe:
        if clause.rows != 1 or float(clause.d[0, 0]) != 0.0:
            return None
        row = clause.C[0, 0]
        pos, neg = torch.nonzero(row > 0).flatten(), torch.nonzero(row < 0).flatten()
        if len(pos) != 1 or len(neg) != 1 or float(row[pos[0]]) != -float(row[neg[0]]):
            return None
        if label is None:
            label = int(pos[0])
        if int(pos[0]) != label:
            return None
        others.add(int(neg[0]))
    return label if others == set(range(spec.n_outputs)) - {label} else None


def enclosing_l2(spec: Spec) -> tuple[torch.Tensor, float] | None:
    """A centre and an L2 radius whose ball contains the spec's input set, or None."""
    s = spec.input
    if isinstance(s, LpBall):
        eps, d = float(s.eps[0]), math.prod(s.shape)
        return s.center[0], {2.0: eps, 1.0: eps, math.inf: eps * math.sqrt(d)}[s.p]
    if isinstance(s, Box):
        half = (s.upper[0] - s.lower[0]) / 2
        return s.lower[0] + half, float(torch.linalg.vector_norm(half.double()))
    return None


class Smoothing:
    name: ClassVar[str] = "smoothing"
    description: ClassVar[str] = ("randomized smoothing (Cohen et al. 2019): probabilistic L2 certificate about the "
                                  "smoothed classifier, not the base network")
    guarantee: ClassVar[Guarantee] = Guarantee.PROBABILISTIC
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("torch", "scipy")
    Options: ClassVar[type] = SmoothingOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        if len(prop.specs) != 1:
            return "randomized smoothing certifies one input region, the property has several"
        spec = prop.specs[0]
        if robustness_label(spec) is None:
            return ("randomized smoothing certifies local robustness only (unsafe: some other class scores at "
                    "least as high as the label); use a sound backend such as crown or bab")
        if enclosing_l2(spec) is None:
            return f"input set {type(spec.input).__name__} has no enclosing L2 ball"
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        o = options or SmoothingOptions()
        t0 = time.perf_counter()
        spec = prop.specs[0]
        label = robustness_label(spec)
        center, need = enclosing_l2(spec)
        g = Smoothed.of_model(model, o.sigma, o.device)
        gen = example_generator(o.seed, 0, o.device)
        common = dict(property=prop.name, options=asdict(o))
        try:
            cert = g.certify(center, o.n0, o.n, o.alpha, o.batch, gen, deadline=budget.expired)
        except TimeoutError:
            return Result(Verdict.UNKNOWN, self.name, time.perf_counter() - t0, reason=TIMEOUT, **common)
        stats = {"radius": cert.radius, "required_radius": need, "p_lower": cert.p_lower, "top_count": cert.top_count,
                 "selected": cert.selected, "n0": o.n0, "n": o.n, "alpha": o.alpha, "sigma": o.sigma}
        dt = time.perf_counter() - t0
        if cert.abstained:
            reason = (f"{INCONCLUSIVE}: smoothed classifier abstains (Clopper-Pearson lower bound "
                      f"{cert.p_lower:.4f} <= 1/2 for class {cert.selected})")
        elif cert.label != label:
            reason = f"{INCONCLUSIVE}: smoothed classifier predicts class {cert.label}, not {label}"
        elif not cert.radius > need:
            reason = f"{INCONCLUSIVE}: certified L2 radius {cert.radius:.4g} <= {need:.4g} needed for the input set"
        else:
            return Result(Verdict.PROVED, self.name, dt, guarantee=Guarantee.PROBABILISTIC, claim=cert.claim(),
                          stats=stats, **common)
        return Result(Verdict.UNKNOWN, self.name, dt, reason=reason, stats=stats, **common)
