"""alpha-CROWN (Xu et al. 2021, "Fast and Complete"): optimise the lower slopes of ReLU-like
relaxations by projected gradient ascent (Adam) on the CROWN bound, warm-started from CROWN's adaptive
slopes. Slopes are separate for every row of the final specification and, for every intermediate
tensor whose bounds CROWN computes, for every one of its rows (``+e_i``, ``-e_i``); the final bound is
differentiated through the intermediate bounds, so all slopes are optimised jointly.

Any slope in ``[neg_slope, 1]`` gives a valid lower line, so every iterate is a valid bound. The
optimisation runs in fast mode (float32, differentiable); the slopes of the best iterate are then
re-certified in float64 with sound rounding (``sound_crown_lower``), which also keeps CROWN's own bound
where it is better: never looser than CROWN.

This is the messy outer loop of the engine (knobs: iterations, learning rate, a memory cap on the
intermediate slopes); it lives here alone, with ``alpha_crown_lower`` as its stable entry point.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import Graph
from ..sets import InputSet
from .crown import RowSlopes, _needs_bounds, compute_boxes, crown_lower, sound_crown_lower
from .fp import FAST
from .memo import recall
from .optim import adam
from .rules import RULES


@dataclass(frozen=True)
class AlphaOptions:
    """``iterations`` of Adam with learning rate ``lr``; ``intermediate``: also optimise the slopes used
    for intermediate bounds, unless they would exceed ``max_intermediate_elements`` values. Those slopes
    are optimised for every row (``+e_i``, ``-e_i``) of a bounded tensor while all of them together stay
    within ``every_row_elements`` values, else only for the rows of its unstable values (``_initial``)."""

    iterations: int = 20
    lr: float = 0.1
    dtype: str = "float32"
    intermediate: bool = True
    max_intermediate_elements: int = 5_000_000
    every_row_elements: int = 200_000


def _floor(node) -> float:
    return float(node.params.get("alpha", 0.0)) if node.op == "leaky_relu" else 0.0


def _adaptive(node, boxes, rows: int) -> Tensor:
    z = boxes[node.inputs[0]]
    a = torch.where(z.upper >= -z.lower, 1.0, _floor(node)).to(z.lower.dtype)
    return a.unsqueeze(1).expand(-1, rows, *a.shape[1:]).clone().requires_grad_(True)


def _unstable(box) -> Tensor:
    """Flat indices of the values whose interval contains 0 in some instance of the batch."""
    lo, hi = box.lower.flatten(1), box.upper.flatten(1)
    return ((lo < 0) & (hi > 0)).any(0).nonzero()[:, 0]


def _initial(graph: Graph, boxes, R: int, options: AlphaOptions):
    """Adaptive starting slopes: for the final rows, and for the intermediate tensors only for the rows of
    their *unstable* values (``rows``): a value whose interval excludes 0 meets a ReLU that is already exact
    there, and whatever slopes are chosen its CROWN bound from the start stays valid (kept in ``base``)."""
    relus = [(i, n) for i, n in enumerate(graph.nodes) if RULES[n.op].alpha]
    final = {n.name: _adaptive(n, boxes, R) for _, n in relus}
    inter: dict[str, dict[str, Tensor]] = {}
    rows: dict[str, Tensor] = {}
    if options.intermediate:
        producer = {n.output: i for i, n in enumerate(graph.nodes)}
        needed = [t for t in _needs_bounds(graph) if t in boxes]
        before = {t: {n.name: n for i, n in relus if i < producer.get(t, -1)} for t in needed}  # input: no ReLU
        every = sum(2 * boxes[t].lower[0].numel() * boxes[n.inputs[0]].lower.numel()
                    for t in needed for n in before[t].values()) <= options.every_row_elements
        total = 0
        for t in needed:
            chosen = before[t]
            rows[t] = torch.arange(boxes[t].lower[0].numel(), device=boxes[t].lower.device) if every \
                else _unstable(boxes[t])
            n_rows = 2 * rows[t].numel()
            total += sum(n_rows * boxes[n.inputs[0]].lower.numel() for n in chosen.values())
            if chosen and n_rows:
                inter[t] = {name: _adaptive(n, boxes, n_rows) for name, n in chosen.items()}
        if total > options.max_intermediate_elements:
            inter, rows = {}, {}
        elif every:
            rows = {}  # all rows: the plain layout, and the sound pass bounds every row with them
    return final, inter, rows


def _full_rows(graph: Graph, boxes, inter, rows):
    """Intermediate slopes of the unstable rows (``_initial``) spread to all ``2 n`` rows of each tensor, the
    other rows at their adaptive start (the layout the sound re-certification reads), marked as ``RowSlopes``
    so that it repeats only the unstable rows with them."""
    if not rows:
        return inter
    out = {}
    by_name = {n.name: n for n in graph.nodes}
    for t, per in inter.items():
        n = boxes[t].lower[0].numel()
        pick = torch.cat([rows[t], rows[t] + n])
        out[t] = RowSlopes({k: _adaptive(by_name[k], boxes, 2 * n).detach().index_copy(1, pick.to(v.device), v)
                            for k, v in per.items()}, rows[t])
    return out


def optimise_alphas(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor,
                    options: AlphaOptions = AlphaOptions(), device=None, time_limit: float = math.inf):
    """Slopes of the best iterate (final, intermediate) and its fast, unrounded bound; stops early
    after ``time_limit`` seconds (keeping the best iterate so far). Inside ``memo.shared()`` an identical
    earlier call's result is returned as it is (``auto``: alpha-CROWN's slopes are branch-and-bound's root's)."""
    key = (input_set.reshape(graph.input_shape), C, d, options, str(device))
    return recall("alpha", graph, key, lambda: _optimise_alphas(graph, input_set, C, d, options, device, time_limit))


def _optimise_alphas(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor, options: AlphaOptions,
                     device, time_limit: float):
    start = time.perf_counter()
    dtype = getattr(torch, options.dtype)
    g = graph.to(device=device, dtype=dtype)
    s = input_set.reshape(graph.input_shape).to(device=g.device, dtype=dtype)
    C, d = C.to(g.device, dtype), d.to(g.device, dtype)
    with torch.no_grad():
        boxes = compute_boxes(g, s, FAST)
    final, inter, rows = _initial(g, boxes, C.shape[1], options)
    if not final:
        with torch.no_grad():
            return {}, {}, crown_lower(g, s, C, d, FAST, boxes=boxes)
    floors = {n.name: _floor(n) for n in g.nodes if RULES[n.op].alpha}
    params = list(final.values()) + [a for per in inter.values() for a in per.values()]
    opt = adam(params, lr=options.lr)
    best_sum, best = -torch.inf, None
    for _ in range(options.iterations + 1):
        if best is not None and time.perf_counter() - start > time_limit:
            break
        boxes_it = compute_boxes(g, s, FAST, alphas=inter, rows=rows, base=boxes) if inter else boxes
        value = crown_lower(g, s, C, d, FAST, boxes=boxes_it, alphas=final)
        total = float(value.detach().sum())
        if total > best_sum:
            best_sum = total
            best = ({k: v.detach().clone() for k, v in final.items()},
                    {t: {k: v.detach().clone() for k, v in per.items()} for t, per in inter.items()},
                    value.detach().clone())
        opt.zero_grad()
        (-value.sum()).backward()
        opt.step()
        with torch.no_grad():
            for k, v in final.items():
                v.clamp_(floors[k], 1.0)
            for per in inter.values():
                for k, v in per.items():
                    v.clamp_(floors[k], 1.0)
    return best[0], _full_rows(g, boxes, best[1], rows), best[2]


def alpha_crown_lower(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor,
                      options: AlphaOptions = AlphaOptions(), device=None, time_limit: float = math.inf) -> Tensor:
    """Certified lower bounds of ``C_r f(x) - d_r`` (float64, sound rounding), at least CROWN's."""
    final, inter, _ = optimise_alphas(graph, input_set, C, d, options, device, time_limit)
    return sound_crown_lower(graph, input_set, C, d, device, alphas=final or None, intermediate_alphas=inter or None)
