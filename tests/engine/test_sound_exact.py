"""The sound passes against exact rational arithmetic, on layers built to cancel.

Weights of magnitude ``1e8`` whose products cancel down to ``O(1)``, inputs in point boxes and in
boxes of width ``1e-13`` where every ReLU is unstable: CROWN is then (nearly) exact, so the only thing
between its float64 value and the exact minimum is rounding. The exact values come from a forward pass
in ``fractions.Fraction`` over the stored floats (no engine code). Every sound bound (``real``
semantics: exact network) must be at most the exact value at every sampled point of the box; the last
test shows the same check *fails* for the fast (unrounded) passes, so this file catches a sound pass
that lost its rounding terms.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from certify.engine.alpha import alpha_crown_lower
from certify.engine.crown import crown_lower, sound_crown_lower
from certify.engine.fp import FAST
from certify.engine.ibp import interval_bounds, sound_interval_bounds
from certify.graph import Graph, Node
from certify.sets import Box


def _cancelling_net(seed: int, n_in: int = 4, width: int = 6, depth: int = 3, active: bool = False):
    """Dense ReLU layers whose weights are ``1e8 * (+-1)`` pairs plus O(1) parts: every pre-activation
    is a difference of huge terms. Biases are chosen so that at the centre each pre-activation is
    O(1e-9), i.e. the ReLUs are unstable on any box wider than that."""
    rng = np.random.default_rng(seed)
    nodes, prev, shape = [], "x", n_in
    x0 = rng.uniform(-1, 1, n_in)
    h = x0.copy()
    for i in range(depth):
        big = 1e8 * rng.choice([-1.0, 1.0], size=(width, shape))
        big[:, 1::2] = -big[:, ::2][:, : big[:, 1::2].shape[1]]  # columns cancel pairwise
        W = big + rng.standard_normal((width, shape))
        pre = W @ h
        # pre-activations ~ 1e-9 at the centre; or in [0.5, 1] (``active``: every ReLU stays on and its
        # relaxation is exact, so only rounding stands between CROWN's value and the exact one)
        b = -pre + (rng.uniform(0.5, 1.0, width) if active else rng.uniform(-1e-9, 1e-9, width))
        nodes.append(Node(f"fc{i}", "linear", (prev,), f"z{i}",
                          {"weight": torch.tensor(W), "bias": torch.tensor(b)}, (width,)))
        nodes.append(Node(f"relu{i}", "relu", (f"z{i}",), f"h{i}", {}, (width,)))
        h = np.maximum(W @ h + b, 0)
        prev, shape = f"h{i}", width
    W = rng.standard_normal((3, shape)) * 1e8
    nodes.append(Node("out", "linear", (prev,), "y", {"weight": torch.tensor(W), "bias": torch.tensor(-W @ h)}, (3,)))
    graph = Graph("x", (n_in,), tuple(nodes), "y", (3,), meta={"semantics": "real"})
    return graph, x0


def _exact_forward(graph: Graph, x: np.ndarray) -> list[Fraction]:
    """The network on the stored floats in exact rational arithmetic (independent of the engine)."""
    env = {graph.input: [Fraction(float(v)) for v in x]}
    for node in graph.nodes:
        (src,) = node.inputs
        v = env[src]
        if node.op == "linear":
            W = node.params["weight"].tolist()
            b = node.params["bias"].tolist()
            env[node.output] = [sum((Fraction(w) * xi for w, xi in zip(row, v)), Fraction(bi)) for row, bi in zip(W, b)]
        elif node.op == "relu":
            env[node.output] = [max(t, Fraction(0)) for t in v]
        else:
            raise AssertionError(node.op)
    return env[graph.output]


def _points(lo: np.ndarray, hi: np.ndarray, rng, n: int = 24) -> list[np.ndarray]:
    pts = [lo, hi, (lo + hi) / 2]
    pts += [np.where(rng.random(lo.shape) < 0.5, lo, hi) for _ in range(n // 2)]
    pts += [rng.uniform(lo, hi) for _ in range(n // 2)]
    return pts


def _case(seed: int, width_of_box: float, active: bool = False):
    graph, x0 = _cancelling_net(seed, active=active)
    rng = np.random.default_rng(1000 + seed)
    lo, hi = x0 - width_of_box / 2, x0 + width_of_box / 2
    box = Box(torch.tensor(lo)[None], torch.tensor(hi)[None])
    C = torch.tensor(rng.standard_normal((1, 4, 3)))
    d = torch.zeros(1, 4, dtype=torch.float64)
    exact_min = None
    for p in _points(lo, hi, rng):
        y = _exact_forward(graph, p)
        rows = [sum((Fraction(c) * yi for c, yi in zip(row, y)), Fraction(0)) for row in C[0].tolist()]
        exact_min = rows if exact_min is None else [min(a, b) for a, b in zip(exact_min, rows)]
    return graph, box, C, d, exact_min


CASES = [(seed, w) for seed in range(10) for w in (0.0, 1e-13)]


@pytest.mark.parametrize("seed,width", CASES)
def test_sound_crown_never_exceeds_an_exact_value(seed, width):
    graph, box, C, d, exact_min = _case(seed, width)
    for name, bound in (("crown", sound_crown_lower(graph, box, C, d)[0]),
                        ("alpha-crown", alpha_crown_lower(graph, box, C, d)[0])):
        for r, (b, e) in enumerate(zip(bound.tolist(), exact_min)):
            assert Fraction(b) <= e, f"{name} row {r}: {b!r} above the exact value {float(e)!r}"


@pytest.mark.parametrize("seed,width", CASES)
def test_sound_ibp_contains_exact_values(seed, width):
    graph, x0 = _cancelling_net(seed)
    rng = np.random.default_rng(2000 + seed)
    lo, hi = x0 - width / 2, x0 + width / 2
    out = sound_interval_bounds(graph, Box(torch.tensor(lo)[None], torch.tensor(hi)[None]))
    for p in _points(lo, hi, rng, 8):
        for k, v in enumerate(_exact_forward(graph, p)):
            assert Fraction(out.lower[0, k].item()) <= v <= Fraction(out.upper[0, k].item())


def _cancelling_coefficients(seed: int):
    """x (4) -> z = W1 x (6) -> y = W2 z (3), no ReLU. W1's rows come in pairs ``+-1e8 r_i`` plus O(1) parts and
    W2 adds each pair with one coefficient, so ``z`` is ~1e8 while ``y`` and CROWN's input coefficients
    ``C W2 W1`` are O(1): the rounding of the product ``(C W2) W1`` (~1e-8) is not covered by the small
    concretisation or output terms, only by the linear step's own rounding term."""
    rng = np.random.default_rng(seed)
    r = 1e8 * rng.standard_normal((3, 4))
    W1 = np.empty((6, 4))
    W1[0::2], W1[1::2] = r + rng.standard_normal((3, 4)), -r + rng.standard_normal((3, 4))
    W2 = np.repeat(rng.standard_normal((3, 3)), 2, axis=1)
    nodes = (Node("fc1", "linear", ("x",), "z", {"weight": torch.tensor(W1), "bias": torch.zeros(6, dtype=torch.float64)}, (6,)),
             Node("fc2", "linear", ("z",), "y", {"weight": torch.tensor(W2), "bias": torch.zeros(3, dtype=torch.float64)}, (3,)))
    graph = Graph("x", (4,), nodes, "y", (3,), meta={"semantics": "real"})
    x0 = rng.uniform(-1, 1, 4)
    box = Box(torch.tensor(x0)[None], torch.tensor(x0)[None])
    C = torch.tensor(rng.standard_normal((1, 4, 3)))
    y = _exact_forward(graph, x0)
    exact = [sum((Fraction(c) * yi for c, yi in zip(row, y)), Fraction(0)) for row in C[0].tolist()]
    return graph, box, C, torch.zeros(1, 4, dtype=torch.float64), exact


def test_sound_crown_covers_the_rounding_of_cancelling_coefficients():
    fast_bad = 0
    for seed in range(20):
        graph, box, C, d, exact = _cancelling_coefficients(seed)
        for r, (b, e) in enumerate(zip(sound_crown_lower(graph, box, C, d)[0].tolist(), exact)):
            assert Fraction(b) <= e, f"seed {seed} row {r}: {b!r} above the exact value {float(e)!r}"
        with torch.no_grad():
            fast = crown_lower(graph, box, C, d, FAST)[0]
        fast_bad += sum(Fraction(b) > e for b, e in zip(fast.tolist(), exact))
    assert fast_bad > 0  # the check has teeth: without rounding terms the bound exceeds the exact value


@pytest.mark.parametrize("seed", range(10))
def test_sound_crown_never_exceeds_an_exact_value_through_active_relus(seed):
    """Every ReLU active on the box: the relaxation is the identity and CROWN's value is the exact linear map up
    to rounding (the fast pass exceeds it, below). The rounding terms overlap here: dropping the linear steps'
    alone still passes, which ``test_sound_crown_covers_the_rounding_of_cancelling_coefficients`` catches."""
    graph, box, C, d, exact_min = _case(seed, 1e-13, active=True)
    bound = sound_crown_lower(graph, box, C, d)[0]
    for r, (b, e) in enumerate(zip(bound.tolist(), exact_min)):
        assert Fraction(b) <= e, f"row {r}: {b!r} above the exact value {float(e)!r}"


def test_fast_crown_fails_through_active_relus():
    bad = 0
    for seed in range(10):
        graph, box, C, d, exact_min = _case(seed, 1e-13, active=True)
        with torch.no_grad():
            fast = crown_lower(graph, box, C, d, FAST)[0]
        bad += sum(Fraction(b) > e for b, e in zip(fast.tolist(), exact_min))
    assert bad > 0


def test_fast_passes_fail_the_same_check():
    """The check has teeth: without rounding terms, CROWN and IBP exceed exact values on these layers."""
    crown_bad = ibp_bad = 0
    for seed, width in CASES:
        graph, box, C, d, exact_min = _case(seed, width)
        with torch.no_grad():
            fast = crown_lower(graph, box, C, d, FAST)[0]
        crown_bad += sum(Fraction(b) > e for b, e in zip(fast.tolist(), exact_min))
        ibp = interval_bounds(graph, box, FAST)
        y = _exact_forward(graph, box.lower[0].numpy())
        ibp_bad += sum(not (Fraction(ibp.lower[0, k].item()) <= v <= Fraction(ibp.upper[0, k].item()))
                       for k, v in enumerate(y))
    assert crown_bad > 0 and ibp_bad > 0
