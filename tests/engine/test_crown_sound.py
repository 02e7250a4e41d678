"""CROWN and alpha-CROWN against ground truth: sampled outputs (>= 10,000 per case, corners included)
on networks that put every op of the rule table between nonlinear layers, on hypothesis-generated
PyTorch networks imported through ONNX, and the closed form on linear models."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from certify.engine.alpha import AlphaOptions, alpha_crown_lower
from certify.engine.crown import crown_lower, sound_crown_lower
from certify.engine.fp import FAST
from certify.engine.rules import RULES
from certify.graph import Graph, Node
from certify.models import from_module
from certify.sets import Box, LpBall

N = 10_000


def _op_network(op: str, seed: int) -> Graph:
    """x (6 values) -> per op input: linear, relu, reshape -> op -> flatten -> linear -> tanh -> linear (3)."""
    gen = torch.Generator().manual_seed(seed)
    params, shapes = RULES[op].example(gen)
    params = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
    nodes, inputs = [], []
    for i, shape in enumerate(shapes):
        n = math.prod(shape)
        W = torch.randn(n, 6, generator=gen, dtype=torch.float64)
        nodes.append(Node(f"pre{i}", "linear", ("x",), f"p{i}", {"weight": W, "bias": torch.randn(n, generator=gen, dtype=torch.float64)}, (n,)))
        nodes.append(Node(f"act{i}", "relu", (f"p{i}",), f"a{i}", {}, (n,)))
        nodes.append(Node(f"shape{i}", "reshape", (f"a{i}",), f"s{i}", {"shape": shape}, shape))
        inputs.append(f"s{i}")
    probe = RULES[op].forward(params, *[torch.zeros(1, *s, dtype=torch.float64) for s in shapes])
    out_shape = tuple(probe.shape[1:])
    nodes.append(Node("op", op, tuple(inputs), "o", params, out_shape))
    m = math.prod(out_shape)
    nodes.append(Node("flat", "reshape", ("o",), "f", {"shape": (m,)}, (m,)))
    nodes.append(Node("post", "linear", ("f",), "q", {"weight": torch.randn(4, m, generator=gen, dtype=torch.float64) / math.sqrt(m),
                                                     "bias": torch.randn(4, generator=gen, dtype=torch.float64)}, (4,)))
    nodes.append(Node("squash", "tanh", ("q",), "t", {}, (4,)))
    nodes.append(Node("out", "linear", ("t",), "y", {"weight": torch.randn(3, 4, generator=gen, dtype=torch.float64),
                                                    "bias": torch.zeros(3, dtype=torch.float64)}, (3,)))
    return Graph("x", (6,), tuple(nodes), "y", (3,))


def _sets(shape, gen):
    c = torch.randn(1, *shape, generator=gen, dtype=torch.float64)
    r = torch.rand(1, *shape, generator=gen, dtype=torch.float64) * 0.8
    yield "box", Box(c - r, c + r)
    for p in (math.inf, 2.0, 1.0):
        yield f"l{p}", LpBall(c, torch.tensor([0.6], dtype=torch.float64), p)
    clip = Box(c - 0.3, c + 0.5)
    yield "l2-clipped", LpBall(c, torch.tensor([0.6], dtype=torch.float64), 2.0, clip)


def _check(graph: Graph, input_set, with_alpha: bool = True):
    n_out = graph.n_outputs
    eye = torch.eye(n_out, dtype=torch.float64)
    C = torch.cat([eye, -eye]).unsqueeze(0)
    d = torch.zeros(1, 2 * n_out, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([input_set.sample(N // 2, generator=gen)[:, 0], input_set.sample(N // 2, generator=gen, corners=True)[:, 0]])
    y = graph.forward(x)
    vals = torch.cat([y, -y], dim=1)  # C y for every sample
    lower = sound_crown_lower(graph, input_set, C, d)
    assert bool((vals >= lower).all()), f"CROWN bound above a sampled value by {float((lower - vals).max())}"
    only = sound_crown_lower(graph, input_set, C, d, only_unstable=True)  # stable values left unrefined
    assert bool((vals >= only).all()), f"CROWN (unstable rows) above a sampled value by {float((only - vals).max())}"
    # the unrounded transform is valid up to rounding too (choices such as the max-pool argmax may differ
    # between the two, so they are compared with the samples, not with each other)
    fast = crown_lower(graph.to(dtype=torch.float64), input_set, C, d, FAST)
    assert bool((vals >= fast - 1e-9 * (1 + vals.abs())).all())
    if with_alpha:
        alpha = alpha_crown_lower(graph, input_set, C, d, AlphaOptions(iterations=8))
        assert bool((alpha >= lower).all()), "alpha-CROWN must never be looser than CROWN"
        assert bool((vals >= alpha).all()), "alpha-CROWN bound above a sampled value"


@pytest.mark.parametrize("op", sorted(RULES))
@pytest.mark.parametrize("seed", [0, 1])
def test_crown_contains_samples_around_every_op(op, seed):
    graph = _op_network(op, seed)
    gen = torch.Generator().manual_seed(seed)
    for _, input_set in _sets((6,), gen):
        _check(graph, input_set, with_alpha=(seed == 0))


def test_linear_model_matches_closed_form():
    """For f(x) = W x + b, CROWN is exact: min over the ball of c.f = c.(W x0 + b) - eps ||W^T c||_q."""
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    graph = Graph("x", (7,), (Node("fc", "linear", ("x",), "y", {"weight": W, "bias": b}, (4,)),), "y", (4,),
                  meta={"semantics": "real"})  # the exact network: its closed form, to 1e-12
    x0 = torch.randn(1, 7, generator=gen, dtype=torch.float64)
    C = torch.randn(1, 5, 4, generator=gen, dtype=torch.float64)
    d = torch.zeros(1, 5, dtype=torch.float64)
    for p, q in ((math.inf, 1), (2.0, 2), (1.0, math.inf)):
        ball = LpBall(x0, torch.tensor([0.3], dtype=torch.float64), p)
        v = C[0] @ W
        exact = C[0] @ (W @ x0[0] + b) - 0.3 * torch.linalg.vector_norm(v, ord=q, dim=1)
        got = sound_crown_lower(graph, ball, C, d)[0]
        assert bool((got <= exact).all())
        torch.testing.assert_close(got, exact, rtol=1e-12, atol=1e-12)
        got_alpha = alpha_crown_lower(graph, ball, C, d)[0]
        torch.testing.assert_close(got_alpha, exact, rtol=1e-12, atol=1e-12)


# --- hypothesis: PyTorch networks covering every importable op, imported through ONNX ------------------
class _Net(nn.Module):
    def __init__(self, act: str, pool: str, residual: bool, bn: bool, concat: bool):
        super().__init__()
        acts = {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}
        self.conv = nn.Conv2d(1, 3, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.act = acts[act]
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, groups=3) if residual else None
        self.pool = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), "none": nn.Identity()}[pool]
        self.concat = concat
        self.fc = nn.LazyLinear(3)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        if self.conv2 is not None:
            h = h + self.conv2(h)
        h = self.pool(h)
        if self.concat:
            h = torch.cat([h, torch.relu(-h) * 0.5], dim=1)
        return self.fc(torch.flatten(h, 1))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(act=st.sampled_from(["relu", "leaky", "sigmoid", "tanh"]), pool=st.sampled_from(["max", "avg", "none"]),
       residual=st.booleans(), bn=st.booleans(), concat=st.booleans(), seed=st.integers(0, 10_000),
       eps=st.floats(0.01, 0.5))
def test_crown_contains_samples_on_generated_cnns(act, pool, residual, bn, concat, seed, eps):
    torch.manual_seed(seed)
    net = _Net(act, pool, residual, bn, concat)
    net(torch.zeros(1, 1, 6, 6))  # materialise the lazy layer
    if bn:
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.5, 0.5)
            net.bn.running_var.uniform_(0.5, 2.0)
    model = from_module(net.eval(), (1, 6, 6))
    x0 = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    _check(model.graph, LpBall(x0, torch.tensor([eps], dtype=torch.float64), math.inf), with_alpha=False)
