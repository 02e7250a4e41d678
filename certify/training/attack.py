"""The training-time attack: L-inf PGD on the cross-entropy (Madry et al. 2018), batched, on the module.

Certified verification has its own falsifier (``certify.attack``: margins, restarts, replay); training
needs a cheap ascent step on the loss the network is trained with, so this one maximises the
cross-entropy, starts from a uniform point of the ball (``random_start``; one step of it is FGSM with a
random start, Wong et al. 2020) and projects onto the eps-ball intersected with the data domain.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pgd_ce(module: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float,
           clip: tuple[float, float], generator: torch.Generator | None = None,
           random_start: bool = True) -> Tensor:
    """A point of ``{x' : |x' - x|_inf <= eps, lo <= x' <= hi}`` found by ``steps`` signed-gradient steps of
    ``step_size`` on ``CE(module(x'), y)``; the module runs in eval mode (no BatchNorm statistics drawn
    from attack points) and its parameters get no gradient."""
    if eps <= 0 or steps <= 0:
        return x
    was_training = module.training
    module.eval()
    lo, hi = (x - eps).clamp(min=clip[0]), (x + eps).clamp(max=clip[1])
    if random_start:
        u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        delta = torch.minimum(torch.maximum(x + eps * (2 * u - 1), lo), hi)
    else:
        delta = x.clone()
    adv = delta.detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(module(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.minimum(torch.maximum(adv.detach() + step_size * grad.sign(), lo), hi)
    module.train(was_training)
    return adv.detach()
