"""Branch-and-bound by input splitting, for low-dimensional input boxes (ACAS Xu).

A domain (sub-box of the input box) is closed when every clause of the spec has a row whose
certified lower bound is positive on it; the spec holds when every domain is closed, because the
domains always cover the input box (each split replaces a box by its two halves). Open domains are
split along the input dimension with the largest estimated effect on the bound: ``|a_i| w_i`` for the
coefficients ``a`` of the worst clause's best row in CROWN's final linear bound and the domain's width
``w_i`` (halving ``w_i`` raises that row's bound by about ``|a_i| w_i / 2``). Domains are bounded in
batches; the centre of every open domain is offered to ``try_point`` (which replays candidates on the
reference runtime) so that violated properties end with a counterexample.

Generic over the bounding function: ``bound(box, C, d) -> (row lower bounds [N, R], input coefficients
[N, R, *shape])``; it must be sound for a *proved* answer (the backends pass sound CROWN).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..budget import Budget
from ..sets import Box
from ..spec import clause_max

Bound = Callable[[Box, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class InputSplitOptions:
    """``batch`` domains bounded per pass; at most ``max_domains`` open at once (the memory cap)."""

    batch: int = 256
    max_domains: int = 100_000


@dataclass
class BaBOutcome:
    proved: bool
    counterexample: object | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)


def input_split(box: Box, C: Tensor, d: Tensor, clause_of_row: Tensor, bound: Bound,
                try_point: Callable[[Tensor], object | None], budget: Budget,
                options: InputSplitOptions = InputSplitOptions()) -> BaBOutcome:
    """Decide one single-instance spec over ``box`` (``[1, *shape]``) with rows ``C [1, R, n]``, ``d [1, R]``."""
    K = int(clause_of_row.max()) + 1
    lower, upper = box.lower, box.upper
    full_width = (box.upper - box.lower).clamp_min(1e-30)
    visited = 0
    while lower.shape[0]:
        if budget.expired():
            return BaBOutcome(False, reason="timeout", stats={"domains": visited, "open": lower.shape[0]})
        if lower.shape[0] > options.max_domains:
            return BaBOutcome(False, reason=f"memory cap: more than {options.max_domains} open domains",
                              stats={"domains": visited, "open": lower.shape[0]})
        lo, hi = lower[: options.batch], upper[: options.batch]
        lower, upper = lower[options.batch:], upper[options.batch:]
        n = lo.shape[0]
        visited += n
        rows, coef = bound(Box(lo, hi), C.expand(n, -1, -1), d.expand(n, -1))
        rows = rows.to(lo.device)
        clause_lb = clause_max(rows, clause_of_row, K)
        open_ = ~(clause_lb > 0).all(1)
        if not bool(open_.any()):
            continue
        lo, hi, rows, coef, clause_lb = lo[open_], hi[open_], rows[open_], coef[open_], clause_lb[open_]
        found = try_point((lo + hi) / 2)
        if found is not None:
            return BaBOutcome(False, counterexample=found, stats={"domains": visited})
        # the worst clause's best row decides the split
        worst = clause_lb.argmin(1)
        in_clause = clause_of_row.to(rows.device).unsqueeze(0) == worst.unsqueeze(1)
        best_row = torch.where(in_clause, rows, torch.full_like(rows, -torch.inf)).argmax(1)
        a = coef.to(lo.device)[torch.arange(lo.shape[0]), best_row]
        width = hi - lo
        score = (a.abs() * width).flatten(1) + 1e-12 * (width / full_width).flatten(1)  # ties: widest
        dim = score.argmax(1)
        flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
        mid = (flat_lo.gather(1, dim[:, None]) + flat_hi.gather(1, dim[:, None])) / 2
        left_hi = flat_hi.scatter(1, dim[:, None], mid)
        right_lo = flat_lo.scatter(1, dim[:, None], mid)
        shape = lo.shape[1:]
        lower = torch.cat([lower, flat_lo.reshape(-1, *shape), right_lo.reshape(-1, *shape)])
        upper = torch.cat([upper, left_hi.reshape(-1, *shape), flat_hi.reshape(-1, *shape)])
    return BaBOutcome(True, stats={"domains": visited})
