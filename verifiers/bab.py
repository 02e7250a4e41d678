"""Complete backend for low-dimensional inputs: branch-and-bound by input splitting over sound CROWN
(``certify.engine.bab``), after an optional PGD attack. Proved when every domain is certified;
falsified only with a counterexample replayed on the reference runtime; otherwise unknown (timeout or
memory cap). ReLU splitting for high-dimensional inputs is not implemented yet: such properties are
reported as unsupported."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from certify import replay
from certify.bounding import BoundOptions
from certify.budget import Budget
from certify.engine.bab import InputSplitOptions, input_split
from certify.engine.crown import crown_lower, sound_crown_lower
from certify.engine.fp import FAST
from certify.models import Model
from certify.results import INCONCLUSIVE, TIMEOUT, Guarantee, Result, Verdict
from certify.sets import Box, LpBall
from certify.spec import Property, Spec, clause_max
from verifiers.pgd import falsify


@dataclass(frozen=True)
class BaBOptions(BoundOptions):
    """``split``: batch size and memory cap of the search; ``max_inputs``: input splitting is used only up
    to this many input dimensions."""

    split: InputSplitOptions = field(default_factory=InputSplitOptions)
    max_inputs: int = 16


def _decide(model: Model, spec: Spec, options: BaBOptions, budget: Budget, index: int):
    spec = spec.reshape_input(model.input_shape)
    box = spec.input.bounds()
    C, d, clause_of_row = spec.matrix()

    fast_graph = model.graph.to(device=options.device, dtype=torch.float32)
    K = len(spec.unsafe)

    def bound(domain: Box, C_, d_):
        """Screen with fast float32 CROWN; certify with sound float64 CROWN only the domains the fast
        bound closes (the search trusts a positive row only where it closes its domain soundly)."""
        coefficients: dict = {}
        dev = options.device
        rows = crown_lower(fast_graph, domain.to(device=dev, dtype=torch.float32), C_.to(dev, torch.float32),
                           d_.to(dev, torch.float32), FAST, coefficients=coefficients).double().cpu()
        closing = (clause_max(rows, clause_of_row, K) > 0).all(1)
        rows = rows.clamp(max=0.0)  # nothing uncertified may look proved
        if bool(closing.any()):
            idx = closing.nonzero()[:, 0]
            rows[idx] = sound_crown_lower(model.graph, domain[idx], C_[idx], d_[idx], device=dev).cpu()
        return rows, coefficients["input"].double().cpu()

    def try_point(points: torch.Tensor):
        with torch.no_grad():
            margins = spec.clause_margins(model.graph.forward(points).unsqueeze(1))[:, 0].min(1).values
        for i in torch.argsort(margins)[:8]:
            if float(margins[i]) > 1e-6 * (1 + float(d.abs().max())):
                break
            cex = replay.check(model, spec, points[i], spec_index=index)
            if cex is not None:
                return cex
        return None

    return input_split(box, C, d, clause_of_row, bound, try_point, budget, options.split)


class InputBaB:
    name: ClassVar[str] = "bab"
    description: ClassVar[str] = "branch-and-bound by input splitting over sound CROWN (complete for small input boxes)"
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type] = BaBOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        limit = BaBOptions().max_inputs
        for spec in prop.specs:
            if isinstance(spec.input, LpBall) and spec.input.p != math.inf:
                return f"input splitting needs a box input set, not an L{spec.input.p:g} ball"
        if prop.n_inputs > limit:
            return f"input splitting is for at most {limit} inputs (this property has {prop.n_inputs}); ReLU splitting is not implemented yet"
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        options = options or BaBOptions()
        t0 = time.perf_counter()
        opts = asdict(options)
        if options.attack:
            cex = falsify(model, prop, options.attack_options, budget.sub(0.2, cap=5.0))
            if cex is not None:
                return Result(Verdict.FALSIFIED, "pgd", time.perf_counter() - t0, counterexample=cex,
                              property=prop.name, options=opts)
        domains = 0
        for index, spec in enumerate(prop.specs):
            outcome = _decide(model, spec, options, budget, index)
            domains += outcome.stats.get("domains", 0)
            stats = {"domains": domains}
            if outcome.counterexample is not None:
                return Result(Verdict.FALSIFIED, self.name, time.perf_counter() - t0, counterexample=outcome.counterexample,
                              property=prop.name, options=opts, stats=stats)
            if not outcome.proved:
                reason = TIMEOUT if outcome.reason == "timeout" else f"{INCONCLUSIVE}: {outcome.reason}"
                return Result(Verdict.UNKNOWN, self.name, time.perf_counter() - t0, reason=reason,
                              property=prop.name, options=opts, stats=stats)
        return Result(Verdict.PROVED, self.name, time.perf_counter() - t0, guarantee=Guarantee.SOUND,
                      property=prop.name, options=opts, stats={"domains": domains})
