"""alpha-CROWN (Xu et al. 2021, "Fast and Complete"): optimise the lower slopes of ReLU-like
relaxations, separately for every specification row, by projected gradient ascent (Adam) on the CROWN
bound, warm-started from CROWN's adaptive slopes.

Any slope in ``[neg_slope, 1]`` gives a valid lower line, so every iterate is a valid bound; the
optimisation runs in fast mode (float32, differentiable), keeps the best slopes seen per row, and the
reported bound is recomputed in float64 with sound rounding for both those slopes and CROWN's own,
keeping the larger: never looser than CROWN.

This is the messy outer loop of the engine (knobs: iterations, learning rate); it lives here alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import Graph
from ..sets import InputSet
from .crown import compute_boxes, crown_lower, sound_crown_lower
from .fp import FAST
from .rules import RULES


@dataclass(frozen=True)
class AlphaOptions:
    """``iterations`` of Adam with learning rate ``lr`` on the slopes; ``dtype`` of the optimisation."""

    iterations: int = 20
    lr: float = 0.1
    dtype: str = "float32"


def _initial_alphas(graph: Graph, boxes, R: int) -> dict[str, Tensor]:
    alphas = {}
    for node in graph.nodes:
        if RULES[node.op].alpha:
            z = boxes[node.inputs[0]]
            neg = float(node.params.get("alpha", 0.0)) if node.op == "leaky_relu" else 0.0
            a = torch.where(z.upper >= -z.lower, 1.0, neg).to(z.lower.dtype)
            alphas[node.name] = a.unsqueeze(1).expand(-1, R, *a.shape[1:]).clone().requires_grad_(True)
    return alphas


def _slope_floor(graph: Graph) -> dict[str, float]:
    return {n.name: float(n.params.get("alpha", 0.0)) if n.op == "leaky_relu" else 0.0
            for n in graph.nodes if RULES[n.op].alpha}


def optimise_alphas(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor,
                    options: AlphaOptions = AlphaOptions(), device=None) -> tuple[dict[str, Tensor], Tensor]:
    """Best slopes per row found by gradient ascent, and the (fast, unrounded) bound they give."""
    dtype = getattr(torch, options.dtype)
    g = graph.to(device=device, dtype=dtype)
    s = input_set.reshape(graph.input_shape).to(device=g.device, dtype=dtype)
    C, d = C.to(g.device, dtype), d.to(g.device, dtype)
    with torch.no_grad():
        boxes = compute_boxes(g, s, FAST)
    alphas = _initial_alphas(g, boxes, C.shape[1])
    floors = _slope_floor(g)
    if not alphas:
        with torch.no_grad():
            return {}, crown_lower(g, s, C, d, FAST, boxes=boxes)
    opt = torch.optim.Adam(list(alphas.values()), lr=options.lr)
    best_value, best = None, {}
    for _ in range(options.iterations + 1):
        value = crown_lower(g, s, C, d, FAST, boxes=boxes, alphas=alphas)
        with torch.no_grad():
            if best_value is None:
                best_value = value.detach().clone()
                best = {k: v.detach().clone() for k, v in alphas.items()}
            else:
                better = value > best_value
                best_value = torch.where(better, value, best_value)
                for k, v in alphas.items():
                    mask = better.reshape(*better.shape, *([1] * (v.dim() - 2)))
                    best[k] = torch.where(mask, v.detach(), best[k])
        opt.zero_grad()
        (-value.sum()).backward()
        opt.step()
        with torch.no_grad():
            for k, v in alphas.items():
                v.clamp_(floors[k], 1.0)
    return best, best_value


def alpha_crown_lower(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor,
                      options: AlphaOptions = AlphaOptions(), device=None) -> Tensor:
    """Certified lower bounds of ``C_r f(x) - d_r`` (float64, sound rounding), at least CROWN's."""
    best, _ = optimise_alphas(graph, input_set, C, d, options, device)
    return sound_crown_lower(graph, input_set, C, d, device, alpha_sets=[None, best] if best else [None])
