"""Training losses, one function each, registered in ``LOSSES``.

Every certified loss is a cross-entropy of *worst-case logits* ``-m`` built from lower bounds ``m_j`` of the
robustness margins ``f_y(x) - f_j(x)`` (``m_y = 0``), computed by the engine on the live module
(``bounds``): ``CE(-m)`` upper-bounds the cross-entropy at every point of the set, and at eps = 0 it is the
natural cross-entropy (the margins are shift-invariant).

* ``ce``: cross-entropy. ``noise``: on ``x + N(0, sigma^2 I)`` (Cohen et al. 2019).
* ``pgd``: on a PGD point of the eps-ball (Madry et al. 2018).
* ``ibp``: ``kappa CE(f(x)) + (1 - kappa) CE(-m_IBP)`` (Gowal et al. 2018; last layer elided). By default
  kappa is 0 throughout, the robust loss alone as Shi et al. 2021 train; Gowal et al. ramp it 1 -> 0.5.
* ``crown-ibp``: the same with ``m = beta m_CROWN-IBP + (1 - beta) m_IBP``, beta 1 -> 0 over the ramp (Zhang
  et al. 2020); once beta is 0 the CROWN pass is skipped. With ``loss_fusion`` the robust part is instead
  ``beta L + (1 - beta) CE(-m_IBP)`` with ``L`` the loss-fusion bound of one CROWN row
  (``bounds.fused_crown_ibp_loss``, Xu et al. 2020): a third of the cost, but measured here only 3 % below
  the IBP loss where the K - 1 CROWN-IBP margins halve it (MNIST, CNN3, eps 0.01), because the chord of
  ``exp`` over IBP's wide margin intervals is loose.
* ``sabr``: ``CE(-m_IBP)`` over the small box of radius ``tau = lambda eps`` centred at a PGD point moved
  inside the ball (``clamp(x_adv, x - eps + tau, x + eps - tau)``), intersected with the data domain
  (Mueller et al. 2023): the box lies inside the eps-ball, so the loss still only sees the property's set.
* ``cc-ibp``: ``CE(-((1 - alpha) a + alpha m_IBP))`` with ``a`` the margins at the attack point (a convex
  combination of logit differences); ``mtl-ibp``: ``(1 - alpha) CE(f(x_adv)) + alpha CE(-m_IBP)``
  (De Palma et al. 2024, "Expressive losses"). alpha = 0 is adversarial training, alpha = 1 IBP.

The attack points of sabr / cc-ibp / mtl-ibp come from ``attack_steps`` PGD steps (default 1: FGSM with a
random start, step ``1.25 eps``; Wong et al. 2020), which keeps their epoch at about 3x a plain one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.traverse import evaluate
from ..sets import Box
from .attack import pgd_ce
from .bounds import BoundModel, crown_ibp_margins, fused_crown_ibp_loss, ibp_margin_bounds
from .regularisers import warmup_regulariser


@dataclass
class Step:
    """What a loss sees for one batch: data in the pixel domain, the scheduled eps and coefficients."""

    module: nn.Module
    bound: BoundModel
    x: Tensor
    y: Tensor
    eps: float  # this step's eps (the schedule's value)
    progress: float  # 0 -> 1 over the eps ramp
    options: "object"  # TrainOptions
    generator: torch.Generator

    @property
    def clip(self) -> tuple[float, float]:
        return self.options.clip

    def ball(self, center: Tensor | None = None, radius: float | None = None) -> Box:
        c = self.x if center is None else center
        r = self.eps if radius is None else radius
        lo, hi = self.clip
        return Box((c - r).clamp(min=lo), (c + r).clamp(max=hi))

    @property
    def kappa(self) -> float:
        """Weight of the natural loss (ibp, crown-ibp): ``options.kappa_start -> options.kappa`` over the ramp."""
        o = self.options
        return o.kappa_start + self.progress * (o.kappa - o.kappa_start)

    def attack(self, steps: int, step_size: float) -> Tensor:
        return pgd_ce(self.module, self.x, self.y, self.eps, steps, step_size, self.clip, self.generator)

    def fast_attack(self) -> Tensor:
        steps = self.options.attack_steps
        return self.attack(steps, 1.25 * self.eps if steps == 1 else 2.5 * self.eps / steps)


Loss = Callable[[Step], tuple[Tensor, dict]]


def _robust_ce(m: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(-m, y)


def _regularised(step: Step, loss: Tensor, box: Box, relu_boxes: list) -> Tensor:
    """Add the warm-up regularisers, weighted ``lambda (1 - eps_t / eps)`` while eps ramps up."""
    o = step.options
    if o.reg_lambda <= 0 or step.progress >= 1.0 or not relu_boxes:
        return loss
    intensity = o.reg_lambda * (1.0 - step.eps / o.eps) if o.eps > 0 else 0.0
    if intensity <= 0:
        return loss
    return loss + intensity * warmup_regulariser(box, relu_boxes, o.reg_tol)


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def ce(step: Step) -> tuple[Tensor, dict]:
    logits = step.module(step.x)
    return F.cross_entropy(logits, step.y), {"acc": _accuracy(logits, step.y)}


def noise(step: Step) -> tuple[Tensor, dict]:
    n = torch.randn(step.x.shape, generator=step.generator).to(step.x.device, step.x.dtype)
    logits = step.module(step.x + step.options.noise_sigma * n)
    return F.cross_entropy(logits, step.y), {"acc": _accuracy(logits, step.y)}


def pgd(step: Step) -> tuple[Tensor, dict]:
    steps = step.options.pgd_steps
    adv = step.attack(steps, 2.5 * step.eps / max(1, steps))
    logits = step.module(adv)
    return F.cross_entropy(logits, step.y), {"acc": _accuracy(logits, step.y)}


#: instances of a batch whose clean accuracy is reported when the loss itself needs no clean logits
ACCURACY_SAMPLE = 32


def _clean(step: Step, graph, with_grad: bool) -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` of the clean batch through ``graph`` (its BatchNorm statistics): the whole batch
    with gradient when the natural loss is part of the loss, else the first ``ACCURACY_SAMPLE`` instances
    without, only for the reported training accuracy (a quarter of a forward pass at batch 128)."""
    if with_grad:
        return evaluate(graph, step.x), step.y
    with torch.no_grad():
        return evaluate(graph, step.x[:ACCURACY_SAMPLE]), step.y[:ACCURACY_SAMPLE]


def ibp(step: Step) -> tuple[Tensor, dict]:
    box, relus = step.ball(), []
    graph, env = step.bound.interval(box, last=False)
    m = ibp_margin_bounds(graph, box, step.y, relus, env=env)[0]
    kappa = step.kappa if step.eps > 0 else 0.0  # at eps 0, CE(-m) is the natural loss itself
    logits, labels = _clean(step, graph, kappa > 0)
    loss = _robust_ce(m, step.y) if kappa <= 0 else kappa * F.cross_entropy(logits, step.y) + (1 - kappa) * _robust_ce(m, step.y)
    return _regularised(step, loss, box, relus), {"acc": _accuracy(logits, labels)}


def crown_ibp(step: Step) -> tuple[Tensor, dict]:
    box, relus, boxes = step.ball(), [], {}
    graph, env = step.bound.interval(box, last=False)
    lower, upper = ibp_margin_bounds(graph, box, step.y, relus, boxes, env=env)
    robust = _robust_ce(lower, step.y)
    beta = 1.0 - step.progress
    if beta > 0 and step.eps > 0:
        if step.options.loss_fusion:  # one CROWN row bounding the loss itself (Xu et al. 2020)
            robust = beta * fused_crown_ibp_loss(graph, box, step.y, lower, upper, boxes).mean() + (1 - beta) * robust
        else:  # K - 1 rows, one per margin (Zhang et al. 2020 as published)
            robust = _robust_ce(beta * crown_ibp_margins(graph, box, step.y, boxes) + (1 - beta) * lower, step.y)
    kappa = step.kappa if step.eps > 0 else 0.0  # at eps 0, CE(-m) is the natural loss itself
    logits, labels = _clean(step, graph, kappa > 0)
    loss = robust if kappa <= 0 else kappa * F.cross_entropy(logits, step.y) + (1 - kappa) * robust
    return _regularised(step, loss, box, relus), {"acc": _accuracy(logits, labels)}


def sabr_box(step: Step, adv: Tensor) -> Box:
    """The box of radius ``lambda eps`` around ``adv`` moved inside the eps-ball, within the domain."""
    tau = step.options.sabr_lambda * step.eps
    centre = torch.minimum(torch.maximum(adv, step.x - step.eps + tau), step.x + step.eps - tau)
    return step.ball(centre, tau).intersect(step.ball())


def sabr(step: Step) -> tuple[Tensor, dict]:
    adv = step.fast_attack()
    box, relus = sabr_box(step, adv), []
    graph, env = step.bound.interval(box, last=False)
    m = ibp_margin_bounds(graph, box, step.y, relus, env=env)[0]
    loss = _robust_ce(m, step.y)
    return _regularised(step, loss, box, relus), {"acc": _accuracy(*_clean(step, graph, False))}


def _expressive(step: Step, mode: str) -> tuple[Tensor, dict]:
    adv = step.fast_attack()
    box, relus = step.ball(), []
    graph, env = step.bound.interval(box, last=False)
    adv_logits = evaluate(graph, adv)  # the same network (this batch's BatchNorm statistics)
    m = ibp_margin_bounds(graph, box, step.y, relus, env=env)[0]
    alpha = step.options.alpha
    if mode == "cc":
        a = adv_logits.gather(1, step.y[:, None]) - adv_logits
        loss = _robust_ce((1 - alpha) * a + alpha * m, step.y)
    else:
        loss = (1 - alpha) * F.cross_entropy(adv_logits, step.y) + alpha * _robust_ce(m, step.y)
    return _regularised(step, loss, box, relus), {"acc": _accuracy(*_clean(step, graph, False))}


def cc_ibp(step: Step) -> tuple[Tensor, dict]:
    return _expressive(step, "cc")


def mtl_ibp(step: Step) -> tuple[Tensor, dict]:
    return _expressive(step, "mtl")


LOSSES: dict[str, Loss] = {"ce": ce, "noise": noise, "pgd": pgd, "ibp": ibp, "crown-ibp": crown_ibp,
                           "sabr": sabr, "cc-ibp": cc_ibp, "mtl-ibp": mtl_ibp}
#: losses that bound the network (IBP initialisation, warm-up regularisers, BatchNorm inside the bounds)
CERTIFIED = ("ibp", "crown-ibp", "sabr", "cc-ibp", "mtl-ibp")
