"""The exact backends (``smt``: z3, ``milp``: HiGHS) against each other, against dense sampling, against
the independent MILP oracle of ``tests/oracles/milp.py`` and on the ops of the exact encodings.

Ground truth here never comes from the code under test alone: the hypothesis test requires the two
backends (different solvers, z3 exact over the rationals) to agree, every counterexample to replay
on the eager PyTorch module, and no sampled input of a *proved* instance to violate the property.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certify import api
from certify.models import from_module
from certify.results import Verdict
from certify.sets import Box, LpBall
from certify.spec import Clause, Property, Spec

METHODS = ("milp", "smt")


def _mlp(seed: int, n_in: int, widths: list[int], n_out: int, leaky: bool) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers, prev = [], n_in
    for w in widths:
        layers += [torch.nn.Linear(prev, w), torch.nn.LeakyReLU(0.1) if leaky else torch.nn.ReLU()]
        prev = w
    layers.append(torch.nn.Linear(prev, n_out))
    return torch.nn.Sequential(*layers).eval()


def _sampled_outputs(model, spec: Spec, n: int = 2000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = spec.input.sample(n, generator=g, corners=False)[:, 0]
    corners = spec.input.sample(n // 4, generator=g, corners=True)[:, 0]
    xs = torch.cat([x, corners, spec.input.center]).float().numpy()
    return torch.as_tensor(np.asarray(model.reference(xs.reshape(-1, *model.input_shape))), dtype=torch.float64)


def _check_answers(model, prop: Property, results: dict) -> None:
    """Both agree where both are definite; falsified replays on the eager module; proved survives sampling."""
    definite = {m: r.verdict for m, r in results.items() if r.verdict is not Verdict.UNKNOWN}
    assert len(set(definite.values())) <= 1, {m: (r.verdict, r.reason) for m, r in results.items()}
    for m, r in results.items():
        if r.verdict is Verdict.FALSIFIED:
            cex = r.counterexample
            spec = prop.specs[cex.spec_index]
            x = torch.tensor(cex.x, dtype=torch.float64).reshape(1, *spec.input.shape)
            assert bool(spec.input.contains(x)[0]), m
            y = torch.as_tensor(np.asarray(model.reference(x.float().numpy())), dtype=torch.float64)
            assert bool(spec.violated_by(y.reshape(1, -1))[0]), m
        if r.verdict is Verdict.PROVED:
            for spec in prop.specs:
                y = _sampled_outputs(model, spec)
                assert not bool(spec.violated_by(y.unsqueeze(1)).any()), f"{m} proved a sampled violation"
        if r.verdict is Verdict.UNKNOWN:
            assert "timeout" not in r.reason, r.reason


@st.composite
def _instances(draw):
    seed = draw(st.integers(0, 2**30))
    n_in = draw(st.integers(2, 4))
    widths = draw(st.lists(st.integers(2, 6), min_size=1, max_size=2))
    n_out = draw(st.integers(2, 4))
    leaky = draw(st.booleans())
    kind = draw(st.sampled_from(["box", "linf", "l1"]))
    n_clauses = draw(st.integers(1, 2))
    rows = draw(st.integers(1, 2))
    offset = draw(st.sampled_from([-0.3, -0.05, -0.01, 0.01, 0.1]))
    return seed, n_in, widths, n_out, leaky, kind, n_clauses, rows, offset


def _spec(rng: np.random.Generator, model, n_in: int, n_out: int, kind: str, n_clauses: int, rows: int,
          offset: float) -> Spec:
    c = torch.tensor(rng.uniform(-1, 1, (1, n_in)))
    r = float(rng.uniform(0.1, 0.8))
    if kind == "box":
        lo = c - torch.tensor(rng.uniform(0.05, r, (1, n_in)))
        hi = c + torch.tensor(rng.uniform(0.05, r, (1, n_in)))
        input_set = Box(lo, hi)
    else:
        input_set = LpBall(c, torch.tensor([r], dtype=torch.float64), math.inf if kind == "linf" else 1.0)
    probe = Spec(input_set, (Clause(torch.zeros(1, 1, n_out, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)),))
    y = _sampled_outputs(model, probe, 400)
    clauses = []
    for _ in range(n_clauses):
        C = torch.tensor(rng.standard_normal((1, rows, n_out)))
        values = torch.einsum("rn,sn->sr", C[0], y)  # [samples, rows]
        # threshold near the sampled minimum of the clause's margin: answers of both kinds
        d = values.amin(0) + offset * (1 + values.std(0))
        clauses.append(Clause(C, d[None]))
    return Spec(input_set, tuple(clauses))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(_instances())
def test_smt_and_milp_agree_replay_and_survive_sampling(case):
    seed, n_in, widths, n_out, leaky, kind, n_clauses, rows, offset = case
    rng = np.random.default_rng(seed)
    net = _mlp(seed, n_in, widths, n_out, leaky)
    model = from_module(net, (n_in,))
    prop = Property("h", (_spec(rng, model, n_in, n_out, kind, n_clauses, rows, offset),))
    results = {m: api.verify(model, prop, m, timeout=60, attack=False) for m in METHODS}
    _check_answers(model, prop, results)


def test_l2_ball_is_exact_in_smt_and_refused_by_milp():
    net = _mlp(3, 2, [4], 2, False)
    model = from_module(net, (2,))
    c = torch.tensor([[0.2, -0.1]], dtype=torch.float64)
    ball = LpBall(c, torch.tensor([0.3], dtype=torch.float64), 2.0)
    y = _sampled_outputs(model, Spec(ball, (Clause(torch.zeros(1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)),)))
    C = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    low = float((y @ C[0, 0]).min())
    for offset, expect in ((-0.05, None), (0.02, Verdict.FALSIFIED)):
        prop = Property("l2", (Spec(ball, (Clause(C, torch.tensor([[low + offset]], dtype=torch.float64)),)),))
        r = api.verify(model, prop, "smt", timeout=60, attack=False)
        if expect is not None:
            assert r.verdict is expect, r.reason
        _check_answers(model, prop, {"smt": r})
    r = api.verify(model, prop, "milp", timeout=5)
    assert r.verdict is Verdict.UNKNOWN and "L2" in r.reason and "smt" in r.reason


class _Residual(torch.nn.Module):
    """Conv (stride 2, padding 1) + BatchNorm + ReLU, a residual Add, max- and average-pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = torch.nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(2)
        self.conv2 = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(1)
        self.fc = torch.nn.Linear(2, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.nn.functional.leaky_relu(self.conv2(h), 0.2) + h
        h = self.avg(self.pool(h))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("offset", [-0.05, 0.0, 0.05])
def test_every_op_of_the_exact_encodings_against_the_oracle(exact_margin, offset):
    """Conv with stride and padding, folded BatchNorm, ReLU, LeakyReLU, residual Add, MaxPool, AvgPool,
    flatten and dense: the exact margin (MILP, confirmed by z3 without engine bounds) matches sampling
    (no sample below it, the best sample close to it), and both backends answer by its sign."""
    net = _Residual().eval()
    model = from_module(net, (1, 4, 4))
    x = torch.rand(1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    unit = Box(torch.zeros(1, 16, dtype=torch.float64), torch.ones(1, 16, dtype=torch.float64))
    ball = LpBall(x, torch.tensor([0.1], dtype=torch.float64), math.inf, clip=unit)
    C = torch.tensor([[[1.0, -1.0, 0.0]]], dtype=torch.float64)
    probe = Spec(ball, (Clause(C, torch.zeros(1, 1, dtype=torch.float64)),))
    y = _sampled_outputs(model, probe)
    sampled = float((y @ C[0, 0]).min())
    true_min = exact_margin(model, probe)  # d = 0: the margin is min C y
    assert true_min <= sampled + 1e-5
    assert sampled - true_min <= 0.5 * (1 + abs(true_min))
    d = true_min + offset
    prop = Property("res", (Spec(ball, (Clause(C, torch.tensor([[d]], dtype=torch.float64)),)),))
    results = {m: api.verify(model, prop, m, timeout=120, attack=False) for m in METHODS}
    _check_answers(model, prop, results)
    if offset < 0:
        assert all(r.verdict is Verdict.PROVED for r in results.values()), {m: r.reason for m, r in results.items()}
    if offset > 0:
        assert all(r.verdict is Verdict.FALSIFIED for r in results.values()), {m: r.reason for m, r in results.items()}


@pytest.mark.parametrize("seed", range(5))
def test_oracle_matches_the_independent_numpy_milp(exact_margin, seed):
    """``exact_margin`` (certify's lowering, HiGHS, z3) against ``oracles/milp.py`` (its own lowering and
    numpy interval bounds) on the same network and box."""
    from oracles.milp import exact_min

    rng = np.random.default_rng(seed)
    net = _mlp(seed, 3, [6, 5], 3, False)
    layers = [("dense", m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
              if isinstance(m, torch.nn.Linear) else ("relu",) for m in net]
    model = from_module(net, (3,))
    lo = rng.uniform(-1, 0, 3)
    hi = lo + rng.uniform(0.2, 1.5, 3)
    c = rng.standard_normal(3)
    spec = Spec(Box(torch.tensor(lo)[None], torch.tensor(hi)[None]),
                (Clause(torch.tensor(c)[None, None], torch.zeros(1, 1, dtype=torch.float64)),))
    assert abs(exact_margin(model, spec) - exact_min(layers, (3,), lo, hi, c)) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_non_piecewise_linear_ops_get_a_clear_answer(method):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()
    model = from_module(net, (2,))
    x = torch.zeros(1, 2, dtype=torch.float64)
    prop = Property("s", (Spec(Box(x, x + 1), (Clause(torch.ones(1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)),)),))
    r = api.verify(model, prop, method, timeout=5)
    assert r.verdict is Verdict.UNKNOWN
    assert "sigmoid" in r.reason and "node" in r.reason and "crown" in r.reason


def test_a_violation_only_within_the_rounding_margin_is_unknown_not_proved():
    """A threshold exactly at the true minimum: reachable in exact arithmetic (a tie), so never proved."""
    net = _mlp(11, 2, [3], 2, False)
    model = from_module(net, (2,))
    x = torch.zeros(1, 2, dtype=torch.float64)
    box = Box(x - 0.5, x + 0.5)
    C = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    from oracles.exact import exact_margin

    m = exact_margin(model, Spec(box, (Clause(C, torch.zeros(1, 1, dtype=torch.float64)),)))
    prop = Property("tie", (Spec(box, (Clause(C, torch.tensor([[m]], dtype=torch.float64)),)),))
    for method in METHODS:
        r = api.verify(model, prop, method, timeout=30, attack=False)
        assert r.verdict is not Verdict.PROVED, method


@pytest.mark.parametrize("family", ["dense", "conv", "batchnorm", "avgpool", "maxpool", "residual"])
def test_independent_oracle_matches_the_pwl_lowering(family):
    """The oracle of ``tests/oracles`` (no certify.pwl) against the MILP on certify's own lowering
    (``pwl.lower``, the previous oracle), on every op family: equal to 1e-6 relative."""
    from oracles.exact import clause_margins
    from oracles.test_oracles import _Model, _clause, family_graph

    from certify.pwl import lower
    from verifiers.milp import MILPSolver

    graph = family_graph(family, 3, 5)
    rng = np.random.default_rng(7)
    lo = rng.uniform(-1.0, 0.0, 3)
    spec = Spec(Box(torch.tensor(lo)[None], torch.tensor(lo + 1.0)[None]), (_clause(rng), _clause(rng, rows=3)))
    model = _Model(graph)
    mine = clause_margins(model, spec, cross_check=False)
    program = lower(graph.to(dtype=torch.float64), spec.input, float_rounding="none")
    milp = MILPSolver(program)
    for value, clause in zip(mine, spec.unsafe):
        A, a = program.output_rows(clause.C[0].double().numpy())
        old, _ = milp.minimum(A, a, clause.d[0].double().numpy())
        assert abs(value - old) <= 1e-6 * (1 + abs(old)), (family, value, old)
