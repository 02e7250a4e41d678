"""Input sets and specs against closed forms and sampling."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.errors import ShapeError, SpecError
from certify.sets import Box, LpBall, parse_norm
from certify.spec import Clause, Spec, robustness, targeted

NORMS = [math.inf, 2.0, 1.0]


def _ball(p, B=2, d=6, clip=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(B, d, generator=g, dtype=torch.float64)
    eps = torch.rand(B, generator=g, dtype=torch.float64) * 0.5 + 0.05
    box = Box(torch.zeros_like(c), torch.ones_like(c)) if clip else None
    return LpBall(c, eps, p, box)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("clip", [False, True])
def test_samples_and_projections_lie_in_the_set(p, clip):
    ball = _ball(p, clip=clip)
    pts = ball.sample(2000, generator=torch.Generator().manual_seed(1))
    corners = ball.sample(500, generator=torch.Generator().manual_seed(2), corners=True)
    assert bool(ball.contains(pts, atol=1e-12).all()) and bool(ball.contains(corners, atol=1e-12).all())
    far = ball.center + 3 * torch.randn(100, *ball.center.shape, dtype=torch.float64)
    assert bool(ball.contains(ball.project(far), atol=1e-12).all())
    assert not bool(ball.contains(far).all())
    box = ball.bounds()
    assert bool(box.contains(pts).all())


@pytest.mark.parametrize("p", NORMS)
def test_support_function_matches_closed_form_and_bounds_samples(p):
    ball = _ball(p, clip=False)
    A = torch.randn(2, 3, 6, dtype=torch.float64)
    upper, lower = ball.support(A, +1), ball.support(A, -1)
    q = {math.inf: 1, 2.0: 2, 1.0: math.inf}[p]
    dual = torch.linalg.vector_norm(A, ord=q, dim=-1)
    expect = (A * ball.center.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(upper, expect + ball.eps.unsqueeze(1) * dual)
    torch.testing.assert_close(lower, expect - ball.eps.unsqueeze(1) * dual)
    pts = ball.sample(5000, corners=False)
    vals = torch.einsum("brd,nbd->nbr", A, pts)
    assert bool((vals <= upper + 1e-9).all()) and bool((vals >= lower - 1e-9).all())


@pytest.mark.parametrize("p", NORMS)
def test_support_with_clip_is_valid_and_attained_for_inf(p):
    ball = _ball(p, clip=True)
    A = torch.randn(2, 4, 6, dtype=torch.float64)
    pts = torch.cat([ball.sample(5000), ball.sample(2000, corners=True)])
    vals = torch.einsum("brd,nbd->nbr", A, pts)
    upper = ball.support(A, +1)
    assert bool((vals <= upper + 1e-9).all())
    if p == math.inf:  # box ∩ box is a box: the support is attained at a corner
        box = ball.bounds()
        best = torch.where(A > 0, box.upper.unsqueeze(1), box.lower.unsqueeze(1))
        torch.testing.assert_close(upper, (A * best).sum(-1), atol=1e-9, rtol=1e-9)


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=8), st.floats(0.0, 3.0))
@settings(max_examples=60, deadline=None)
def test_l1_projection_is_the_euclidean_projection(values, eps):
    x = torch.tensor([values], dtype=torch.float64)
    ball = LpBall(torch.zeros_like(x), eps, 1.0)
    proj = ball.project(x)
    assert float(proj.abs().sum()) <= eps + 1e-9
    # optimality: no sampled feasible point is closer to x
    cands = ball.sample(400, generator=torch.Generator().manual_seed(0))[:, 0]
    assert float((proj - x).norm()) <= float((cands - x).norm(dim=-1).min()) + 1e-9


def test_robustness_spec_semantics():
    x = torch.rand(3, 4, dtype=torch.float64)
    spec = robustness(x, [0, 2, 1], 0.1, "inf", n_classes=3, clip=(0, 1))
    assert spec.batch_size == 3 and len(spec.unsafe) == 2 and spec.n_inputs == 4 and spec.n_outputs == 3
    y = torch.tensor([[5.0, 1.0, 1.0], [0.0, 2.0, 3.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    # instance 0: label 0 wins -> safe; 1: label 2 wins -> safe; 2: tie between 0 and label 1 -> unsafe (>=)
    assert spec.violated_by(y).tolist() == [False, False, True]
    margins = spec.clause_margins(y)
    assert margins.shape == (3, 2)
    assert float(margins[0].min()) == 4.0


def test_targeted_and_errors():
    x = torch.zeros(1, 2, dtype=torch.float64)
    spec = targeted(x, 1, 0, 0.5, 2, n_classes=3)
    assert spec.violated_by(torch.tensor([[2.0, 1.0, 9.0]], dtype=torch.float64)).item()
    assert not spec.violated_by(torch.tensor([[0.0, 1.0, 9.0]], dtype=torch.float64)).item()
    with pytest.raises(SpecError):
        targeted(x, 1, 1, 0.5, n_classes=3)
    with pytest.raises(SpecError):
        robustness(x, [5], 0.1, n_classes=3)
    with pytest.raises(SpecError):
        robustness(x, [0], -0.1, n_classes=3)
    with pytest.raises(SpecError, match="clip"):
        robustness(x + 2, [0], 0.1, n_classes=3, clip=(0, 1))
    with pytest.raises(ShapeError, match="expected 1, got 2"):
        robustness(x, [0, 1], 0.1, n_classes=3)
    with pytest.raises(SpecError):
        parse_norm("3")
    assert parse_norm("Linf") == math.inf and parse_norm(2) == 2.0


def test_disjunction_of_clauses_and_box():
    box = Box(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))
    c1 = Clause(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64))
    c2 = Clause(torch.tensor([[-1.0, 0.0]], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64))
    spec = Spec(box, (c1, c2))
    y = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [6.0, 1.0]], dtype=torch.float64).unsqueeze(1)
    # c1: y0 <= 0 and y1 <= 0 ; c2: y0 >= 5
    assert spec.violated_by(y)[:, 0].tolist() == [True, False, True]
    C, d, idx = spec.matrix()
    assert C.shape == (1, 3, 2) and idx.tolist() == [0, 0, 1]
