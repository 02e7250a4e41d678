"""The one place that chains backends: ``verify(model, prop, method)``.

``method="auto"`` runs ``AUTO_CHAIN`` in order (the cheap falsifier first, then ever tighter sound
bounds) and stops at the first definite answer; each step's time is kept in ``Result.steps``.

Around branch-and-bound, a portfolio with the exact backend (``EXACT``, a MILP; piecewise-linear networks
only), decided by measurement (benchmarks/RESULTS.md, "auto with the exact backend"):

* *before* it, on half the remaining budget, when branch-and-bound would split inputs and the property has
  more than ``INPUT_SPLIT_EASY`` of them: bisecting one input per branch needs exponentially many domains in
  the input dimension to reach a narrow pocket, where a MILP over a few dozen unstable ReLUs takes a second
  (planted 16-input CNNs: input splitting timed out at 60 s on 5 of 5, the MILP answered each in < 1 s); ACAS
  Xu (5 inputs) is the opposite case and keeps input splitting alone;
* *after* it, on whatever remains, when it stopped undecided before the budget ran out (its memory cap, every
  ReLU split left open) or could not run (e.g. a max-pool network with many inputs).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from . import registry
from .budget import Budget
from .engine.fp import OverflowRisk
from .engine.memo import shared
from .errors import BackendUnavailable, CertifyError
from .graph import SEMANTICS
from .models import Model, check_spec_fits
from .results import TIMEOUT, Result, Verdict
from .selfcheck import check_import
from .spec import Property

AUTO_CHAIN = ("pgd", "ibp", "crown", "alpha-crown", "bab")
#: the exact backend of the portfolio around branch-and-bound (module docstring)
EXACT = "milp"
#: input splitting stays alone up to this many inputs; above, the exact backend runs first
INPUT_SPLIT_EASY = 8
#: the share of the remaining budget the exact backend gets when it runs before branch-and-bound
EXACT_FIRST_SHARE = 0.5


def _options_for(verifier, device: str, attack: bool, chained: bool, memory_mb: float | None = None) -> Any:
    opts = verifier.Options()
    fields = {f.name for f in dataclasses.fields(opts)}
    changes: dict[str, Any] = {}
    if "device" in fields:
        changes["device"] = device
    if "memory_mb" in fields and memory_mb is not None:
        changes["memory_mb"] = float(memory_mb)
    if "attack_options" in fields:
        changes["attack_options"] = dataclasses.replace(opts.attack_options, device=device)
    if "attack" in fields:
        changes["attack"] = attack and not chained  # in a chain the pgd step has already attacked
    return dataclasses.replace(opts, **changes) if changes else opts


def _run(verifier, model: Model, prop: Property, options: Any, budget: Budget) -> Result:
    t0 = time.perf_counter()
    why_not = verifier.supports(model, prop)
    if why_not:
        return Result(Verdict.UNKNOWN, verifier.name, 0.0, reason=f"unsupported: {why_not}", property=prop.name)
    try:
        return verifier.verify(model, prop, options=options, budget=budget)
    except CertifyError:
        raise
    except OverflowRisk as exc:  # the runtime may return inf: nothing can be proved, nothing is wrong
        return Result(Verdict.UNKNOWN, verifier.name, time.perf_counter() - t0,
                      reason=f"inconclusive: {exc}", property=prop.name)
    except Exception as exc:  # a crash inside a backend is an unknown answer that says why
        return Result(Verdict.UNKNOWN, verifier.name, time.perf_counter() - t0,
                      reason=f"backend_error: {type(exc).__name__}: {exc}", property=prop.name)


def verify(model: Model, prop: Property, method: str = "auto", *, timeout: float | None = None,
           device: str = "cpu", attack: bool = True, memory_mb: float | None = None, options: Any = None,
           semantics: str = "runtime") -> Result:
    """Decide ``prop`` on ``model`` with one backend, or the ``auto`` chain. ``memory_mb`` caps the
    memory of backends that store a growing search (branch-and-bound's open domains); None: their default.

    ``semantics``: what *proved* covers. ``"runtime"`` (default): the property holds for the network in
    exact real arithmetic and as its runtime evaluates it in the model's precision (any summation order,
    FMA or not, flush-to-zero or not). ``"real"``: the exact network only. The result records it."""
    if semantics not in SEMANTICS:
        raise CertifyError(f"semantics must be one of {', '.join(SEMANTICS)}, got {semantics!r}")
    check_spec_fits(model, prop.n_inputs, prop.n_outputs, prop.source or prop.name)
    check_import(model, prop)  # before any backend: the graph must reproduce the runtime (ModelError if not)
    result = _verify(dataclasses.replace(model, graph=model.graph.with_semantics(semantics)), prop, method,
                     timeout=timeout, device=device, attack=attack, memory_mb=memory_mb, options=options)
    return dataclasses.replace(result, semantics=semantics)


def _verify(model: Model, prop: Property, method: str, *, timeout: float | None, device: str, attack: bool,
            memory_mb: float | None, options: Any) -> Result:
    check_spec_fits(model, prop.n_inputs, prop.n_outputs, prop.source or prop.name)
    if timeout is not None and not timeout >= 0:  # also rejects NaN
        raise CertifyError(f"timeout must be a non-negative number of seconds, got {timeout}")
    if memory_mb is not None and not memory_mb > 0:
        raise CertifyError(f"memory limit must be a positive number of MiB, got {memory_mb}")
    budget = Budget(math.inf if timeout is None else float(timeout))
    if method != "auto":
        verifier = registry.get(method)
        opts = options if options is not None else _options_for(verifier, device, attack, chained=False,
                                                                   memory_mb=memory_mb)
        return _run(verifier, model, prop, opts, budget)
    t0 = time.perf_counter()
    steps: list[tuple[str, float, str]] = []
    results: list[Result] = []

    def step(verifier, step_budget: Budget) -> Result:
        result = _run(verifier, model, prop, _options_for(verifier, device, attack, chained=True,
                                                          memory_mb=memory_mb), step_budget)
        steps.append((verifier.name, result.time_s, result.verdict.value))
        results.append(result)
        return result

    def done(result: Result) -> bool:
        return result.verdict is not Verdict.UNKNOWN or budget.expired()

    with shared():  # boxes and slopes computed once along the chain (crown -> alpha-crown -> bab)
        last, exact_tried = _chain(model, prop, attack, budget, step, done)
    assert last is not None
    if not done(last) and not exact_tried:
        exact = _exact_backend(model, prop)
        if exact is not None:  # branch-and-bound stopped undecided with time left, or could not run
            last = step(exact, budget)
    reason = last.reason
    bounds = _best_bounds(results)
    if last.verdict is Verdict.UNKNOWN and budget.expired():
        reason = TIMEOUT
    return dataclasses.replace(last, method=f"auto/{last.method}", time_s=time.perf_counter() - t0,
                               steps=tuple(steps), reason=reason, bounds=bounds)


def _chain(model: Model, prop: Property, attack: bool, budget: Budget, step, done) -> tuple[Result | None, bool]:
    """``AUTO_CHAIN`` in order, with the exact backend before input splitting on many inputs (module
    docstring); returns the last answer and whether the exact backend ran."""
    last: Result | None = None
    exact_tried = False
    for name in AUTO_CHAIN:
        if name == "pgd" and not attack:
            continue
        verifier = registry.get(name)
        if last is not None and verifier.supports(model, prop):
            continue  # e.g. input splitting on a high-dimensional property: keep the last answer
        if name == "bab" and prop.n_inputs > INPUT_SPLIT_EASY and prop.n_inputs <= verifier.Options().max_inputs:
            exact = _exact_backend(model, prop)
            if exact is not None:
                exact_tried = True
                last = step(exact, budget.sub(EXACT_FIRST_SHARE))
                if done(last):
                    break
        last = step(verifier, budget)
        if done(last):
            break
    return last, exact_tried


def _exact_backend(model: Model, prop: Property):
    """The exact backend if it is available and takes this network and property, else None."""
    try:
        verifier = registry.get(EXACT)
    except BackendUnavailable:  # scipy missing: the chain goes on without it
        return None
    return None if verifier.supports(model, prop) else verifier


def _best_bounds(results: list[Result]) -> tuple[tuple[float, ...], ...]:
    """Per spec and clause, the largest certified lower bound any step of the chain computed (each is a
    sound lower bound of the same margin, so their maximum is too). A step that stopped early (bounds for
    fewer specs) contributes to the specs it reached."""
    best: list[list[float]] = []
    for r in results:
        for s, spec in enumerate(r.bounds):
            if s == len(best):
                best.append(list(spec))
            elif len(best[s]) == len(spec):
                best[s] = [max(a, b) for a, b in zip(best[s], spec)]
    return tuple(tuple(b) for b in best)
