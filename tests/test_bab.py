"""Branch-and-bound against the exact MILP oracle on small ReLU networks, in both split modes (input
splitting for few inputs, ReLU splitting with beta-CROWN constraints for more): it proves every property
that holds (threshold below the exact minimum) and falsifies, with a replayed counterexample, every one
that does not (threshold above it)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from certify import api
from certify.models import from_module
from certify.results import Verdict
from certify.sets import Box
from certify.spec import Clause, Property, Spec
from oracles.milp import exact_min


def _net(rng: np.random.Generator, n_in: int, width: int = 12):
    torch.manual_seed(int(rng.integers(1 << 30)))
    net = torch.nn.Sequential(torch.nn.Linear(n_in, width), torch.nn.ReLU(), torch.nn.Linear(width, 10),
                              torch.nn.ReLU(), torch.nn.Linear(10, 3)).eval()
    layers = []
    for m in net:
        if isinstance(m, torch.nn.Linear):
            layers.append(("dense", m.weight.detach().double().numpy(), m.bias.detach().double().numpy()))
        else:
            layers.append(("relu",))
    return net, layers


def _check_against_milp(seed: int, n_in: int, width: int, deltas, radius: tuple[float, float]):
    rng = np.random.default_rng(seed)
    net, layers = _net(rng, n_in, width)
    model = from_module(net, (n_in,))
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(*radius, n_in)
    c = rng.standard_normal(3)
    # the layer list is float64 copies of the float32 weights: the same network as the graph
    minimum = exact_min(layers, (n_in,), lo, hi, c)
    box = Box(torch.tensor(lo)[None], torch.tensor(hi)[None])
    for delta in deltas:
        expect = Verdict.PROVED if delta < 0 else Verdict.FALSIFIED
        # unsafe: c.y <= minimum + delta  <=>  -(c.y) >= ... written as C y <= d with C = c
        clause = Clause(torch.tensor(c)[None, None], torch.tensor([[minimum + delta]]))
        prop = Property(f"seed{seed}", (Spec(box, (clause,)),))
        result = api.verify(model, prop, "bab", timeout=60, attack=False)
        assert result.verdict is expect, (seed, delta, result.verdict, result.reason, minimum)
        assert result.method == "bab", result.method
        if expect is Verdict.FALSIFIED:
            x = torch.tensor(result.counterexample.x)
            y = net(x.float()[None]).double()[0]
            assert float(torch.tensor(c) @ y) <= minimum + delta + 1e-5
            assert bool(((x >= box.lower[0]) & (x <= box.upper[0])).all())
        else:
            assert result.stats["domains"] >= 1


@pytest.mark.parametrize("seed", range(10))
def test_input_split_agrees_with_exact_milp(seed):
    _check_against_milp(seed, int(np.random.default_rng(seed).integers(2, 5)), 12, (-0.05, 0.05), (0.3, 1.5))


@pytest.mark.parametrize("seed", range(10))
def test_relu_split_agrees_with_exact_milp(seed):
    """24 inputs (above input splitting's limit): ReLU splitting, close to the exact minimum on both sides."""
    _check_against_milp(100 + seed, 24, 16, (-0.02, 0.02), (0.2, 0.6))


def test_bab_reports_unsupported_for_high_dimensional_non_relu_networks():
    net = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3)).eval()
    model = from_module(net, (64,))
    x = torch.zeros(1, 64, dtype=torch.float64)
    prop = Property("wide", (Spec(Box(x, x + 1), (Clause(torch.ones(1, 1, 3, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)),)),))
    result = api.verify(model, prop, "bab", timeout=5)
    assert result.verdict is Verdict.UNKNOWN and "unsupported" in result.reason
    assert "sigmoid" in result.reason and "64" in result.reason
