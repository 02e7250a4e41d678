"""The engine's CROWN against two independent references written separately in tests/oracles:
a plain float64 NumPy CROWN (agreement to 1e-6 relative) and an exact MILP (HiGHS) for small ReLU
networks (the certified lower bound never exceeds the exact minimum; alpha-CROWN in between)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from certify.engine.alpha import alpha_crown_lower
from certify.engine.crown import crown_lower, sound_crown_lower
from certify.engine.fp import FAST
from certify.graph import Graph, Node
from certify.sets import Box, LpBall
from oracles import numpy_crown
from oracles.milp import exact_min


def _random_layers(rng: np.random.Generator, cnn: bool):
    layers = []
    if cnn:
        input_shape = (1, 6, 6)
        layers += [("conv", rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2) * 0.1, 1, 1), ("relu",),
                   ("conv", rng.standard_normal((2, 2, 3, 3)) * 0.5, rng.standard_normal(2) * 0.1, 2, 1), ("relu",),
                   ("flatten",)]
        n = 2 * 3 * 3
    else:
        n = int(rng.integers(3, 9))
        input_shape = (n,)
    for width in rng.integers(4, 12, size=2):
        layers += [("dense", rng.standard_normal((width, n)) / math.sqrt(n), rng.standard_normal(width) * 0.3), ("relu",)]
        n = int(width)
    layers.append(("dense", rng.standard_normal((3, n)), rng.standard_normal(3) * 0.1))
    return layers, input_shape


def _to_graph(layers, input_shape) -> Graph:
    nodes, prev, shape = [], "x", tuple(input_shape)
    for i, layer in enumerate(layers):
        out = f"t{i}"
        kind = layer[0]
        if kind == "dense":
            W, b = (torch.tensor(a, dtype=torch.float64) for a in layer[1:3])
            if len(shape) != 1:
                nodes.append(Node(f"flat{i}", "reshape", (prev,), f"f{i}", {"shape": (math.prod(shape),)}, (math.prod(shape),)))
                prev = f"f{i}"
            shape = (W.shape[0],)
            nodes.append(Node(f"dense{i}", "linear", (prev,), out, {"weight": W, "bias": b}, shape))
        elif kind == "conv":
            W, b = (torch.tensor(a, dtype=torch.float64) for a in layer[1:3])
            stride, pad = layer[3], layer[4]
            params = {"weight": W, "bias": b, "stride": (stride, stride), "padding": (pad, pad), "dilation": (1, 1), "groups": 1}
            probe = torch.nn.functional.conv2d(torch.zeros(1, *shape, dtype=torch.float64), W, b, stride, pad)
            shape = tuple(probe.shape[1:])
            nodes.append(Node(f"conv{i}", "conv2d", (prev,), out, params, shape))
        elif kind == "relu":
            nodes.append(Node(f"relu{i}", "relu", (prev,), out, {}, shape))
        else:  # flatten
            shape = (math.prod(shape),)
            nodes.append(Node(f"flatten{i}", "reshape", (prev,), out, {"shape": shape}, shape))
        prev = out
    return Graph("x", tuple(input_shape), tuple(nodes), prev, shape)


CASES = [(seed, cnn, p) for seed in range(8) for cnn in (False, True) for p in ("box", math.inf, 2.0, 1.0)]


@pytest.mark.parametrize("seed,cnn,p", CASES)
def test_engine_crown_matches_independent_numpy_crown(seed, cnn, p):
    rng = np.random.default_rng(seed)
    layers, input_shape = _random_layers(rng, cnn)
    graph = _to_graph(layers, input_shape)
    n_in = math.prod(input_shape)
    center = rng.uniform(0, 1, n_in)
    eps = 0.15 if cnn else 0.4
    if p == "box":
        lo, hi = center - eps * rng.uniform(0.2, 1, n_in), center + eps * rng.uniform(0.2, 1, n_in)
        ref_set, ours = numpy_crown.Box(lo, hi), Box(torch.tensor(lo)[None].reshape(1, *input_shape),
                                                     torch.tensor(hi)[None].reshape(1, *input_shape))
    else:
        ref_set = numpy_crown.LpBall(center, eps, p)
        ours = LpBall(torch.tensor(center).reshape(1, *input_shape), torch.tensor([eps], dtype=torch.float64), p)
    C = rng.standard_normal((5, 3))
    ref_lower, ref_upper = numpy_crown.crown_bounds(layers, input_shape, ref_set, C)
    Ct = torch.tensor(np.concatenate([C, -C]))[None]
    d = torch.zeros(1, 10, dtype=torch.float64)
    got = crown_lower(graph, ours, Ct, d, FAST)[0].numpy()
    np.testing.assert_allclose(got[:5], ref_lower, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(-got[5:], ref_upper, rtol=1e-6, atol=1e-9)
    # real semantics: the float64 bound computation's own rounding costs next to nothing
    sound = sound_crown_lower(graph.with_semantics("real"), ours, Ct, d)[0].numpy()
    assert np.all(sound <= got) and np.allclose(sound, got, rtol=1e-9, atol=1e-9)
    # runtime semantics (the default) also covers float32 evaluation: below, and within float32's reach
    runtime = sound_crown_lower(graph, ours, Ct, d)[0].numpy()
    assert np.all(runtime <= sound) and np.allclose(runtime, sound, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("seed", range(12))
def test_certified_lower_bound_never_exceeds_the_exact_minimum(seed):
    rng = np.random.default_rng(100 + seed)
    layers, input_shape = _random_layers(rng, cnn=seed % 3 == 0)
    graph = _to_graph(layers, input_shape)
    n_in = math.prod(input_shape)
    center = rng.uniform(0, 1, n_in)
    eps = 0.1 if seed % 3 == 0 else 0.3
    lo, hi = center - eps, center + eps
    box = Box(torch.tensor(lo).reshape(1, *input_shape), torch.tensor(hi).reshape(1, *input_shape))
    c = rng.standard_normal(3)
    exact = exact_min(layers, input_shape, lo, hi, c)
    C = torch.tensor(c)[None, None]
    d = torch.zeros(1, 1, dtype=torch.float64)
    crown = float(sound_crown_lower(graph, box, C, d))
    alpha = float(alpha_crown_lower(graph, box, C, d))
    tol = 1e-6 * (1 + abs(exact))
    assert crown <= exact + tol, (crown, exact)
    assert crown <= alpha <= exact + tol, (crown, alpha, exact)


def test_batched_instances_equal_separate_runs():
    """A batch of instances in one pass gives each instance's own bounds (no leakage across the batch)."""
    rng = np.random.default_rng(7)
    layers, input_shape = _random_layers(rng, cnn=True)
    graph = _to_graph(layers, input_shape)
    x = torch.rand(3, *input_shape, dtype=torch.float64)
    eps = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)
    balls = LpBall(x, eps, math.inf)
    C = torch.randn(3, 4, 3, dtype=torch.float64)
    d = torch.randn(3, 4, dtype=torch.float64)
    together = sound_crown_lower(graph, balls, C, d)
    for b in range(3):
        alone = sound_crown_lower(graph, balls[b], C[b:b + 1], d[b:b + 1])
        torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-12, atol=1e-12)


def test_row_chunking_does_not_change_bounds(monkeypatch):
    """Intermediate rows processed in many small chunks (with optimised slopes) give the same bounds."""
    import certify.engine.crown as crown_module
    from certify.engine.alpha import AlphaOptions, optimise_alphas

    rng = np.random.default_rng(9)
    layers, input_shape = _random_layers(rng, cnn=True)
    graph = _to_graph(layers, input_shape)
    ball = LpBall(torch.rand(2, *input_shape, dtype=torch.float64), torch.tensor([0.1, 0.05], dtype=torch.float64), math.inf)
    C = torch.randn(2, 3, 3, dtype=torch.float64)
    d = torch.zeros(2, 3, dtype=torch.float64)
    final, inter, _ = optimise_alphas(graph, ball, C, d, AlphaOptions(iterations=3, dtype="float64"))
    whole = sound_crown_lower(graph, ball, C, d, alphas=final, intermediate_alphas=inter)
    monkeypatch.setattr(crown_module, "CHUNK_VALUES", 16)
    chunked = sound_crown_lower(graph, ball, C, d, alphas=final, intermediate_alphas=inter)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


def test_alpha_optimisation_stops_at_its_time_limit_with_a_valid_bound():
    """With no time left the optimisation keeps its first iterate (CROWN's slopes): the same result as
    zero iterations, and still at least CROWN."""
    from certify.engine.alpha import AlphaOptions, optimise_alphas

    rng = np.random.default_rng(4)
    layers, input_shape = _random_layers(rng, cnn=False)
    graph = _to_graph(layers, input_shape)
    ball = LpBall(torch.rand(1, *input_shape, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64), math.inf)
    C, d = torch.randn(1, 3, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    *_, stopped = optimise_alphas(graph, ball, C, d, AlphaOptions(iterations=50), time_limit=0.0)
    *_, none = optimise_alphas(graph, ball, C, d, AlphaOptions(iterations=0))
    torch.testing.assert_close(stopped, none)
    assert bool((alpha_crown_lower(graph, ball, C, d, time_limit=0.0) >= sound_crown_lower(graph, ball, C, d)).all())
