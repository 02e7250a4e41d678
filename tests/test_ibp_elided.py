"""The ibp backend's elided margins against ground truth: on random ReLU networks and boxes, every row bound
is below the exact minimum of ``c . f`` (MILP oracle, independent of the engine), and never looser than the
output-box bound; on a network whose last layer cancels, elision is what proves the property."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certify.bounding import BoundOptions
from certify.budget import Budget
from certify.engine import certify_margin, sound_interval_bounds
from certify.models import from_module
from certify.sets import Box
from certify.spec import Clause, Spec
from oracles.milp import exact_min
from verifiers.ibp import affine_tail, row_bounds


def _instance(seed: int):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_in = int(rng.integers(2, 6))
    net = torch.nn.Sequential(torch.nn.Linear(n_in, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6), torch.nn.ReLU(),
                              torch.nn.Linear(6, 4)).eval()
    layers = [("dense", m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
              if isinstance(m, torch.nn.Linear) else ("relu",) for m in net]
    lo = rng.uniform(-1, 0.5, n_in)
    hi = lo + rng.uniform(0.05, 0.6, n_in)
    C = rng.standard_normal((3, 4))
    return net, layers, lo, hi, C


@pytest.mark.parametrize("seed", range(25))
def test_elided_bounds_are_below_the_exact_minimum_and_no_looser_than_the_box(seed):
    net, layers, lo, hi, C = _instance(seed)
    model = from_module(net, (lo.size,))
    box = Box(torch.tensor(lo)[None], torch.tensor(hi)[None])
    clauses = tuple(Clause(torch.tensor(c)[None, None], torch.zeros(1, 1, dtype=torch.float64)) for c in C)
    spec = Spec(box, clauses)
    bounds = row_bounds(model, spec, BoundOptions(attack=False), Budget())[0]
    naive = certify_margin(*spec.matrix()[:2], sound_interval_bounds(model.graph, box))[0]
    for r, c in enumerate(C):
        exact = exact_min(layers, (lo.size,), lo, hi, c)
        assert bounds[r] <= exact + 1e-9 * (1 + abs(exact)), (seed, r, float(bounds[r]), exact)
        assert bounds[r] >= naive[r]


def test_elision_proves_what_the_output_box_cannot():
    """y0 - y1 with two identical logits: the output boxes overlap, the difference is exactly 1."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).eval()
    with torch.no_grad():
        net[2].weight[0] = 10 * net[2].weight[0]  # wide logit boxes
        net[2].weight[1] = net[2].weight[0]
        net[2].bias[0], net[2].bias[1] = 1.0, 0.0
    model = from_module(net, (3,))
    assert affine_tail(model.graph) is not None
    box = Box(torch.full((1, 3), -1.0, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    C = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    spec = Spec(box, (Clause(C, torch.zeros(1, 1, dtype=torch.float64)),))
    bound = float(row_bounds(model, spec, BoundOptions(attack=False), Budget())[0, 0])
    naive = float(certify_margin(C, torch.zeros(1, 1, dtype=torch.float64), sound_interval_bounds(model.graph, box))[0, 0])
    assert naive < 0 < bound <= 1.0
    assert bound > 1.0 - 1e-5  # the tail's only error: float rounding of one subtraction per weight
