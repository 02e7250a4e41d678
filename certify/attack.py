"""The falsifier shared by every backend: batched projected gradient descent with random restarts.

Objective: for clause ``k`` of the spec, ``m_k(x) = max_j (C_kj f(x) - d_kj)``; the clause is reached
iff ``m_k(x) <= 0``. Each clause gets its own restarts (so disjunctions are attacked clause by clause)
and another group of restarts minimises ``min_k m_k`` (whichever clause is easiest). Steps follow
the set's geometry: signed steps scaled per coordinate for boxes and L-inf balls, normalised
gradients for L2, sparse coordinate steps for L1; every iterate is projected back into the set.
Step sizes decay on a cosine schedule. Candidates are *proposals*: only ``replay.check`` turns one
into a counterexample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .budget import Budget
from .graph import Graph
from .sets import LpBall
from .spec import Spec, clause_max


@dataclass(frozen=True)
class AttackOptions:
    """``points`` restarts per round, shared equally by the clauses and the easiest-clause group
    (at least 4 each), ``steps`` per round, ``step_size`` as a fraction of the set's radius,
    ``rounds`` of fresh restarts, ``seed``. A round stops early once a candidate is clearly inside
    the unsafe region (margin below ``-stop_margin * (1 + max|d|)``)."""

    points: int = 256
    steps: int = 100
    step_size: float = 0.3
    rounds: int = 2
    seed: int = 0
    dtype: str = "float32"
    candidates: int = 8  # how many of the best points are returned for replay
    stop_margin: float = 1e-3
    device: str = "cpu"


def _direction(grad: Tensor, spec_input, flat_dims: int) -> Tensor:
    """Steepest-descent direction of unit size in the set's own norm."""
    g = grad.reshape(grad.shape[0], -1)
    if isinstance(spec_input, LpBall) and spec_input.p == 2.0:
        d = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    elif isinstance(spec_input, LpBall) and spec_input.p == 1.0:
        k = max(1, flat_dims // 50)
        top = g.abs().topk(k, dim=-1).indices
        d = torch.zeros_like(g).scatter(-1, top, torch.sign(g.gather(-1, top))) / k
    else:
        d = torch.sign(g)
    return d.reshape(grad.shape)


def _scale(spec_input) -> Tensor:
    """Per-coordinate step scale: half-widths for boxes, eps for balls."""
    if isinstance(spec_input, LpBall):
        return spec_input.eps.reshape(-1, *([1] * len(spec_input.shape)))
    box = spec_input.bounds()
    return (box.upper - box.lower) / 2


def pgd(graph: Graph, spec: Spec, options: AttackOptions = AttackOptions(), budget: Budget | None = None) -> Tensor:
    """Candidate inputs ``[n, *input_shape]`` for a single-instance spec, best (lowest margin) first.

    The graph runs in ``options.dtype`` on ``options.device``; candidates are returned on the CPU.
    """
    if spec.batch_size != 1:
        raise ValueError("pgd() takes a single-instance spec")
    budget = budget or Budget()
    dtype = getattr(torch, options.dtype)
    device = torch.device(options.device)
    g = graph.to(device=device, dtype=dtype)
    spec = spec.reshape_input(graph.input_shape).to(device=device, dtype=dtype)
    K = len(spec.unsafe)
    R = max(4, options.points // (K + 1))
    # which clause each restart minimises; index K means "the easiest clause"
    target = torch.arange(K + 1, device=device).repeat_interleave(R)
    n = target.numel()
    gen = torch.Generator().manual_seed(options.seed)
    scale = _scale(spec.input)
    flat = math.prod(graph.input_shape)
    best_x, best_m = None, None
    C, d, clause_of_row = spec.matrix()
    C, d = C[0], d[0]
    d_scale = max(float(c.d.abs().max()) for c in spec.unsafe)
    for rnd in range(options.rounds):
        x = spec.input.sample(n, generator=gen)[:, 0]
        if rnd == 0:
            x[0] = spec.input.center[0]
        x = x.detach()
        for step in range(options.steps):
            if budget.expired():
                break
            x.requires_grad_(True)
            rows = torch.einsum("rn,bn->br", C, g.forward(x).reshape(x.shape[0], -1)) - d  # [n, R]
            margins = clause_max(rows, clause_of_row, K)
            # smooth surrogate: the clause's max row plus the sum of its violated (positive) rows
            excess = torch.zeros((n, K), dtype=rows.dtype, device=device).index_add(1, clause_of_row, rows.relu())
            surrogate = margins + excess
            own = torch.where(target < K, surrogate.gather(1, target.clamp(max=K - 1).unsqueeze(1))[:, 0],
                              surrogate.min(1).values)
            (grad,) = torch.autograd.grad(own.sum(), x)
            with torch.no_grad():
                reached = margins.min(1).values
                best_x, best_m = _keep_best(best_x, best_m, x.detach(), reached, options.candidates)
                if float(best_m[0]) < -options.stop_margin * (1 + d_scale):
                    break
                lr = options.step_size * 0.5 * (1 + math.cos(math.pi * step / options.steps)) + 0.02
                x = spec.input.project(x - lr * scale * _direction(grad, spec.input, flat)).detach()
        if best_m is not None and float(best_m[0]) < 0 or budget.expired():
            break
    with torch.no_grad():
        margins = spec.clause_margins(g.forward(x).unsqueeze(1))[:, 0].min(1).values
        best_x, best_m = _keep_best(best_x, best_m, x.detach(), margins, options.candidates)
    return best_x.cpu()


def _keep_best(best_x, best_m, x: Tensor, m: Tensor, k: int):
    if best_x is not None:
        x = torch.cat([best_x, x])
        m = torch.cat([best_m, m])
    order = torch.argsort(m)[:k]
    return x[order], m[order]
