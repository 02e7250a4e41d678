"""Tests of the test oracles themselves (NumPy CROWN and the HiGHS MILP) against ground truth.

Ground truth here is: sampling (plain forward passes, box corners, ball surfaces),
hand-derived CROWN numbers, closed forms for linear networks, and a naive loop
convolution.  Everything is float64 and small; the whole file runs in seconds.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from .milp import exact_max, exact_max_ball_linf, exact_min, exact_min_ball_linf
from .numpy_crown import (
    Box,
    LpBall,
    conv_to_dense,
    crown_bounds,
    forward,
    ibp_bounds,
    intermediate_bounds,
    lower_network,
    relu_relaxation,
)

N_SAMPLES = 20_000
MILP_RTOL = 1e-6  # HiGHS works to ~1e-9 feasibility; compare at 1e-6 relative
SOUND_TOL = 1e-9  # CROWN / sampling: pure float64 round-off


def close(a, b, rtol=MILP_RTOL):
    return abs(a - b) <= rtol * (1.0 + abs(b))


# ---------------------------------------------------------------------------
# helpers: random networks and samplers
# ---------------------------------------------------------------------------


def random_mlp(rng, n_in, hidden, n_out, bias_scale=0.3):
    layers, prev = [], n_in
    for h in hidden:
        layers += [("dense", rng.normal(size=(h, prev)) / np.sqrt(prev), rng.normal(scale=bias_scale, size=h)),
                   ("relu",)]
        prev = h
    layers.append(("dense", rng.normal(size=(n_out, prev)) / np.sqrt(prev), rng.normal(scale=bias_scale, size=n_out)))
    return layers


def mlp_case(seed):
    rng = np.random.default_rng(1000 + seed)
    n_in = int(rng.integers(3, 9))
    hidden = [int(rng.integers(4, 11)), int(rng.integers(4, 11))]
    n_out = int(rng.integers(2, 5))
    layers = random_mlp(rng, n_in, hidden, n_out)
    center = rng.normal(size=n_in)
    radius = rng.uniform(0.1, 1.0, size=n_in)
    return rng, layers, (n_in,), center, radius, n_out


def sample_box(rng, lo, hi, n=N_SAMPLES):
    """Uniform samples plus every corner (n_in <= 8 -> at most 256 corners)."""
    d = lo.size
    X = rng.uniform(lo, hi, size=(n, d))
    if d <= 10:
        corners = np.array(list(itertools.product([0.0, 1.0], repeat=d)))
        X = np.vstack([X, lo + corners * (hi - lo)])
    else:
        X = np.vstack([X, np.where(rng.random((n // 4, d)) < 0.5, lo, hi)])
    return X


def sample_ball(rng, center, eps, p, n=N_SAMPLES):
    """Points of the Lp ball: half uniform in the ball, half on its surface (+ vertices for p=1, inf)."""
    d = center.size
    h = n // 2
    if np.isinf(p):
        inside = rng.uniform(-1.0, 1.0, size=(h, d))
        surface = np.where(rng.random((n - h, d)) < 0.5, -1.0, 1.0)  # corners
    elif p == 2:
        g = rng.normal(size=(n, d))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        r = np.ones((n, 1))
        r[:h] = rng.random((h, 1)) ** (1.0 / d)  # uniform in the ball
        inside, surface = (g * r)[:h], (g * r)[h:]
    elif p == 1:
        signs = np.where(rng.random((n, d)) < 0.5, -1.0, 1.0)
        e_in = rng.exponential(size=(h, d + 1))
        inside = (e_in / e_in.sum(axis=1, keepdims=True))[:, :d] * signs[:h]  # uniform in the L1 ball
        e_s = rng.exponential(size=(n - h, d))
        surface = e_s / e_s.sum(axis=1, keepdims=True) * signs[h:]  # uniform on the L1 sphere
        surface = np.vstack([surface, np.eye(d), -np.eye(d)])  # vertices
    else:
        raise ValueError(p)
    D = np.vstack([inside, surface])
    norms = np.linalg.norm(D, ord=p, axis=1)
    assert np.all(norms <= 1.0 + 1e-12)
    return center + eps * D


def assert_contains(lower, upper, values, tol=SOUND_TOL):
    scale = 1.0 + np.maximum(np.abs(lower), np.abs(upper))
    assert np.all(values >= lower - tol * scale), (values.min(axis=0), lower)
    assert np.all(values <= upper + tol * scale), (values.max(axis=0), upper)


def pre_activation_ibp_subset(layers, shape, input_set):
    """Tightened intermediate bounds lie inside the pure IBP ones (IBP is monotone)."""
    tight = intermediate_bounds(layers, shape, input_set)
    pure = ibp_bounds(layers, shape, input_set, per_layer=True)
    for (l, u), (li, ui) in zip(tight, pure):
        assert np.all(l >= li - 1e-12) and np.all(u <= ui + 1e-12)
        assert np.all(l <= u + 1e-12)


# ---------------------------------------------------------------------------
# hand-checked CROWN numbers (pin down the variant)
# ---------------------------------------------------------------------------


def test_relu_relaxation_table():
    l = np.array([0.0, 1.0, -2.0, -1.0, -3.0, -1.0, -2.0])
    u = np.array([2.0, 3.0, 0.0, -0.5, 1.0, 3.0, 2.0])
    alpha, beta, gamma = relu_relaxation(l, u)
    # active, active, inactive, inactive, unstable u<-l, unstable u>-l, unstable u==-l
    np.testing.assert_array_equal(alpha, [1, 1, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(beta, [1, 1, 0, 0, 0.25, 0.75, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(gamma, [0, 0, 0, 0, 0.75, 0.75, 1.0], rtol=0, atol=1e-15)


def test_hand_example_one_hidden_layer():
    # z1 = x1 + x2 - 0.5 in [-2.5, 1.5] (alpha=0, beta=3/8, gamma=15/16)
    # z2 = x1 - x2 + 0.5 in [-1.5, 2.5] (alpha=1, beta=5/8, gamma=15/16)
    # y = relu(z1) - relu(z2):
    #   upper: 3/8 z1 + 15/16 - z2          = -5/8 x1 + 11/8 x2 + 1/4  -> max 2.25
    #   lower: 0 * z1 - (5/8 z2 + 15/16)    = -5/8 x1 + 5/8 x2 - 5/4   -> min -2.5
    layers = [("dense", np.array([[1.0, 1.0], [1.0, -1.0]]), np.array([-0.5, 0.5])), ("relu",),
              ("dense", np.array([[1.0, -1.0]]), np.zeros(1))]
    lo, up = crown_bounds(layers, (2,), (-np.ones(2), np.ones(2)))
    np.testing.assert_allclose(lo, [-2.5], rtol=0, atol=1e-14)
    np.testing.assert_allclose(up, [2.25], rtol=0, atol=1e-14)


def test_hand_example_intersection_with_ibp():
    # First layer as above without biases: z in [-2, 2]^2 (alpha = 1 since u == -l).
    # y = relu(z1) - relu(z2): CROWN [-3, 3], IBP [-2, 2] -> intersected [-2, 2].
    # out = relu(y): upper 1/2 y + 1 with y's upper line (x -> -1/2 x1 + 3/2 x2 + 1)
    #   -> 1/2 * 3 + 1 = 2.5 (it would be 3 without the intersection);
    #   lower: alpha = 1 -> y's CROWN lower -3 (final output is not intersected with IBP).
    layers = [("dense", np.array([[1.0, 1.0], [1.0, -1.0]]), np.zeros(2)), ("relu",),
              ("dense", np.array([[1.0, -1.0]]), np.zeros(1)), ("relu",),
              ("dense", np.eye(1), np.zeros(1))]
    box = (-np.ones(2), np.ones(2))
    det = intermediate_bounds(layers, (2,), box, detail=True)
    np.testing.assert_allclose(det[1]["crown_lower"], [-3.0]); np.testing.assert_allclose(det[1]["crown_upper"], [3.0])
    np.testing.assert_allclose(det[1]["ibp_lower"], [-2.0]); np.testing.assert_allclose(det[1]["ibp_upper"], [2.0])
    np.testing.assert_allclose(det[1]["lower"], [-2.0]); np.testing.assert_allclose(det[1]["upper"], [2.0])
    lo, up = crown_bounds(layers, (2,), box)
    np.testing.assert_allclose(lo, [-3.0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(up, [2.5], rtol=0, atol=1e-14)
    assert exact_min(layers, (2,), *box, [1.0]) == pytest.approx(0.0, abs=1e-9)
    assert exact_max(layers, (2,), *box, [1.0]) == pytest.approx(2.0, abs=1e-9)


# ---------------------------------------------------------------------------
# linear networks: closed form
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["box", 1, 2, np.inf, 3])
def test_linear_network_closed_form(kind):
    rng = np.random.default_rng(7)
    n_in, n_h, n_out = 6, 5, 4
    W1, b1 = rng.normal(size=(n_h, n_in)), rng.normal(size=n_h)
    W2, b2 = rng.normal(size=(n_out, n_h)), rng.normal(size=n_out)
    layers = [("dense", W1, b1), ("dense", W2, b2)]
    C = rng.normal(size=(3, n_out))
    x0 = rng.normal(size=n_in)
    A = C @ W2 @ W1
    c0 = C @ (W2 @ b1 + b2)
    if kind == "box":
        rad = rng.uniform(0.1, 1.0, size=n_in)
        S = Box(x0 - rad, x0 + rad)
        spread = np.abs(A) @ rad
    else:
        eps = 0.3
        S = LpBall(x0, eps, kind)
        q = {1: np.inf, 2: 2.0, np.inf: 1.0, 3: 1.5}[kind]
        spread = eps * (np.abs(A) ** q).sum(axis=1) ** (1 / q) if np.isfinite(q) else eps * np.abs(A).max(axis=1)
    lo, up = crown_bounds(layers, (n_in,), S, C=C)
    scale = 1.0 + np.abs(A @ x0 + c0) + spread
    assert np.all(np.abs(lo - (A @ x0 + c0 - spread)) <= 1e-9 * scale)
    assert np.all(np.abs(up - (A @ x0 + c0 + spread)) <= 1e-9 * scale)
    assert intermediate_bounds(layers, (n_in,), S) == []


# ---------------------------------------------------------------------------
# random MLPs: MILP exactness, CROWN soundness, CROWN <= MILP
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(24))
def test_mlp_milp_exact_and_crown_encloses_it(seed):
    rng, layers, shape, center, radius, n_out = mlp_case(seed)
    lo, hi = center - radius, center + radius
    c = rng.normal(size=n_out)
    d = float(rng.normal())

    mn, x_mn = exact_min(layers, shape, lo, hi, c, d, return_x=True)
    mx, x_mx = exact_max(layers, shape, lo, hi, c, d, return_x=True)
    # the minimiser / maximiser lie in the box and attain the objective in a plain forward pass
    for x in (x_mn, x_mx):
        assert np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9)
    assert close(float(forward(layers, shape, x_mn) @ c - d), mn)
    assert close(float(forward(layers, shape, x_mx) @ c - d), mx)

    # no sample (incl. corners) beats the MILP
    X = sample_box(rng, lo, hi)
    vals = forward(layers, shape, X) @ c - d
    tol = MILP_RTOL * (1.0 + abs(mn) + abs(mx))
    assert vals.min() >= mn - tol
    assert vals.max() <= mx + tol

    # CROWN (and IBP) enclose the exact range
    cl, cu = crown_bounds(layers, shape, Box(lo, hi), C=c[None, :])
    assert cl[0] - d <= mn + tol <= mx + 2 * tol <= cu[0] - d + 3 * tol
    il, iu = ibp_bounds(layers, shape, (lo, hi), C=c[None, :])
    assert il[0] - d <= mn + tol and mx <= iu[0] - d + tol

    # L-inf ball helpers agree with the box
    eps = float(radius.min())
    m_ball = exact_min_ball_linf(layers, shape, center, eps, c, d)
    M_ball = exact_max_ball_linf(layers, shape, center, eps, c, d)
    assert mn - tol <= m_ball <= M_ball <= mx + tol


def test_random_mlps_have_unstable_neurons():
    """The MLP suite is not vacuous: most cases have unstable ReLUs (binaries in the MILP)."""
    n_unstable = []
    for seed in range(24):
        _, layers, shape, center, radius, _ = mlp_case(seed)
        ib = intermediate_bounds(layers, shape, (center - radius, center + radius))
        n_unstable.append(sum(int(np.sum((l < 0) & (u > 0))) for l, u in ib))
    assert sum(n > 0 for n in n_unstable) >= 20
    assert sum(n_unstable) >= 100


@pytest.mark.parametrize("seed", range(4))
def test_crown_exact_when_all_relus_stable(seed):
    """With a tiny box every ReLU is stable; CROWN is then exact and equals the MILP."""
    rng, layers, shape, center, _, n_out = mlp_case(seed)
    radius = np.full(shape, 1e-4)
    lo, hi = center - radius, center + radius
    for l, u in intermediate_bounds(layers, shape, (lo, hi)):
        assert not np.any((l < 0) & (u > 0))
    c = rng.normal(size=n_out)
    cl, cu = crown_bounds(layers, shape, (lo, hi), C=c)
    assert close(cl[0], exact_min(layers, shape, lo, hi, c))
    assert close(cu[0], exact_max(layers, shape, lo, hi, c))


@pytest.mark.parametrize("p", ["box", np.inf, 2, 1])
@pytest.mark.parametrize("seed", range(6))
def test_crown_contains_samples(seed, p):
    rng, layers, shape, center, radius, n_out = mlp_case(seed)
    if p == "box":
        S = Box(center - radius, center + radius)
        X = sample_box(rng, S.lo, S.hi)
    else:
        eps = {np.inf: 0.5, 2: 1.0, 1: 1.5}[p]
        S = LpBall(center, eps, p)
        X = sample_ball(rng, center, eps, p)
    Y, pre = forward(layers, shape, X, return_pre_relu=True)
    lo, up = crown_bounds(layers, shape, S)
    assert lo.shape == up.shape == (n_out,)
    assert_contains(lo, up, Y)
    C = rng.normal(size=(5, n_out))
    lo, up = crown_bounds(layers, shape, S, C=C)
    assert lo.shape == (5,)
    assert_contains(lo, up, Y @ C.T)
    for (l, u), z in zip(intermediate_bounds(layers, shape, S), pre):
        assert_contains(l, u, z)
    pre_activation_ibp_subset(layers, shape, S)


@pytest.mark.parametrize("seed", range(3))
def test_linf_ball_equals_box(seed):
    _, layers, shape, center, _, _ = mlp_case(seed)
    a = crown_bounds(layers, shape, LpBall(center, 0.4, np.inf))
    b = crown_bounds(layers, shape, Box(center - 0.4, center + 0.4))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # tuple forms and the string "inf" are accepted
    c = crown_bounds(layers, shape, (center, 0.4, "inf"))
    np.testing.assert_allclose(a, c, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# convolutions
# ---------------------------------------------------------------------------


def naive_conv(x, W, b, stride, padding):
    C_out, C_in, kh, kw = W.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    H_out = (x.shape[1] + 2 * padding - kh) // stride + 1
    W_out = (x.shape[2] + 2 * padding - kw) // stride + 1
    y = np.zeros((C_out, H_out, W_out))
    for o in range(C_out):
        for i in range(H_out):
            for j in range(W_out):
                patch = xp[:, i * stride: i * stride + kh, j * stride: j * stride + kw]
                y[o, i, j] = np.sum(patch * W[o]) + b[o]
    return y


@pytest.mark.parametrize("stride,padding,k,shape", [(1, 1, 3, (1, 6, 6)), (2, 1, 3, (2, 7, 5)),
                                                    (1, 0, 2, (3, 4, 4)), (2, 2, 3, (1, 5, 6))])
def test_conv_to_dense_matches_naive(stride, padding, k, shape):
    rng = np.random.default_rng(3)
    W = rng.normal(size=(2, shape[0], k, k))
    b = rng.normal(size=2)
    x = rng.normal(size=shape)
    M, m, out_shape = conv_to_dense(W, b, shape, stride, padding)
    y = naive_conv(x, W, b, stride, padding)
    assert out_shape == y.shape
    np.testing.assert_allclose(M @ x.ravel() + m, y.ravel(), rtol=1e-12, atol=1e-12)


def tiny_cnn(rng):
    return [("conv", rng.normal(size=(2, 1, 3, 3)) / 3.0, rng.normal(scale=0.2, size=2), 1, 1),
            ("relu",), ("flatten",),
            ("dense", rng.normal(size=(3, 72)) / np.sqrt(72), rng.normal(scale=0.2, size=3))]


def test_tiny_cnn_shapes_and_forward():
    rng = np.random.default_rng(11)
    layers = tiny_cnn(rng)
    ops, shapes = lower_network(layers, (1, 6, 6))
    assert [op[0] for op in ops] == ["affine", "relu", "affine"]
    assert shapes == [(1, 6, 6), (2, 6, 6), (72,), (3,)]
    x = rng.normal(size=(1, 6, 6))
    h = np.maximum(naive_conv(x, layers[0][1], layers[0][2], 1, 1), 0).ravel()
    np.testing.assert_allclose(forward(layers, (1, 6, 6), x.ravel()), layers[3][1] @ h + layers[3][2], rtol=1e-12)


@pytest.mark.parametrize("p", ["box", np.inf, 2])
def test_tiny_cnn_bounds_contain_samples(p):
    rng = np.random.default_rng(12)
    layers = tiny_cnn(rng)
    x0 = rng.uniform(0, 1, size=36)
    if p == "box":
        S = Box(x0 - 0.1, x0 + 0.1)
        X = sample_box(rng, S.lo, S.hi)
    else:
        eps = 0.1 if p == np.inf else 0.5
        S = LpBall(x0, eps, p)
        X = sample_ball(rng, x0, eps, p)
    Y, pre = forward(layers, (1, 6, 6), X, return_pre_relu=True)
    lo, up = crown_bounds(layers, (1, 6, 6), S)
    assert lo.shape == (3,)
    assert_contains(lo, up, Y)
    for (l, u), z in zip(intermediate_bounds(layers, (1, 6, 6), S), pre):
        assert_contains(l, u, z)
    pre_activation_ibp_subset(layers, (1, 6, 6), S)


def test_tiny_cnn_milp_between_crown_bounds():
    rng = np.random.default_rng(13)
    layers = tiny_cnn(rng)
    x0 = rng.uniform(0, 1, size=36)
    eps = 0.05
    lo, hi = x0 - eps, x0 + eps
    c = np.array([1.0, -1.0, 0.0])  # margin y0 - y1
    (l1, u1), = intermediate_bounds(layers, (1, 6, 6), (lo, hi))
    assert np.sum((l1 < 0) & (u1 > 0)) > 0  # some binaries
    mn, x_mn = exact_min_ball_linf(layers, (1, 6, 6), x0, eps, c, return_x=True)
    mx = exact_max(layers, (1, 6, 6), lo, hi, c)
    assert close(float(forward(layers, (1, 6, 6), x_mn) @ c), mn)
    cl, cu = crown_bounds(layers, (1, 6, 6), (lo, hi), C=c)
    tol = MILP_RTOL * (1 + abs(mn) + abs(mx))
    assert cl[0] <= mn + tol and mn <= mx + tol and mx <= cu[0] + tol
    vals = forward(layers, (1, 6, 6), sample_box(rng, lo, hi, 5000)) @ c
    assert vals.min() >= mn - tol and vals.max() <= mx + tol


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------


def test_input_validation():
    layers = [("dense", np.ones((2, 3)), np.zeros(2)), ("relu",)]
    with pytest.raises(ValueError):
        crown_bounds(layers, (3,), (np.zeros(4), np.ones(4)))
    with pytest.raises(ValueError):
        crown_bounds(layers, (3,), (np.zeros(3), np.ones(3)), C=np.ones((1, 3)))
    with pytest.raises(ValueError):
        Box(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError):
        lower_network([("conv", np.ones((1, 1, 3, 3)), np.zeros(1), 1, 0)], (9,))
    # relu as the very last layer: bounds are those of relu(W x)
    lo, up = crown_bounds(layers, (3,), (-np.ones(3), np.ones(3)))
    assert np.all(up >= 0)


# ---------------------------------------------------------------------------
# the graph oracle (milp.lower_graph / graph_min, confirmed by exact.clause_margins) on every op family
# ---------------------------------------------------------------------------


def _rand(g, *shape, scale=1.0):
    import torch

    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def build_graph(n_in, steps):
    """A certify Graph from ``(name, op, inputs, params)`` steps (``inputs`` None: the previous output)."""
    import torch

    from certify.graph import Graph, Node

    from .milp import torch_forward

    shapes, prev, nodes = {"x": (n_in,)}, "x", []
    for name, op, inputs, params in steps:
        inputs = (prev,) if inputs is None else tuple(inputs)
        probe = [torch.zeros(1, *shapes[i], dtype=torch.float64) for i in inputs]
        node = Node(name, op, inputs, name, params, ())
        shape = tuple(torch_forward(node, *probe).shape[1:])
        nodes.append(Node(name, op, inputs, name, params, shape))
        shapes[name], prev = shape, name
    return Graph("x", (n_in,), tuple(nodes), prev, shapes[prev])


def family_graph(family: str, n_in: int, seed: int = 0):
    """A small network exercising one op family (input ``n_in`` entries, 3 outputs)."""
    import torch

    g = torch.Generator().manual_seed(1234 + seed)

    def dense(name, n, m, inputs=None, bias=True):
        p = {"weight": _rand(g, m, n, scale=1 / np.sqrt(n))}
        if bias:
            p["bias"] = _rand(g, m, scale=0.3)
        return (name, "linear", inputs, p)

    def lift(c, h, w):  # dense n_in -> (c, h, w)
        return [dense("lift", n_in, c * h * w), ("img", "reshape", None, {"shape": (c, h, w)})]

    def head(n):
        return [("flat", "reshape", None, {"shape": (n,)}), dense("out", n, 3)]

    if family == "dense":
        steps = [dense("l1", n_in, 6), ("r1", "relu", None, {}), dense("l2", 6, 5), ("r2", "relu", None, {}),
                 dense("l3", 5, 3)]
    elif family == "conv":
        conv1 = {"weight": _rand(g, 4, 1, 2, 3, scale=0.5), "bias": _rand(g, 4, scale=0.2), "stride": (2, 1),
                 "padding": (1, 0), "dilation": (1, 2), "groups": 2, "pre_pad": (1, 0, 0, 1)}
        conv2 = {"weight": _rand(g, 2, 4, 2, 2, scale=0.4), "stride": (1, 1), "padding": (0, 1),
                 "dilation": (1, 1), "groups": 1}
        steps = lift(2, 3, 4) + [("c1", "conv2d", None, conv1), ("r1", "relu", None, {}),
                                 ("c2", "conv2d", None, conv2), ("r2", "relu", None, {})]
        steps += head(int(np.prod(build_graph(n_in, steps).output_shape)))
    elif family == "batchnorm":
        scale = torch.tensor([1.7, -0.6], dtype=torch.float64).reshape(1, 2, 1, 1)
        steps = lift(2, 2, 2) + [
            ("bn", "affine", None, {"scale": scale, "shift": _rand(g, 1, 2, 1, 1, scale=0.3)}),
            ("lr", "leaky_relu", None, {"alpha": 0.2}),
            ("mul", "affine", None, {"scale": _rand(g, 1, 2, 2, 2)}),
            ("add", "affine", None, {"shift": _rand(g, 1, 2, 2, 2, scale=0.2)}),
            ("r", "relu", None, {})] + head(8)
    elif family == "avgpool":
        a1 = {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True, "count_include_pad": False}
        a2 = {"kernel": (2, 2), "stride": (2, 2), "padding": (1, 0), "ceil_mode": True, "count_include_pad": True}
        a3 = {"kernel": (2, 3), "stride": (1, 2), "padding": (0, 0), "ceil_mode": False, "count_include_pad": True,
              "pre_pad": (1, 0, 0, 1)}
        steps = lift(1, 4, 4) + [("r0", "relu", None, {}), ("a1", "avgpool2d", ["r0"], a1),
                                 ("a2", "avgpool2d", ["r0"], a2), ("a3", "avgpool2d", ["r0"], a3)]
        shapes = {s.name: s.shape for s in build_graph(n_in, steps).nodes}
        sizes = [int(np.prod(shapes[k])) for k in ("a1", "a2", "a3")]
        steps += [("f1", "reshape", ["a1"], {"shape": (sizes[0],)}), ("f2", "reshape", ["a2"], {"shape": (sizes[1],)}),
                  ("f3", "reshape", ["a3"], {"shape": (sizes[2],)}), ("cat", "concat", ["f1", "f2", "f3"], {"axis": 0}),
                  ("r1", "relu", None, {}), dense("out", sum(sizes), 3)]
    elif family == "maxpool":
        m1 = {"kernel": (2, 2), "stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "ceil_mode": True}
        m2 = {"kernel": (3, 2), "stride": (1, 2), "padding": (1, 0), "dilation": (2, 1), "ceil_mode": False,
              "pre_pad": (0, 1, 1, 0)}
        steps = lift(2, 3, 4) + [("m1", "maxpool2d", ["img"], m1), ("m2", "maxpool2d", ["img"], m2)]
        shapes = {s.name: s.shape for s in build_graph(n_in, steps).nodes}
        sizes = [int(np.prod(shapes[k])) for k in ("m1", "m2")]
        steps += [("f1", "reshape", ["m1"], {"shape": (sizes[0],)}), ("f2", "reshape", ["m2"], {"shape": (sizes[1],)}),
                  ("cat", "concat", ["f1", "f2"], {"axis": 0}), dense("h", sum(sizes), 5), ("r", "relu", None, {}),
                  dense("out", 5, 3)]
    elif family == "residual":
        steps = [dense("l1", n_in, 6), ("h", "relu", None, {}), dense("l2", 6, 6), ("gl", "leaky_relu", None, {"alpha": 0.3}),
                 ("sum", "add", ["gl", "h"], {}), dense("l3", 6, 6, inputs=["h"]), ("diff", "sub", ["sum", "l3"], {}),
                 ("r", "relu", None, {}), ("m", "reshape", None, {"shape": (2, 3)}),
                 ("t", "transpose", None, {"perm": (1, 0)}), ("tf", "reshape", None, {"shape": (6,)}),
                 ("id", "identity", None, {}), ("cat", "concat", ["id", "h"], {"axis": 0}), dense("out", 12, 3)]
    else:
        raise ValueError(family)
    return build_graph(n_in, steps)


FAMILIES = ("dense", "conv", "batchnorm", "avgpool", "maxpool", "residual")


class _Model:
    """The two attributes the oracle reads from a certify Model."""

    def __init__(self, graph):
        self.graph = graph
        self.input_shape = graph.input_shape


def _clause(rng, rows=2):
    import torch

    from certify.spec import Clause

    C = torch.tensor(rng.standard_normal((1, rows, 3)))
    d = torch.tensor(rng.uniform(-0.2, 0.2, (1, rows)))
    return Clause(C, d)


def _values(graph, X, clause):
    """``max_j (C_j f(x) - d_j)`` at the rows of ``X`` by certify's float64 forward pass."""
    import torch

    with torch.no_grad():
        Y = graph.to(dtype=torch.float64).forward(torch.as_tensor(X).reshape(-1, *graph.input_shape))
    return ((Y.reshape(len(X), -1) @ clause.C[0].T) - clause.d[0]).max(1).values.numpy()


def _refined_grid_min(graph, clause, lo, hi, n=161, keep=12, rounds=8):
    """Brute force on a 2-D box: a grid, then repeated zooms around the best points."""
    axes = [np.linspace(lo[i], hi[i], n) for i in range(2)]
    X = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    v = _values(graph, X, clause)
    h = (hi - lo) / (n - 1)
    best = X[np.argsort(v)[:keep]]
    out = float(v.min())
    for _ in range(rounds):
        pts = []
        for p in best:
            ax = [np.clip(np.linspace(p[i] - 2 * h[i], p[i] + 2 * h[i], 21), lo[i], hi[i]) for i in range(2)]
            pts.append(np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 2))
        X = np.concatenate(pts)
        v = _values(graph, X, clause)
        out = min(out, float(v.min()))
        best = X[np.argsort(v)[:keep]]
        h = h / 5
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(2))
def test_graph_oracle_equals_refined_grid_on_2d_inputs(family, seed):
    """2-D input, box: the oracle never exceeds the brute-force minimum, and matches it closely."""
    import torch

    from certify.sets import Box
    from certify.spec import Spec

    from .exact import clause_margins

    graph = family_graph(family, 2, seed)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1.0, 0.0, 2)
    hi = lo + rng.uniform(0.5, 1.5, 2)
    clause = _clause(rng)
    spec = Spec(Box(torch.tensor(lo)[None], torch.tensor(hi)[None]), (clause,))
    (value,) = clause_margins(_Model(graph), spec)
    brute = _refined_grid_min(graph, clause, lo, hi)
    assert value <= brute + 1e-9, (value, brute)
    assert brute - value <= 1e-6 * (1 + abs(value)), (value, brute)


def _sample_set(rng, kind, n_in, n=20_000):
    """An input set and samples of it (uniform, surface and vertices)."""
    import torch

    from certify.sets import Box, LpBall

    c = rng.uniform(-0.5, 0.5, n_in)
    if kind == "box":
        lo, hi = c - rng.uniform(0.1, 0.6, n_in), c + rng.uniform(0.1, 0.6, n_in)
        X = sample_box(rng, lo, hi, n)
        return Box(torch.tensor(lo)[None], torch.tensor(hi)[None]), X
    if kind == "linf":
        eps = 0.4
        clo, chi = c - 0.25, c + 1.0  # the clip box cuts the ball on one side
        X = np.clip(c + eps * sample_ball(rng, np.zeros(n_in), 1.0, np.inf, n), clo, chi)
        return LpBall(torch.tensor(c)[None], torch.tensor([eps]), math.inf,
                      clip=Box(torch.tensor(clo)[None], torch.tensor(chi)[None])), X
    eps = 1.2
    X = c + eps * sample_ball(rng, np.zeros(n_in), 1.0, 1, n)
    return LpBall(torch.tensor(c)[None], torch.tensor([eps]), 1.0), X


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["box", "linf", "l1"])
def test_graph_oracle_below_every_sample(family, kind):
    """6 inputs, box / clipped L-inf ball / L1 ball, two clauses of two rows: the oracle's value is at most
    every sampled value (sampling is an upper bound of the minimum) and its minimiser lies in the set."""
    import math as _m

    import torch

    from certify.spec import Spec

    from .exact import clause_margins

    seed = FAMILIES.index(family) * 3 + ["box", "linf", "l1"].index(kind)
    rng = np.random.default_rng(100 + seed)
    graph = family_graph(family, 6, seed)
    input_set, X = _sample_set(rng, kind, 6)
    clauses = (_clause(rng), _clause(rng, rows=3))
    # z3's confirmation takes minutes at 6 inputs (bignum rationals): the 2-D tests above run it
    values, xs = clause_margins(_Model(graph), Spec(input_set, clauses), cross_check=False, return_x=True)
    for value, x, clause in zip(values, xs, clauses):
        sampled = float(_values(graph, X, clause).min())
        assert value <= sampled + 1e-9, (value, sampled)
        assert bool(input_set.contains(torch.tensor(x)[None], atol=1e-7)[0])
        assert sampled - value <= 0.5 * (1 + abs(value))  # sampling in 6-D is loose, not absurdly so
    assert np.all(np.isfinite(values)) and not _m.isnan(values.sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_oracle_forward_matches_certify_forward(family):
    """The oracle's own op semantics (PyTorch functional calls) against certify's graph evaluation."""
    import torch

    from .milp import graph_forward

    graph = family_graph(family, 5, 7)
    X = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(graph_forward(graph, X), graph.forward(X), rtol=1e-12, atol=1e-12)


def test_graph_oracle_on_the_layer_format_equals_exact_min():
    """The graph oracle against the layer-format MILP above (two independent encodings) on dense nets."""
    import torch

    from certify.sets import Box
    from certify.spec import Clause, Spec

    from .exact import clause_margins

    for seed in range(4):
        rng, layers, shape, center, radius, n_out = mlp_case(seed)
        steps, n = [], shape[0]
        for k, layer in enumerate(layers):
            if layer[0] == "dense":
                steps.append((f"d{k}", "linear", None, {"weight": torch.tensor(layer[1]), "bias": torch.tensor(layer[2])}))
            else:
                steps.append((f"r{k}", "relu", None, {}))
        graph = build_graph(n, steps)
        c = rng.standard_normal(n_out)
        spec = Spec(Box(torch.tensor(center - radius)[None], torch.tensor(center + radius)[None]),
                    (Clause(torch.tensor(c)[None, None], torch.zeros(1, 1, dtype=torch.float64)),))
        (value,) = clause_margins(_Model(graph), spec, cross_check=False)  # z3 would take minutes here
        assert close(value, exact_min(layers, shape, center - radius, center + radius, c))


def test_graph_oracle_refuses_what_it_cannot_encode():
    import torch

    from certify.sets import Box
    from certify.spec import Clause, Spec

    from .exact import clause_margins
    from .milp import OracleError

    bad = family_graph("dense", 2)
    from dataclasses import replace

    bad = replace(bad, nodes=(replace(bad.nodes[0], op="tanh"),) + bad.nodes[1:])
    spec = Spec(Box(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)),
                (Clause(torch.ones(1, 1, 3, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)),))
    with pytest.raises(OracleError, match="tanh"):
        clause_margins(_Model(bad), spec)
    leaky = family_graph("residual", 2)
    idx = [n.op for n in leaky.nodes].index("leaky_relu")
    nodes = list(leaky.nodes)
    nodes[idx] = replace(nodes[idx], params={"alpha": 1.5})
    with pytest.raises(OracleError, match="slope"):
        clause_margins(_Model(replace(leaky, nodes=tuple(nodes))), spec)
