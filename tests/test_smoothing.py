"""Randomized smoothing against ground truth.

For a two-class *linear* classifier ``f(x) = argmax(W x + b)`` with Gaussian noise, the smoothed
classifier equals ``f`` and its exact L2 robustness radius at ``x`` is the distance to the decision
hyperplane, ``|m(x)| / ||w||`` with ``m = (W_0 - W_1) x + b_0 - b_1`` and ``w = W_0 - W_1``.
A certified radius larger than that is a failure of the certificate; Cohen et al.'s procedure allows
such failures with probability at most ``alpha`` per certification, which is what is tested, over
>= 1000 independent certifications. Radii are recomputed from the reported counts with an independent
evaluation of the formula (a root of the binomial tail for Clopper-Pearson, the standard library's
normal quantile).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import binom

from certify import api
from certify.budget import Budget
from certify.models import from_module
from certify.results import Guarantee, Result, Verdict
from certify.sets import Box
from certify.smoothing import Smoothed, example_generator
from certify.spec import Clause, Property, Spec, robustness, targeted
from certify.vnncomp import answer
from verifiers.smoothing import Smoothing, SmoothingOptions, robustness_label

D = 5


def linear_model(seed: int = 0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(D, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, D))
        lin.bias.copy_(torch.randn(2))
    w = (lin.weight[0] - lin.weight[1]).detach().double()
    c = float((lin.bias[0] - lin.bias[1]).detach())
    return from_module(lin, (D,)), w, c


def point_at(w: torch.Tensor, c: float, signed_distance: float, seed: int) -> torch.Tensor:
    """A point whose margin m(x) = w.x + c equals ``signed_distance * ||w||`` (class 0 when positive)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, generator=g, dtype=torch.float64)
    unit = w / w.norm()
    base = base - (base @ unit) * unit - c * w / (w @ w)  # on the hyperplane
    return base + signed_distance * unit


def independent_radius(k: int, n: int, alpha: float, sigma: float, tv: float = 0.0) -> float:
    """Clopper-Pearson lower bound as the root of P[Bin(n, p) >= k] = alpha, less the sampler's
    total-variation bound, then sigma * Phi^-1."""
    if k == n:
        p = alpha ** (1.0 / n)
    else:
        p = brentq(lambda q: binom.sf(k - 1, n, q) - alpha, 1e-12, 1 - 1e-12, xtol=1e-15, rtol=1e-14)
    return sigma * NormalDist().inv_cdf(p - tv)


@pytest.mark.parametrize("alpha, factorize", [(0.05, True), (0.05, False), (0.001, True)])
def test_certified_radius_exceeds_the_true_radius_at_most_alpha_of_the_time(alpha, factorize):
    model, w, c = linear_model()
    sigma, n0, n, trials = 0.5, 50, 400, 1200
    g = Smoothed.of_model(model, sigma, factorize=factorize)
    assert (g.first_layer is not None) == factorize  # 2 outputs < 5 inputs: the noise goes through the layer
    rng = np.random.default_rng(1)
    p_true = rng.uniform(0.55, 0.9995, trials)  # P(f(x + eps) = class 0) = Phi(distance / sigma)
    distances = sigma * np.array([NormalDist().inv_cdf(p) for p in p_true])
    failures, certified = 0, 0
    for i, dist in enumerate(distances):
        x = point_at(w, c, float(dist), seed=i)
        cert = g.certify(x, n0, n, alpha, batch=256, generator=example_generator(7, i))
        if cert.abstained:
            continue
        certified += 1
        true_radius = abs(float(w @ x + c)) / float(w.norm())
        failures += cert.label != 0 or cert.radius > true_radius
        # the radius is the formula's, evaluated independently from the reported count
        want = independent_radius(cert.top_count, n, alpha, sigma, g.sampling_tv)
        assert cert.radius == pytest.approx(want, rel=1e-7, abs=1e-9)
    assert certified > trials / 2  # the test has power: most points are far enough to certify
    # binomial tolerance: a failure rate of alpha would exceed this count with probability < 1e-4
    limit = binom.ppf(1 - 1e-4, trials, alpha)
    assert failures <= limit, f"{failures} of {trials} certified radii exceed the true radius (alpha={alpha})"


def test_a_point_estimate_instead_of_the_confidence_bound_would_fail_the_validity_test():
    """The validity test can fail: plugging the empirical frequency into the radius formula (no
    confidence bound) exceeds the true radius about half the time on the same points."""
    model, w, c = linear_model()
    sigma, n, trials = 0.5, 400, 300
    g = Smoothed.of_model(model, sigma)
    failures = 0
    for i in range(trials):
        x = point_at(w, c, 0.4, seed=i)
        k = int(g.counts(x, n, generator=example_generator(3, i))[0])
        naive = sigma * NormalDist().inv_cdf(min(k / n, 1 - 1e-9))
        failures += naive > 0.4
    assert failures > binom.ppf(1 - 1e-4, trials, 0.05)


def test_predict_abstains_on_the_boundary_and_answers_far_from_it():
    model, w, c = linear_model()
    g = Smoothed.of_model(model, 0.5)
    on_boundary = [g.predict(point_at(w, c, 0.0, seed=i), 400, 0.01, generator=example_generator(0, i))
                   for i in range(60)]
    assert sum(p.abstained for p in on_boundary) >= 50  # a rejection at p = 1/2 has probability <= alpha
    assert all(p.label is None for p in on_boundary if p.abstained)
    far = g.predict(point_at(w, c, -2.0, seed=0), 400, 0.001, generator=example_generator(0, 0))
    assert far.label == 1 and not far.abstained and far.pvalue <= 0.001 and sum(far.counts) == 400


def test_abstention_is_a_result_with_no_label():
    model, w, c = linear_model()
    cert = Smoothed.of_model(model, 0.5).certify(point_at(w, c, 0.0, seed=0), 50, 200, 0.001)
    assert cert.abstained and cert.label is None and cert.radius == 0.0 and cert.p_lower <= 0.5
    assert cert.claim().startswith("abstained")


def test_sampling_is_reproducible_per_seed_and_example():
    model, w, c = linear_model()
    g = Smoothed.of_model(model, 0.5)
    x = point_at(w, c, 0.1, seed=0)
    a = g.counts(x, 5000, batch=777, generator=example_generator(5, 3))
    b = g.counts(x, 5000, batch=777, generator=example_generator(5, 3))
    other = g.counts(x, 5000, batch=777, generator=example_generator(5, 4))
    assert torch.equal(a, b) and not torch.equal(a, other) and int(a.sum()) == 5000


def test_counts_match_the_exact_class_probability():
    """P(f(x + eps) = 0) = Phi(distance / sigma) for the linear classifier; 200000 samples estimate
    it to within 5 standard errors."""
    model, w, c = linear_model()
    g = Smoothed.of_model(model, 0.5)
    x = point_at(w, c, 0.3, seed=0)
    n = 200_000
    k = int(g.counts(x, n, generator=example_generator(0, 0))[0])
    p = NormalDist().cdf(0.3 / 0.5)
    assert abs(k / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_sampling_through_the_first_layer_has_the_exact_class_probability():
    """A linear network 20 -> 6 -> 2 (no activation): f(x + eps) picks class 0 with probability
    Phi(m(x) / (sigma ||w||)) for the end-to-end row difference w. The factorised sampler (6 Gaussians
    instead of 20) and the plain one both estimate it to within 5 standard errors."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(20, 6), torch.nn.Linear(6, 2))
    model = from_module(net, (20,))
    with torch.no_grad():
        W = (net[1].weight @ net[0].weight).double()
        bias = (net[1].weight @ net[0].bias + net[1].bias).double()
    w, c = W[0] - W[1], float(bias[0] - bias[1])
    x = torch.randn(20, dtype=torch.float64) * 0.1
    sigma, n = 0.3, 200_000
    p = NormalDist().cdf(float(w @ x + c) / (sigma * float(w.norm())))
    for factorize in (True, False):
        g = Smoothed.of_model(model, sigma, factorize=factorize)
        assert (g.first_layer is not None) == factorize
        k = int(g.counts(x, n, generator=example_generator(1, 0))[0])
        assert abs(k / n - p) < 5 * math.sqrt(p * (1 - p) / n), (factorize, k / n, p)


def test_sampling_through_a_relu_network_agrees_with_input_space_sampling():
    """Two-sample check on an MLP with ReLUs: per class, the factorised and the plain sampler's
    frequencies differ by less than 5 standard errors of the difference."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model = from_module(net, (30,))
    x, n = torch.randn(30) * 0.2, 200_000
    a = Smoothed.of_model(model, 0.4).counts(x, n, generator=example_generator(0, 0)).double() / n
    b = Smoothed.of_model(model, 0.4, factorize=False).counts(x, n, generator=example_generator(0, 1)).double() / n
    se = torch.sqrt((a * (1 - a) + b * (1 - b)) / n).clamp_min(1e-6)
    assert bool(((a - b).abs() < 5 * se).all()), (a, b)


def test_the_first_layer_factor_is_refused_when_it_is_not_cheaper_or_not_well_posed():
    from certify.smoothing import first_layer_factor

    model = from_module(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), (4,))
    assert Smoothed.of_model(model, 0.5).first_layer is None  # 8 outputs > 4 inputs: sample the inputs
    singular = torch.ones(3, 10)
    assert first_layer_factor(singular, torch.float32) is None
    factor, tv = first_layer_factor(torch.randn(3, 10), torch.float32)
    assert factor.dtype == torch.float32 and 0 < tv < 1e-5


def test_bad_smoothing_arguments_are_errors():
    from certify.errors import CertifyError, ShapeError

    model, _, _ = linear_model()
    with pytest.raises(CertifyError, match="sigma"):
        Smoothed.of_model(model, 0.0)
    g = Smoothed.of_model(model, 0.5)
    with pytest.raises(CertifyError, match="alpha"):
        g.certify(torch.zeros(D), alpha=1.5)
    with pytest.raises(ShapeError, match=r"\(5,\)"):
        g.counts(torch.zeros(D + 1), 10)


# ---------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------


def l2_property(x, label, eps, p=2):
    return Property("r", (robustness(x.reshape(1, D), [label], eps, p, n_classes=2),))


def test_backend_proves_a_ball_inside_the_true_radius_with_a_probabilistic_claim():
    model, w, c = linear_model()
    x = point_at(w, c, 1.0, seed=0)  # true radius 1.0; sigma 0.5, n = 100000 certifies about 1.0 * 0.9
    opts = SmoothingOptions(sigma=0.5)
    r = api.verify(model, l2_property(x, 0, 0.5), "smoothing", options=opts)
    assert r.verdict is Verdict.PROVED and r.guarantee is Guarantee.PROBABILISTIC
    assert "smoothed classifier g" in r.claim and "0.999" in r.claim and "not about the base network" in r.claim
    assert r.stats["alpha"] == 0.001 and 0.5 < r.stats["radius"] < 1.0
    assert r.to_dict()["claim"] == r.claim
    assert answer([r]) == "unknown"  # never a VNN-COMP unsat: it is not a statement about the network
    # outside the true radius: never proved
    out = api.verify(model, l2_property(x, 0, 1.05), "smoothing", options=opts)
    assert out.verdict is Verdict.UNKNOWN and "radius" in out.reason
    # the wrong label: unknown, never falsified (g's prediction is not a counterexample of f)
    wrong = api.verify(model, l2_property(x, 1, 0.1), "smoothing", options=opts)
    assert wrong.verdict is Verdict.UNKNOWN and "predicts class 0" in wrong.reason


def test_backend_encloses_linf_balls_and_boxes_in_l2_balls():
    model, w, c = linear_model()
    x = point_at(w, c, 1.0, seed=0)
    opts = SmoothingOptions(sigma=0.5)
    # an L-inf ball of eps lies in the L2 ball of eps * sqrt(D)
    r = api.verify(model, l2_property(x, 0, 0.3, p="inf"), "smoothing", options=opts)
    assert r.verdict is Verdict.PROVED and r.stats["required_radius"] == pytest.approx(0.3 * math.sqrt(D))
    r = api.verify(model, l2_property(x, 0, 0.5, p="inf"), "smoothing", options=opts)
    assert r.verdict is Verdict.UNKNOWN  # 0.5 * sqrt(5) > 1: not implied by any L2 certificate


def test_backend_refuses_what_it_cannot_state():
    model, w, c = linear_model()
    x = point_at(w, c, 1.0, seed=0).reshape(1, D)
    margin = Spec(Box(x - 0.1, x + 0.1), (Clause(torch.tensor([[1.0, 0.0]]), torch.tensor([3.0])),))
    r = api.verify(model, Property("margin", (margin,)), "smoothing")
    assert r.verdict is Verdict.UNKNOWN and "local robustness only" in r.reason
    three = targeted(torch.zeros(1, 4), [0], [2], 0.1, n_classes=3)
    assert robustness_label(three) is None  # one target of two others: not "every other class"
    assert robustness_label(robustness(torch.zeros(1, 4), [2], 0.1, n_classes=3)) == 2


def test_backend_timeout_is_unknown_with_the_reason():
    model, w, c = linear_model()
    x = point_at(w, c, 1.0, seed=0)
    r = Smoothing().verify(model, l2_property(x, 0, 0.1), options=SmoothingOptions(sigma=0.5), budget=Budget(0.0))
    assert r.verdict is Verdict.UNKNOWN and r.reason == "timeout"


def test_a_probabilistic_proof_must_state_its_claim():
    with pytest.raises(ValueError, match="claim"):
        Result(Verdict.PROVED, "smoothing", 0.0, guarantee=Guarantee.PROBABILISTIC)


def test_certified_accuracy_counts_correct_and_large_enough():
    from certify.smooth_report import certified_accuracy

    pairs = [(True, 0.5), (True, 0.0), (False, 2.0), (True, 1.0)]
    assert certified_accuracy([0.0, 0.5, 0.75, 1.0, 1.5], pairs) == [0.75, 0.5, 0.25, 0.25, 0.0]


def test_noise_is_sampled_in_the_precision_of_the_model_runtime(tmp_path):
    """A float64 ONNX model is smoothed in float64 (the runtime's precision), a float32 one in float32;
    both give the exact class probability of the linear classifier."""
    import warnings

    from certify.models import load_model

    torch.manual_seed(0)
    lin = torch.nn.Linear(D, 2).double()
    w = (lin.weight[0] - lin.weight[1]).detach()
    c = float((lin.bias[0] - lin.bias[1]).detach())
    path = tmp_path / "lin64.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lin, (torch.zeros(1, D, dtype=torch.float64),), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"], opset_version=17)
    x = point_at(w, c, 0.2, seed=0)
    p = NormalDist().cdf(0.2 / 0.5)
    n = 100_000
    for model, dtype in ((load_model(path), torch.float64), (linear_model()[0], torch.float32)):
        g = Smoothed.of_model(model, 0.5, factorize=False)
        assert g.dtype == dtype
    g = Smoothed.of_model(load_model(path), 0.5)
    k = int(g.counts(x, n, generator=example_generator(0, 0))[0])
    assert abs(k / n - p) < 5 * math.sqrt(p * (1 - p) / n)
