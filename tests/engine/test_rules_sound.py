"""Every rule in the table, present and future, is checked by sampling: its IBP box contains the op's
output on >= 10,000 points of random input boxes (uniform points and box corners), including
degenerate boxes (l == u) and boxes straddling zero. A new op is covered without a new test, and an
op without an ``example`` fails here."""
from __future__ import annotations

import pytest
import torch

from certify.engine.fp import FAST, SOUND
from certify.engine.rules import RULES
from certify.sets import Box

N_SAMPLES = 10_000
TOL = 1e-12  # samples are computed in float64 too; the rules under test err by orders more when wrong


def _random_box(shape, domain, gen, mode):
    lo, hi = domain
    a = lo + (hi - lo) * torch.rand((1, *shape), generator=gen, dtype=torch.float64)
    if mode == "degenerate":
        return Box(a, a.clone())
    if mode == "straddle":
        w = torch.rand((1, *shape), generator=gen, dtype=torch.float64) * (hi - lo) / 4
        c = (torch.rand((1, *shape), generator=gen, dtype=torch.float64) - 0.5) * w
        return Box(c - w, c + w)
    b = lo + (hi - lo) * torch.rand((1, *shape), generator=gen, dtype=torch.float64)
    return Box(torch.minimum(a, b), torch.maximum(a, b))


def _points(box: Box, gen) -> torch.Tensor:
    uniform = box.sample(N_SAMPLES // 2, generator=gen)[:, 0]
    corners = box.sample(N_SAMPLES // 2, generator=gen, corners=True)[:, 0]
    return torch.cat([uniform, corners, box.lower, box.upper])


@pytest.mark.parametrize("op", sorted(RULES))
@pytest.mark.parametrize("mode", ["wide", "straddle", "degenerate"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["plain", "stacked"])
def test_ibp_contains_sampled_outputs(op, mode, seed, layout):
    """``stacked``: the end points arrive as one ``[2, B, ...]`` tensor (``Box.from_stacked``), the form
    the fast transforms pass between layers."""
    rule = RULES[op]
    gen = torch.Generator().manual_seed(1000 * seed + len(op))
    params, shapes = rule.example(gen)
    boxes = [_random_box(s, rule.domain, gen, mode) for s in shapes]
    xs = [_points(b, gen) for b in boxes]
    n = min(x.shape[0] for x in xs)
    y = rule.forward(params, *[x[:n] for x in xs])
    assert y.shape[0] == n
    if layout == "stacked":
        boxes = [Box.from_stacked(torch.stack([b.lower, b.upper])) for b in boxes]
    for rounding in (FAST, SOUND):
        out = rule.ibp(params, boxes, rounding)
        assert out.lower.shape == (1, *y.shape[1:]), (op, out.lower.shape, y.shape)
        scale = 1 + y.abs()
        assert bool((y >= out.lower - TOL * scale).all()), f"{op}: a sample fell below the IBP lower bound"
        assert bool((y <= out.upper + TOL * scale).all()), f"{op}: a sample rose above the IBP upper bound"
        assert bool((out.lower <= out.upper).all())


@pytest.mark.parametrize("op", sorted(RULES))
def test_sound_box_contains_fast_box(op):
    """Sound mode only ever widens: it must contain the plain floating-point transform."""
    rule = RULES[op]
    gen = torch.Generator().manual_seed(7)
    params, shapes = rule.example(gen)
    boxes = [_random_box(s, rule.domain, gen, "wide") for s in shapes]
    fast, sound = rule.ibp(params, boxes, FAST), rule.ibp(params, boxes, SOUND)
    assert bool((sound.lower <= fast.lower).all()) and bool((sound.upper >= fast.upper).all())


def test_relaxations_are_tight_on_points():
    """On a degenerate box, IBP of an exact op returns the point itself (no spurious width)."""
    x = torch.tensor([[-1.5, 0.0, 2.0]], dtype=torch.float64)
    out = RULES["relu"].ibp({}, [Box(x, x)], SOUND)
    assert torch.equal(out.lower, torch.relu(x)) and torch.equal(out.upper, torch.relu(x))


RELAXED = sorted(op for op, rule in RULES.items() if rule.relax is not None)


@pytest.mark.parametrize("op", RELAXED)
@pytest.mark.parametrize("mode", ["wide", "straddle", "degenerate", "narrow"])
def test_relaxation_sandwiches_the_function(op, mode):
    """``lw z + lb <= f(z) <= uw z + ub`` on [l, u] for sampled z, with CROWN's and random alpha slopes."""
    rule = RULES[op]
    gen = torch.Generator().manual_seed(11)
    params, shapes = rule.example(gen)
    lo, hi = rule.domain
    if mode == "narrow":
        l = (lo + (hi - lo) * torch.rand((1, 200), generator=gen, dtype=torch.float64))
        box = Box(l, l + 1e-7 * torch.rand_like(l))
    else:
        box = _random_box((200,), rule.domain, gen, "straddle" if mode == "straddle" else mode)
    z = torch.cat([box.sample(1000, generator=gen)[:, 0], box.lower, box.upper])
    fz = rule.forward(params, z)
    for rnd in (FAST, SOUND):
        alphas = [None] + ([torch.rand((1, 3, 200), generator=gen, dtype=torch.float64)] if rule.alpha else [])
        for alpha in alphas:
            rel = rule.relax(params, box.lower, box.upper, rnd, alpha)
            if alpha is not None:  # per-row slopes: check each row
                for r in range(alpha.shape[1]):
                    low = rel.lw[:, r] * z + rel.lb
                    assert bool((low <= fz + TOL * (1 + fz.abs())).all()), f"{op}: lower line above f"
            else:
                low = rel.lw * z + rel.lb
                assert bool((low <= fz + TOL * (1 + fz.abs())).all()), f"{op}: lower line above f"
            up = rel.uw * z + rel.ub
            assert bool((up >= fz - TOL * (1 + fz.abs())).all()), f"{op}: upper line below f"


def test_sound_sigmoid_tanh_relaxations_against_high_precision():
    """Under sound rounding the relaxation lines hold for the exact function (200-bit mpmath)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 200
    exact = {"sigmoid": lambda v: 1 / (1 + mpmath.e ** (-v)), "tanh": mpmath.tanh}
    gen = torch.Generator().manual_seed(5)
    for op, f in exact.items():
        l = torch.randn((1, 60), generator=gen, dtype=torch.float64) * 5
        w = torch.rand((1, 60), generator=gen, dtype=torch.float64) ** 4 * 10
        rel = RULES[op].relax({}, l, l + w, SOUND, None)
        for i in range(60):
            lw, lb, uw, ub = (mpmath.mpf(float(t[0, i])) for t in (rel.lw, rel.lb, rel.uw, rel.ub))
            a, b = float(l[0, i]), float(l[0, i] + w[0, i])
            for k in range(41):
                zz = mpmath.mpf(a) + (mpmath.mpf(b) - mpmath.mpf(a)) * k / 40
                fz = f(zz)
                assert lw * zz + lb <= fz <= uw * zz + ub, (op, a, b, k)


def test_fast_interval_bounds_of_a_batch_equal_those_of_each_instance():
    """The fast transform keeps end points stacked across layers; instances must not mix."""
    from certify.engine import interval_bounds
    from certify.models import load_model

    from conftest import EXAMPLES

    graph = load_model(EXAMPLES / "digits" / "digits_mlp.onnx").graph.to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, *graph.input_shape, generator=gen, dtype=torch.float64)
    r = torch.rand(5, *graph.input_shape, generator=gen, dtype=torch.float64) * 0.1
    batch = interval_bounds(graph, Box(x - r, x + r), FAST)
    for i in range(5):
        one = interval_bounds(graph, Box(x[i:i + 1] - r[i:i + 1], x[i:i + 1] + r[i:i + 1]), FAST)
        torch.testing.assert_close(batch.lower[i:i + 1], one.lower, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batch.upper[i:i + 1], one.upper, rtol=1e-12, atol=1e-12)
    y = graph.forward(x.unsqueeze(0).expand(2000, -1, -1).reshape(-1, *graph.input_shape)
                      + (torch.rand(2000 * 5, *graph.input_shape, generator=gen, dtype=torch.float64) * 2 - 1)
                      * r.repeat(2000, *(1,) * len(graph.input_shape))).reshape(2000, 5, -1)
    assert bool((y >= batch.lower - 1e-9).all()) and bool((y <= batch.upper + 1e-9).all())
