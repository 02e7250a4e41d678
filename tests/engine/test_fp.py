"""Floating-point soundness against exact rational arithmetic (``fractions.Fraction``).

The sound transforms must contain the exact real-arithmetic values; the fast transforms are shown to
miss them on cancellation-heavy inputs, which is what makes these tests able to fail.
"""
from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

from certify.engine import certify_margin, sound_interval_bounds
from certify.engine.fp import FAST, SOUND, gamma, path_factor, unit_roundoff
from certify.engine.rules import RULES
from certify.graph import Graph
from certify.sets import Box

from conftest import EXAMPLES, shared_dir


def _exact_linear_bounds(W, b, lo, hi):
    """Exact min and max of W x + b over the box, as Fractions."""
    out_lo, out_hi = [], []
    for i in range(len(W)):
        s_lo = Fraction(b[i])
        s_hi = Fraction(b[i])
        for w, l, u in zip(W[i], lo, hi):
            w = Fraction(w)
            s_lo += w * Fraction(l) if w >= 0 else w * Fraction(u)
            s_hi += w * Fraction(u) if w >= 0 else w * Fraction(l)
        out_lo.append(s_lo)
        out_hi.append(s_hi)
    return out_lo, out_hi


def _cancelling_layer(rng: random.Random, n_in: int, n_out: int):
    W = [[rng.choice([1e8, -1e8, 1.0, -3.0]) * (1 + rng.random()) for _ in range(n_in)] for _ in range(n_out)]
    b = [rng.uniform(-1e8, 1e8) for _ in range(n_out)]
    return W, b


def test_linear_rule_sound_against_exact_rationals_and_fast_mode_is_not():
    rng = random.Random(0)
    fast_misses = 0
    for trial in range(200):
        W, b = _cancelling_layer(rng, 7, 3)
        lo = [rng.uniform(-1, 1) for _ in range(7)]
        hi = [v + (0.0 if trial % 2 else rng.uniform(0, 1e-9)) for v in lo]
        params = {"weight": torch.tensor(W, dtype=torch.float64), "bias": torch.tensor(b, dtype=torch.float64)}
        box = Box(torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64))
        ex_lo, ex_hi = _exact_linear_bounds(W, b, lo, hi)
        sound = RULES["linear"].ibp(params, [box], SOUND)
        fast = RULES["linear"].ibp(params, [box], FAST)
        for i in range(3):
            assert Fraction(float(sound.lower[0, i])) <= ex_lo[i], "sound lower bound above the exact minimum"
            assert Fraction(float(sound.upper[0, i])) >= ex_hi[i], "sound upper bound below the exact maximum"
            fast_misses += Fraction(float(fast.lower[0, i])) > ex_lo[i] or Fraction(float(fast.upper[0, i])) < ex_hi[i]
    assert fast_misses > 0, "the exact check should catch plain floating point on these inputs"


def test_certify_margin_below_exact_minimum():
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(2, 6)
        C = [[rng.choice([1.0, -1.0, 0.1, 1e7, -1e7]) for _ in range(n)] for _ in range(2)]
        d = [rng.uniform(-1e7, 1e7) for _ in range(2)]
        lo = [rng.uniform(-10, 10) for _ in range(n)]
        hi = [v + rng.choice([0.0, rng.uniform(0, 1)]) for v in lo]
        margin = certify_margin(torch.tensor([C], dtype=torch.float64), torch.tensor([d], dtype=torch.float64),
                                Box(torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)))
        ex_lo, _ = _exact_linear_bounds(C, [-v for v in d], lo, hi)
        for j in range(2):
            assert Fraction(float(margin[0, j])) <= ex_lo[j]


def test_library_activations_against_high_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 200
    xs = torch.linspace(-30, 30, 2001, dtype=torch.float64).unsqueeze(0)
    box = Box(xs, xs.clone())
    exact = {
        "sigmoid": lambda v: 1 / (1 + mpmath.e ** (-mpmath.mpf(v))),
        "tanh": lambda v: mpmath.tanh(mpmath.mpf(v)),
    }
    for op, f in exact.items():
        out = RULES[op].ibp({}, [box], SOUND)
        for i in range(0, xs.shape[1], 7):
            v = f(float(xs[0, i]))
            assert mpmath.mpf(float(out.lower[0, i])) <= v <= mpmath.mpf(float(out.upper[0, i])), (op, float(xs[0, i]))


def test_gamma_grows_with_length():
    assert gamma(1, torch.float64) < gamma(100, torch.float64) < 1e-13
    with pytest.raises(ValueError):
        gamma(2**60, torch.float64)


def test_error_bound_covers_a_magnitude_that_was_itself_computed_low():
    """An error bound is ``gamma_n`` times a magnitude that the engine *computes* (a nonnegative dot product,
    rounded to nearest), so it can come out low by up to ``gamma_k`` relative for a length-``k`` sum. Here a
    left-to-right sum of ``1`` and ``10**5`` terms of ``2**-54`` rounds to exactly ``1.0``: a factor of a few
    unit roundoffs (the ``1 + 4u`` this rule once used) does not cover the lost ``5.6e-12``; ``path_factor``
    must, and so must ``error_bound`` against the exact magnitude."""
    terms = [1.0] + [2.0 ** -54] * 10 ** 5
    computed = 0.0
    for t in terms:
        computed += t
    exact = sum((Fraction(t) for t in terms), Fraction(0))
    assert computed == 1.0 and exact > Fraction(computed) * (1 + 4 * Fraction(unit_roundoff(torch.float64)))
    assert Fraction(computed) * Fraction(path_factor(torch.float64)) >= exact
    n = 784
    bound = SOUND.error_bound(torch.tensor([computed], dtype=torch.float64), n)
    u = Fraction(unit_roundoff(torch.float64))
    exact_gamma = n * u / (1 - n * u)
    assert Fraction(float(bound[0])) >= exact_gamma * exact
    # the worst case the argument allows at a longer path: computed = exact (1 - gamma_k)
    for k in (10 ** 3, 10 ** 6, 2 ** 30):
        low = float(Fraction(1) * (1 - Fraction(gamma(k, torch.float64))))
        bound = SOUND.error_bound(torch.tensor([low], dtype=torch.float64), n)
        assert Fraction(float(bound[0])) >= exact_gamma
    with pytest.raises(ValueError):  # float32 is too short for this argument: refused, not guessed
        path_factor(torch.float32)


def _exact_forward(graph: Graph, x: list[Fraction]) -> list[Fraction]:
    """Exact rational evaluation of an MLP graph (linear / affine / relu / reshape only)."""
    v = x
    for node in graph.nodes:
        p = node.params
        if node.op == "linear":
            W = p["weight"].tolist()
            b = p["bias"].tolist() if p.get("bias") is not None else [0.0] * len(W)
            v = [sum((Fraction(w) * xi for w, xi in zip(row, v)), Fraction(bi)) for row, bi in zip(W, b)]
        elif node.op == "relu":
            v = [max(Fraction(0), t) for t in v]
        elif node.op == "reshape":
            pass
        elif node.op == "affine":
            n = len(v)
            s = p.get("scale")
            t = p.get("shift")
            s = [1.0] * n if s is None else s.expand(node.shape).reshape(-1).tolist()
            t = [0.0] * n if t is None else t.expand(node.shape).reshape(-1).tolist()
            v = [Fraction(si) * vi + Fraction(ti) for si, vi, ti in zip(s, v, t)]
        else:
            raise AssertionError(f"exact evaluator lacks {node.op}")
    return v


def _check_point_boxes(graph: Graph, points: torch.Tensor):
    for x in points:
        xb = x.unsqueeze(0).to(torch.float64)
        exact = _exact_forward(graph, [Fraction(float(t)) for t in xb.reshape(-1)])
        out = sound_interval_bounds(graph, Box(xb, xb.clone()))
        for i, e in enumerate(exact):
            assert Fraction(float(out.lower[0, i])) <= e <= Fraction(float(out.upper[0, i]))


def test_sound_ibp_contains_exact_output_of_bundled_model():
    from certify.models import load_model

    model = load_model(EXAMPLES / "digits" / "digits_mlp.onnx")
    points = torch.rand(5, *model.input_shape, dtype=torch.float64)
    _check_point_boxes(model.graph, points)


def test_sound_ibp_contains_exact_output_of_acasxu():
    from certify.models import load_model

    root = shared_dir("acasxu")
    model = load_model(root / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    points = torch.rand(3, *model.input_shape, dtype=torch.float64) - 0.5
    _check_point_boxes(model.graph, points)
