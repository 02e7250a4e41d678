"""Randomized smoothing (Cohen, Rosenfeld and Kolter, 2019): probabilistic L2 certificates.

Given a base classifier ``f`` and a noise level ``sigma``, the *smoothed* classifier is

    g(x) = argmax_c  P_{eps ~ N(0, sigma^2 I)} [ f(x + eps) = c ].

If the top class has probability ``p_A >= pA_lower > 1/2``, then ``g(x + delta) = g(x)`` for every
``||delta||_2 < R = sigma * Phi^-1(pA_lower)`` (their Theorem 1 with ``p_B = 1 - p_A``).

``certify`` estimates ``pA_lower`` by Monte Carlo: ``n0`` samples *select* the top class, ``n``
fresh samples *estimate* its probability, and ``pA_lower`` is the one-sided Clopper-Pearson lower
confidence bound at level ``1 - alpha``. ``predict`` returns the top class of ``n`` samples unless a
two-sided binomial test of the top two counts cannot reject ``p = 1/2`` at level ``alpha``.

**The guarantee is probabilistic and about g, not f**: with probability at least ``1 - alpha`` over
the sampling, a returned radius is a true robustness radius of ``g``. It says nothing about the
base network ``f`` on any particular input. ``g`` is defined by ``f`` as this module evaluates it:
the graph in the model's runtime dtype on ``device``, at the float32 (or runtime dtype) points
``fl(x + eps)``; that rounding of the noisy input is the only floating-point assumption.

**Sampling through the first layer.** When the network starts (after reshapes) with a linear layer
``h = W x + b`` with fewer outputs than inputs, ``W (x + eps)`` is drawn directly as
``W x + sigma * L z``, ``z ~ N(0, I_h)``, ``L L^T = W W^T`` (Cholesky in float64, used in float32):
the same distribution with ``h`` instead of ``d`` Gaussian draws and an ``h x h`` product instead of
the ``h x d`` one. The factor rounded to float32 gives ``N(0, sigma^2 L~ L~^T)`` instead of
``N(0, sigma^2 W W^T)``; their total-variation distance is bounded (Pinsker, with the exact Gaussian
KL divergence computed in float64) and subtracted from ``pA_lower``, since no event's probability
differs by more than that between the two distributions.

Abstention is a result (``label is None``, ``abstained``), never a sentinel class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .errors import CertifyError, ShapeError

Classifier = Callable[[Tensor], Tensor]  # [B, *input_shape] -> logits [B, n_classes]


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound on a binomial proportion from ``k`` of ``n``:
    the ``alpha`` quantile of Beta(k, n - k + 1) (0 when ``k == 0``)."""
    from scipy.stats import beta

    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def radius_from(p_lower: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_lower)``: the certified L2 radius (<= 0 means none)."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(p_lower))


def binomial_pvalue(k: int, n: int) -> float:
    """Two-sided exact binomial test of ``p = 1/2`` for ``k`` successes in ``n`` trials."""
    from scipy.stats import binomtest

    return 1.0 if n == 0 else float(binomtest(k, n, 0.5).pvalue)


@dataclass(frozen=True)
class Prediction:
    """``predict``'s answer: ``label`` is the smoothed class, or None when the test abstained."""

    label: int | None
    counts: tuple[int, ...]
    pvalue: float
    alpha: float

    @property
    def abstained(self) -> bool:
        return self.label is None


@dataclass(frozen=True)
class Certificate:
    """``certify``'s answer. When not abstained: with probability >= 1 - alpha over the sampling,
    ``g(x + delta) = label`` for all ``||delta||_2 < radius``. ``p_lower`` is the Clopper-Pearson
    bound on ``P(f(x + eps) = label)``; ``top_count`` of ``n`` estimation samples hit the class the
    ``n0`` selection samples picked (``selected``)."""

    label: int | None
    radius: float
    p_lower: float
    selected: int
    top_count: int
    n0: int
    n: int
    alpha: float
    sigma: float

    @property
    def abstained(self) -> bool:
        return self.label is None

    def claim(self) -> str:
        if self.abstained:
            return "abstained: no class certified"
        return (f"with probability >= {1 - self.alpha:g} over the noise samples, the smoothed classifier g "
                f"(Gaussian sigma={self.sigma:g}) predicts class {self.label} on the whole open L2 ball of radius "
                f"{self.radius:.6g}; this is a statement about g, not about the base network")


def example_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for example ``index`` of a run seeded with ``seed``: independent streams per example,
    and the same numbers for an example whatever subset of the data is certified."""
    state = int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state & ((1 << 63) - 1))


@dataclass(frozen=True)
class FirstLayer:
    """``W (x + eps) + b`` for ``eps ~ N(0, sigma^2 I)`` sampled as ``W x + b + sigma * L z``;
    ``tv`` bounds the total-variation distance that rounding ``L`` to the sampling dtype introduces."""

    weight: Tensor  # [h, d]
    bias: Tensor | None
    factor: Tensor  # [h, h], L L^T ~ W W^T
    tv: float
    rest: Classifier  # the network after the first layer


def first_layer_factor(weight: Tensor, dtype: torch.dtype, max_condition: float = 1e8) -> tuple[Tensor, float] | None:
    """``(L~, tv)``: the Cholesky factor of ``W W^T`` in float64 cast to ``dtype``, and a bound on
    TV(N(0, L~ L~^T), N(0, W W^T)) <= sqrt(KL / 2) (Pinsker). None when ``W W^T`` is singular or
    worse conditioned than ``max_condition`` (then the noise is sampled in input space)."""
    w = weight.detach().to(dtype=torch.float64, device="cpu")
    h = w.shape[0]
    sigma = w @ w.T
    eig = torch.linalg.eigvalsh(sigma)
    if not bool(eig[0] > 0) or float(eig[-1] / eig[0]) > max_condition:
        return None
    chol = torch.linalg.cholesky(sigma)
    rounded = chol.to(dtype).to(torch.float64)
    # KL(N(0, S~) || N(0, S)) = (tr(S^-1 S~) - h - log det(S^-1 S~)) / 2 with A = chol^-1 L~:
    # tr = ||A||_F^2, log det = 2 log|det A|.
    a = torch.linalg.solve_triangular(chol, rounded, upper=False)
    kl = 0.5 * (float((a * a).sum()) - h - 2.0 * float(torch.linalg.slogdet(a).logabsdet))
    kl = max(kl, 0.0) + 64 * h * torch.finfo(torch.float64).eps  # float64 cancellation in the line above
    return rounded.to(dtype), math.sqrt(kl / 2)


def split_first_layer(graph, dtype: torch.dtype) -> FirstLayer | None:
    """The factorised first layer of ``graph`` when it starts with reshapes then a linear layer with
    fewer outputs than inputs that nothing later bypasses; else None."""
    from .graph import Graph

    seen = {graph.input}
    for k, node in enumerate(graph.nodes):
        if node.op == "reshape" and node.inputs[0] in seen:
            seen.add(node.output)
            continue
        if node.op != "linear" or node.inputs[0] not in seen:
            return None
        weight, bias = node.params["weight"], node.params.get("bias")
        if weight.shape[1] != graph.n_inputs or weight.shape[0] >= weight.shape[1]:
            return None  # not one vector of all inputs, or no fewer outputs than inputs
        rest_nodes = graph.nodes[k + 1:]
        if any(name in seen for n in rest_nodes for name in n.inputs):
            return None
        got = first_layer_factor(weight, dtype)
        if got is None:
            return None
        factor, tv = got
        rest = Graph(node.output, tuple(node.shape), rest_nodes, graph.output, graph.output_shape, graph.meta)
        return FirstLayer(weight, bias, factor.to(weight.device), tv, rest.forward)
    return None


class Smoothed:
    """The smoothed classifier ``g`` of ``base`` at noise level ``sigma``.

    Sampling runs in batches of ``batch`` noisy copies on ``device``: one in-place Gaussian fill of a
    preallocated buffer, the shift by ``x``, one forward pass, ``argmax`` and ``bincount``; only the
    final counts leave the device.
    """

    def __init__(self, base: Classifier, n_classes: int, sigma: float, input_shape: tuple[int, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 first_layer: FirstLayer | None = None):
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise CertifyError(f"sigma must be a positive number, got {sigma}")
        if n_classes < 2:
            raise CertifyError(f"randomized smoothing needs a classifier with >= 2 outputs, got {n_classes}")
        self.base, self.n_classes, self.sigma = base, int(n_classes), float(sigma)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.device, self.dtype = torch.device(device), dtype
        self.first_layer = first_layer

    @property
    def sampling_tv(self) -> float:
        """Bound on the total-variation distance between the sampled and the exact noise distribution."""
        return self.first_layer.tv if self.first_layer is not None else 0.0

    @classmethod
    def of_model(cls, model, sigma: float, device: torch.device | str = "cpu", factorize: bool = True) -> "Smoothed":
        """``g`` for a loaded ``Model``: its graph, evaluated in the model's runtime dtype on ``device``;
        ``factorize``: sample through the first layer when that is cheaper (module docstring)."""
        dtype = model.graph.runtime_dtype
        graph = model.graph.to(device=device, dtype=dtype)
        first = split_first_layer(graph, dtype) if factorize else None
        return cls(graph.forward, model.n_outputs, sigma, model.input_shape, device, dtype, first)

    def _point(self, x: Tensor | np.ndarray) -> Tensor:
        x = torch.as_tensor(x)
        if x.numel() != math.prod(self.input_shape):
            raise ShapeError("smoothing input (model input shape vs input)", self.input_shape, tuple(x.shape))
        return x.reshape(1, *self.input_shape).to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def counts(self, x: Tensor | np.ndarray, n: int, batch: int = 10_000,
               generator: torch.Generator | None = None, deadline: Callable[[], bool] | None = None) -> Tensor:
        """How many of ``n`` noisy copies ``f`` assigns to each class (int64 ``[n_classes]``, on CPU).
        ``deadline()`` is polled between batches; when it returns True, ``TimeoutError`` is raised."""
        if n < 0 or batch < 1:
            raise CertifyError(f"need n >= 0 and batch >= 1, got n={n}, batch={batch}")
        x0 = self._point(x)
        first = self.first_layer
        if first is not None:  # sample W eps directly: h Gaussians per copy instead of d
            shift = torch.nn.functional.linear(x0.reshape(1, -1), first.weight, first.bias)
            factor_t = (self.sigma * first.factor).T.contiguous()
            shape, forward = (first.factor.shape[0],), first.rest
        else:
            shape, forward = self.input_shape, self.base
        buf = torch.empty((min(batch, max(n, 1)), *shape), device=self.device, dtype=self.dtype)
        total = torch.zeros(self.n_classes, dtype=torch.int64, device=self.device)
        done = 0
        while done < n:
            if deadline is not None and deadline():
                raise TimeoutError(f"sampling stopped after {done} of {n} samples")
            b = min(buf.shape[0], n - done)
            if first is not None:
                logits = forward(torch.addmm(shift, buf[:b].normal_(0.0, 1.0, generator=generator), factor_t))
            else:
                logits = forward(buf[:b].normal_(0.0, self.sigma, generator=generator).add_(x0))
            if logits.shape[-1] != self.n_classes:
                raise ShapeError("base classifier outputs (expected vs got)", self.n_classes, logits.shape[-1])
            total += torch.bincount(logits.reshape(b, -1).max(1).indices, minlength=self.n_classes)
            done += b
        return total.cpu()

    def predict(self, x: Tensor | np.ndarray, n: int, alpha: float, batch: int = 10_000,
                generator: torch.Generator | None = None) -> Prediction:
        """Cohen et al.'s PREDICT: the top class of ``n`` samples, or abstain when the two-sided binomial
        test of the top two counts ``(n_A, n_B)`` has p-value > ``alpha``. A returned class is ``g(x)``
        with probability >= 1 - alpha."""
        _check_alpha(alpha)
        counts = self.counts(x, n, batch, generator)
        top2 = torch.topk(counts, 2)
        nA, nB = int(top2.values[0]), int(top2.values[1])
        pvalue = binomial_pvalue(nA, nA + nB)
        label = int(top2.indices[0]) if pvalue <= alpha else None
        return Prediction(label, tuple(int(c) for c in counts), pvalue, alpha)

    def certify(self, x: Tensor | np.ndarray, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch: int = 10_000, generator: torch.Generator | None = None,
                deadline: Callable[[], bool] | None = None) -> Certificate:
        """Cohen et al.'s CERTIFY: select the top class ``c_A`` with ``n0`` samples, count its hits in
        ``n`` fresh samples, ``pA_lower = ClopperPearsonLower(n_A, n, alpha) - sampling_tv``; abstain when
        ``pA_lower <= 1/2``, else the radius is ``sigma * Phi^-1(pA_lower)``."""
        _check_alpha(alpha)
        if n0 < 1 or n < 1:
            raise CertifyError(f"need n0 >= 1 and n >= 1, got n0={n0}, n={n}")
        selected = int(self.counts(x, n0, batch, generator, deadline).argmax())
        nA = int(self.counts(x, n, batch, generator, deadline)[selected])
        p_lower = max(0.0, clopper_pearson_lower(nA, n, alpha) - self.sampling_tv)
        if p_lower <= 0.5:
            return Certificate(None, 0.0, p_lower, selected, nA, n0, n, alpha, self.sigma)
        return Certificate(selected, radius_from(p_lower, self.sigma), p_lower, selected, nA, n0, n, alpha,
                           self.sigma)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise CertifyError(f"alpha must lie in (0, 1), got {alpha}")
