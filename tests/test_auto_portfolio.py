"""``auto``'s portfolio around branch-and-bound: the exact backend (MILP) before input splitting on more than
``INPUT_SPLIT_EASY`` inputs, after a search that stopped undecided with time left, never on networks it
cannot encode; every answer checked against the exact minimum of an independent MILP oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certify import api
from certify.models import from_module
from certify.results import Verdict
from certify.sets import Box
from certify.spec import Clause, Property, Spec
from oracles.milp import exact_min


def _instance(seed: int, n_in: int, width: int, radius: tuple[float, float], act=torch.nn.ReLU):
    """A random network, input box and output direction ``c``; the exact minimum of ``c . f`` over the box
    (MILP oracle) when the network is ReLU, else None."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(int(rng.integers(1 << 30)))
    net = torch.nn.Sequential(torch.nn.Linear(n_in, width), act(), torch.nn.Linear(width, 10), act(),
                              torch.nn.Linear(10, 3)).eval()
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(*radius, n_in)
    c = rng.standard_normal(3)
    minimum = None
    if act is torch.nn.ReLU:
        layers = [("dense", m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
                  if isinstance(m, torch.nn.Linear) else ("relu",) for m in net]
        minimum = exact_min(layers, (n_in,), lo, hi, c)
    return net, from_module(net, (n_in,)), Box(torch.tensor(lo)[None], torch.tensor(hi)[None]), c, minimum


def _prop(box: Box, c, threshold: float) -> Property:
    """Unsafe: ``c . f(x) <= threshold``."""
    return Property("p", (Spec(box, (Clause(torch.tensor(c)[None, None], torch.tensor([[threshold]])),)),))


def _names(result) -> list[str]:
    return [name for name, _, _ in result.steps]


def _check(net, box, c, threshold, result, expect):
    assert result.verdict is expect, (result.verdict, result.reason, result.steps)
    if expect is Verdict.FALSIFIED:
        x = torch.tensor(result.counterexample.x)
        assert bool(((x >= box.lower[0]) & (x <= box.upper[0])).all())
        with torch.no_grad():
            assert float(torch.tensor(c) @ net(x.float()[None]).double()[0]) <= threshold + 1e-5


def _decided_both_ways(seed: int, n_in: int, width: int, radius: tuple[float, float]):
    """``auto`` just above and just below the exact minimum (proved, falsified), each answer checked against
    it; yields ``(result, expected verdict)``."""
    net, model, box, c, minimum = _instance(seed, n_in, width, radius)
    for delta, expect in ((-1e-3, Verdict.PROVED), (1e-3, Verdict.FALSIFIED)):
        result = api.verify(model, _prop(box, c, minimum + delta), timeout=60, attack=False)
        _check(net, box, c, minimum + delta, result, expect)
        yield result, expect


@pytest.mark.parametrize("seed", range(3))
def test_exact_backend_runs_before_input_splitting_above_eight_inputs(seed):
    for result, expect in _decided_both_ways(seed, 12, 16, (0.5, 1.0)):
        names = _names(result)
        if expect is Verdict.FALSIFIED:  # no bound falsifies: the MILP's point, replayed
            assert result.method == "auto/milp" and "bab" not in names, result.steps
        if "bab" in names:
            assert "milp" in names and names.index("milp") < names.index("bab"), result.steps


@pytest.mark.parametrize("seed", range(3))
def test_input_splitting_stays_alone_up_to_eight_inputs(seed):
    for result, _ in _decided_both_ways(seed, 3, 12, (0.8, 1.5)):
        assert "milp" not in _names(result), result.steps


def test_a_search_that_stops_undecided_is_handed_to_the_exact_backend():
    """Branch-and-bound under a memory cap of a quarter KiB stops with time left (the instance of
    test_bab's memory-cap test); the MILP then proves the property within the same budget."""
    net, model, box, c, minimum = _instance(7, 3, 12, (0.8, 1.5))
    threshold = minimum - 2e-3
    result = api.verify(model, _prop(box, c, threshold), timeout=60, attack=False, memory_mb=0.25 / 1024)
    _check(net, box, c, threshold, result, Verdict.PROVED)
    names = _names(result)
    assert names[-2:] == ["bab", "milp"] and result.method == "auto/milp", result.steps
    bab_step = result.steps[-2]
    assert bab_step[2] == "unknown"


def test_networks_the_exact_backend_cannot_encode_keep_input_splitting():
    net, model, box, c, _ = _instance(1, 12, 8, (0.2, 0.4), act=torch.nn.Tanh)
    with torch.no_grad():
        centre = float(torch.tensor(c) @ net(((box.lower + box.upper) / 2).float()).double()[0])
    result = api.verify(model, _prop(box, c, centre + 1.0), timeout=30, attack=False)
    assert result.verdict is Verdict.FALSIFIED, (result.verdict, result.reason, result.steps)
    assert "milp" not in _names(result) and result.method == "auto/bab", result.steps


def test_alpha_slopes_are_optimised_once_along_the_chain(monkeypatch):
    """alpha-CROWN's root slopes are branch-and-bound's (``memo.shared``): one optimisation per spec in
    ``auto``; the answer still agrees with the exact minimum."""
    from certify.engine import alpha

    calls = []
    real = alpha._optimise_alphas

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(alpha, "_optimise_alphas", counting)
    net, model, box, c, minimum = _instance(2, 20, 16, (0.4, 0.6))  # 20 inputs: ReLU splitting
    threshold = minimum - 1e-3
    result = api.verify(model, _prop(box, c, threshold), timeout=60, attack=False)
    _check(net, box, c, threshold, result, Verdict.PROVED)
    names = _names(result)
    assert "alpha-crown" in names and "bab" in names, result.steps
    assert len(calls) == 1, (len(calls), result.steps)
    calls.clear()  # outside auto nothing is shared
    api.verify(model, _prop(box, c, threshold), "alpha-crown", timeout=60, attack=False)
    api.verify(model, _prop(box, c, threshold), "alpha-crown", timeout=60, attack=False)
    assert len(calls) == 2


def test_sound_boxes_are_computed_once_along_the_chain(monkeypatch):
    """crown -> alpha-crown -> bab in ``auto``: CROWN's sound boxes once (the crown step's are alpha-CROWN's),
    the boxes with optimised slopes once (alpha-CROWN's are branch-and-bound's root); without the chain each
    step computes its own. The answer still agrees with the exact minimum."""
    from certify.engine import crown

    calls = []
    real = crown.compute_boxes

    def counting(graph, input_set, rnd, *args, **kwargs):
        # the bound passes' boxes of the whole network (not milp's exact-arithmetic ones, nor ibp's elided tail's)
        if rnd.runtime is not None and kwargs.get("refine", True) and len(graph.nodes) == len(model.graph.nodes):
            calls.append(kwargs.get("alphas") is not None)
        return real(graph, input_set, rnd, *args, **kwargs)

    net, model, box, c, minimum = _instance(2, 20, 16, (0.4, 0.6))  # 20 inputs: ReLU splitting
    monkeypatch.setattr(crown, "compute_boxes", counting)
    threshold = minimum - 1e-3
    result = api.verify(model, _prop(box, c, threshold), timeout=60, attack=False)
    _check(net, box, c, threshold, result, Verdict.PROVED)
    assert {"crown", "alpha-crown", "bab"} <= set(_names(result)), result.steps
    assert sorted(calls) == [False, True], calls
    calls.clear()
    for method in ("crown", "alpha-crown", "bab"):
        api.verify(model, _prop(box, c, threshold), method, timeout=60, attack=False)
    assert calls.count(True) == 2 and calls.count(False) >= 3, calls


def test_shared_slopes_reuse_only_identical_calls():
    from certify.engine.alpha import optimise_alphas
    from certify.engine.memo import shared

    _, model, box, c, _ = _instance(3, 6, 12, (0.5, 1.0))
    C = torch.tensor(c)[None, None]
    d = torch.zeros(1, 1, dtype=torch.float64)
    with shared():
        first = optimise_alphas(model.graph, box, C, d)
        assert optimise_alphas(model.graph, Box(box.lower.clone(), box.upper.clone()), C.clone(), d) is first
        assert optimise_alphas(model.graph, box, -C, d) is not first
        assert optimise_alphas(model.graph, Box(box.lower, box.upper + 1e-9), C, d) is not first
    assert optimise_alphas(model.graph, box, C, d) is not first


def test_chain_memo_keeps_only_the_most_recent_results():
    """Branch-and-bound's batches go through the memoised functions too: the memo must not grow with the
    search. Recent results are recalled, old ones computed again, never more than ``KEEP`` held."""
    from certify.engine import memo

    graph, computed = object(), []

    def value(i: int):
        return memo.recall("k", graph, (torch.tensor([float(i)]),), lambda: computed.append(i) or i)

    with memo.shared():
        for i in range(40):
            assert value(i) == i
        assert len(memo._MEMO.get()) == memo.KEEP
        assert value(39) == 39 and value(40 - memo.KEEP) == 40 - memo.KEEP  # held: not computed again
        assert computed == list(range(40))
        assert value(0) == 0 and computed[-1] == 0  # evicted: computed again
