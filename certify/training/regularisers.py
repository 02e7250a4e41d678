"""Initialisation and warm-up regularisers for IBP-family training (Shi et al. 2021, section 3).

**IBP initialisation.** IBP widths grow per layer by ``|W| r``; with Gaussian weights of variance
``sigma^2`` the expected growth factor is ``n sigma sqrt(2/pi)`` for fan-in ``n``. Choosing
``sigma = sqrt(2 pi) / n`` makes it 2 (the ReLU halves it back to about 1), so bounds neither explode
nor vanish at initialisation. Applied to every Linear/Conv2d layer but the last; biases zero.

**Regularisers** over the IBP boxes ``[l, u]`` of every ReLU input (centre ``c``, radius ``r``), with
tolerance ``tau`` (0.5 in the paper):

* tightness: ``relu(tau - r_0 / mean(r)) / tau`` with ``r_0`` the mean input radius: penalises layers
  whose boxes grow much faster than the input box;
* ReLU balance: with ``A`` (active: ``l > 0``) and ``I`` (inactive: ``u < 0``) neurons,
  ``rho_mean = mean(c over A) / -mean(c over I)`` and ``rho_var`` the ratio of their squared deviations
  from the mean centre, each folded to ``min(rho, 1/rho)``; penalty ``(relu(tau - rho_mean) +
  relu(tau - rho_var)) / tau``: keeps active and inactive neurons balanced so that few stay unstable.

Both are averaged over the ReLU layers and weighted by ``lambda (1 - eps_t / eps)``: strongest at the
start of the ramp, gone at its end.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sets import Box


def ibp_init(module: nn.Module) -> None:
    """Re-initialise weights ``N(0, 2 pi / n^2)`` (``n`` the fan-in), biases 0, except the last layer."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for m in layers[:-1]:
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
            if m.bias is not None:
                m.bias.zero_()


def warmup_regulariser(input_box: Box, relu_boxes: list[Box], tol: float = 0.5) -> Tensor:
    """Tightness plus ReLU-balance penalty (unweighted) over the ReLU input boxes.

    Every masked mean is a dot product with the 0/1 mask (one pass, no temporary), and the squared
    deviations are taken about the layer's mean centre once: the penalty costs a few passes over each
    layer instead of a dozen."""
    if not relu_boxes:
        return input_box.lower.new_zeros(())
    r0 = (input_box.upper.sum() - input_box.lower.sum()) / (2 * input_box.lower.numel())
    total = input_box.lower.new_zeros(())
    for box in relu_boxes:
        lo, hi = box.lower.reshape(-1), box.upper.reshape(-1)
        n = lo.numel()
        r_mean = (hi.sum() - lo.sum()) / (2 * n)
        total = total + F.relu(tol - r0 / r_mean.clamp(min=1e-12)) / tol
        c = torch.lerp(lo, hi, 0.5)
        act, inact = (lo > 0).to(c.dtype), (hi < 0).to(c.dtype)  # 0/1 masks: active, inactive
        mean_ratio = torch.dot(c, act) / -torch.dot(c, inact)  # the ratio of the two masked means
        d = c - c.mean()
        dev = d * d
        var_ratio = torch.dot(dev, act) / torch.dot(dev, inact)
        mean_ratio = torch.minimum(mean_ratio, 1 / mean_ratio.clamp(min=1e-12))
        var_ratio = torch.minimum(var_ratio, 1 / var_ratio.clamp(min=1e-12))
        balance = (F.relu(tol - mean_ratio) + F.relu(tol - var_ratio)) / tol
        if torch.isfinite(balance):  # no active or no inactive neuron: the ratio is undefined, skip it
            total = total + balance
    return total / len(relu_boxes)
