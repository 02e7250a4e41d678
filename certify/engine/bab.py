"""Branch-and-bound: by input splitting for low-dimensional input boxes (ACAS Xu, ``input_split``) and by
ReLU splitting with split constraints inside the bound (beta-CROWN, ``relu_split``) for the rest.

Input splitting:

A domain (sub-box of the input box) is closed when every clause of the spec has a row whose
certified lower bound is positive on it; the spec holds when every domain is closed, because the
domains always cover the input box (each split replaces a box by its two halves). Open domains are
split along the input dimension with the largest estimated effect on the bound: ``|a_i| w_i`` for the
coefficients ``a`` of the worst clause's best row in CROWN's final linear bound and the domain's width
``w_i`` (halving ``w_i`` raises that row's bound by about ``|a_i| w_i / 2``). Domains are bounded in
batches; the centre of every open domain and the minimiser of its deciding row's linear bound are
offered to ``try_point`` (which replays candidates on the reference runtime) so that violated
properties end with a counterexample.

Generic over the bounding function: ``bound(box, C, d) -> (row lower bounds [N, R], input coefficients
[N, R, *shape])``; it must be sound for a *proved* answer (the backends pass sound CROWN).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..budget import Budget
from ..graph import Graph
from ..sets import Box, InputSet
from ..spec import clause_max
from .optim import adam

Bound = Callable[[Box, Tensor, Tensor], tuple[Tensor, Tensor]]


#: Default memory cap of the open-domain store, in MiB.
MEMORY_MB = 4096.0


@dataclass(frozen=True)
class InputSplitOptions:
    """``batch`` domains bounded per pass; the open domains' tensors never take more than ``memory_mb``
    MiB (the memory cap: the search stops with unknown rather than store more). The working memory of one
    pass is fixed by ``batch`` and the network, not by the search. ``only_unstable``: the bounding function's
    intermediate CROWN passes refine only the values unstable in some domain of the batch
    (``compute_boxes(only_unstable=True)``; read by the backend's bounding function)."""

    batch: int = 256
    memory_mb: float = MEMORY_MB
    only_unstable: bool = True


@dataclass
class BaBOutcome:
    """``bounds`` (when proved): per clause, the smallest certified (sound) lower bound of its best row over
    the closed domains, i.e. a certified lower bound of the clause's margin on the whole input set."""

    proved: bool
    counterexample: object | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)
    bounds: Tensor | None = None


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _Store:
    """Bookkeeping of the search's stop rules: domains visited, peak bytes of the open-domain store."""

    def __init__(self, budget: Budget, memory_mb: float):
        self.budget, self.cap, self.visited, self.peak = budget, int(memory_mb * 2**20), 0, 0

    def stats(self, n_open: int) -> dict:
        return {"domains": self.visited, "open": n_open, "peak_store_mb": round(self.peak / 2**20, 6)}

    def halt(self, n_open: int) -> BaBOutcome | None:
        """Out of time: unknown (timeout)."""
        if self.budget.expired():
            return BaBOutcome(False, reason="timeout", stats=self.stats(n_open))
        return None

    def admit(self, nbytes: int, n_open: int) -> BaBOutcome | None:
        """A store of ``nbytes`` is about to be kept: unknown (memory cap) if it exceeds the cap."""
        if nbytes > self.cap:
            return BaBOutcome(False, reason=f"memory cap: {n_open} open domains would need "
                              f"{nbytes / 2**20:.1f} MiB, more than the {self.cap / 2**20:g} MiB allowed",
                              stats=self.stats(n_open))
        self.peak = max(self.peak, nbytes)
        return None


def _deciding_row(rows: Tensor, clause_of_row: Tensor, n_clauses: int) -> Tensor:
    """Per domain, the row that decides it: the best row of the clause with the lowest bound."""
    worst = clause_max(rows, clause_of_row, n_clauses).argmin(1)
    in_clause = clause_of_row.to(rows.device).unsqueeze(0) == worst.unsqueeze(1)
    return torch.where(in_clause, rows, torch.full_like(rows, -torch.inf)).argmax(1)


def _split_dimension(a: Tensor, width: Tensor, full_width: Tensor) -> Tensor:
    """Per domain, the input dimension to bisect: the largest sum of two scores, each scaled to 1 at its
    domain's maximum: ``|a_i| w_i`` (the deciding row's linear bound loses ``|a_i| w_i`` to dimension i)
    and ``w_i / W_i`` (the width left of the root box's). The first alone is myopic: it keeps cutting the
    dimensions the *linear* bound depends on, while the bound is loose because of the ReLUs the other
    dimensions keep unstable. Measured on ACAS Xu with ``bab`` (40 s, one thread): 1_4 prop_1, 3_1 prop_1,
    1_1 prop_2, 1_3 prop_3 and 4_5 prop_10 went from unknown after 32,000-40,000 domains to proved in 0.6
    to 3.7 s (430-2,500 domains), 5_1 prop_3 from 29.5 s to 0.9 s, 1_1 prop_3 from 6,379 domains to 4,115.
    Either score alone is worse than the sum on some of these."""
    s1 = (a.abs() * width).flatten(1)
    s2 = (width / full_width).flatten(1)
    return (s1 / s1.amax(1, keepdim=True).clamp_min(1e-30) + s2 / s2.amax(1, keepdim=True).clamp_min(1e-30)).argmax(1)


def input_split(box: Box, C: Tensor, d: Tensor, clause_of_row: Tensor, bound: Bound,
                try_point: Callable[[Tensor], object | None], budget: Budget,
                options: InputSplitOptions = InputSplitOptions()) -> BaBOutcome:
    """Decide one single-instance spec over ``box`` (``[1, *shape]``) with rows ``C [1, R, n]``, ``d [1, R]``."""
    K = int(clause_of_row.max()) + 1
    lower, upper = box.lower, box.upper
    full_width = (box.upper - box.lower).clamp_min(1e-30)
    store = _Store(budget, options.memory_mb)
    certified = torch.full((K,), torch.inf, dtype=torch.float64)
    while lower.shape[0]:
        halt = store.halt(lower.shape[0])
        if halt is not None:
            return halt
        lo, hi = lower[: options.batch], upper[: options.batch]
        lower, upper = lower[options.batch:], upper[options.batch:]
        n = lo.shape[0]
        store.visited += n
        rows, coef = bound(Box(lo, hi), C.expand(n, -1, -1), d.expand(n, -1))
        rows = rows.to(lo.device)
        clause_lb = clause_max(rows, clause_of_row, K)
        open_ = ~(clause_lb > 0).all(1)
        if bool((~open_).any()):
            certified = torch.minimum(certified, clause_lb[~open_].min(0).values.double().cpu())
        if not bool(open_.any()):
            continue
        lo, hi, rows, coef = lo[open_], hi[open_], rows[open_], coef[open_]
        best_row = _deciding_row(rows, clause_of_row, K)  # it decides the split
        a = coef.to(lo.device)[torch.arange(lo.shape[0]), best_row]
        # candidates: each open domain's centre and the minimiser of its deciding row's linear bound
        found = try_point(torch.cat([(lo + hi) / 2, torch.where(a >= 0, lo, hi)]))
        if found is not None:
            return BaBOutcome(False, counterexample=found, stats=store.stats(lower.shape[0]))
        width = hi - lo
        dim = _split_dimension(a, width, full_width)
        flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
        mid = (flat_lo.gather(1, dim[:, None]) + flat_hi.gather(1, dim[:, None])) / 2
        left_hi = flat_hi.scatter(1, dim[:, None], mid)
        right_lo = flat_lo.scatter(1, dim[:, None], mid)
        shape = lo.shape[1:]
        n_open = lower.shape[0] + 2 * lo.shape[0]
        full = store.admit(_nbytes([lower, upper]) + 4 * _nbytes([lo]), n_open)
        if full is not None:
            return full
        lower = torch.cat([lower, flat_lo.reshape(-1, *shape), right_lo.reshape(-1, *shape)])
        upper = torch.cat([upper, left_hi.reshape(-1, *shape), flat_hi.reshape(-1, *shape)])
    return BaBOutcome(True, stats=store.stats(0), bounds=certified)


# --- ReLU splitting (beta-CROWN) ------------------------------------------------------------------


@dataclass(frozen=True)
class ReluSplitOptions:
    """``batch`` domains bounded per pass, the open domains' tensors within ``memory_mb`` MiB (the
    memory cap, as for input splitting); ``iterations`` Adam steps on the slopes (alpha) and split
    multipliers (beta) of each batch, learning rates ``lr_alpha`` and ``lr_beta``; ``candidates``: 1 for
    BaBSR's choice, k > 1 for filtered smart branching over its k best (``_filtered_choice``)."""

    batch: int = 128
    memory_mb: float = MEMORY_MB
    iterations: int = 10
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    candidates: int = 1


@dataclass
class _Domains:
    """Open domains, batched: per ReLU node the split signs ``[N, *shape]`` (+1 active, -1 inactive, 0 free),
    the lower slopes and split multipliers ``[N, R, *shape]``, and the last lower bounds ``[N, R]``."""

    signs: dict[str, Tensor]
    alphas: dict[str, Tensor]
    betas: dict[str, Tensor]
    lower: Tensor

    def __len__(self) -> int:
        return self.lower.shape[0]

    def nbytes(self) -> int:
        return _nbytes([*self.signs.values(), *self.alphas.values(), *self.betas.values(), self.lower])

    def take(self, n: int) -> tuple["_Domains", "_Domains"]:
        def cut(d, a, b):
            return {k: v[a:b] for k, v in d.items()}

        head = _Domains(cut(self.signs, 0, n), cut(self.alphas, 0, n), cut(self.betas, 0, n), self.lower[:n])
        rest = _Domains(cut(self.signs, n, None), cut(self.alphas, n, None), cut(self.betas, n, None), self.lower[n:])
        return head, rest

    @staticmethod
    def cat(parts: list["_Domains"]) -> "_Domains":
        parts = [p for p in parts if len(p)] or parts[:1]
        keys = parts[0].signs.keys()
        return _Domains({k: torch.cat([p.signs[k] for p in parts]) for k in keys},
                        {k: torch.cat([p.alphas[k] for p in parts]) for k in keys},
                        {k: torch.cat([p.betas[k] for p in parts]) for k in keys},
                        torch.cat([p.lower for p in parts]))


class _Queue:
    """The open domains, first in first out, as a deque of batches: taking a batch and adding children cost
    the size of the batch, not of every open domain (one concatenation of the whole store per round made
    ReLU splitting's store copy itself: 9 % of the time on MNIST 256x4 at a 280 MB store)."""

    def __init__(self, first: _Domains):
        self.parts: deque[_Domains] = deque([first])
        self.n = len(first)
        self.bytes = first.nbytes()

    def __len__(self) -> int:
        return self.n

    def nbytes(self) -> int:
        """The open domains' tensors (a batch partly taken is counted as what is left of it)."""
        return self.bytes

    def take(self, n: int) -> _Domains:
        got, k = [], 0
        while self.parts and k < n:
            part = self.parts.popleft()
            if k + len(part) > n:
                part, rest = part.take(n - k)
                self.parts.appendleft(rest)
            got.append(part)
            k += len(part)
        out = got[0] if len(got) == 1 else _Domains.cat(got)
        self.n -= len(out)
        self.bytes -= out.nbytes()
        return out

    def add(self, parts: list[_Domains]) -> None:
        for part in parts:
            if len(part):
                self.parts.append(part)
                self.n += len(part)
                self.bytes += part.nbytes()


def _clamped(boxes: dict[str, Box], relus: dict[str, str], signs: dict[str, Tensor], n: int) -> dict[str, Box]:
    """Root boxes for ``n`` domains, with each split neuron's pre-activation box cut to its side of zero."""
    out = {k: Box(b.lower.expand(n, *b.shape), b.upper.expand(n, *b.shape)) for k, b in boxes.items()}
    for node, z in relus.items():
        s, b = signs[node], out[z]
        zero = torch.zeros((), dtype=b.lower.dtype, device=b.lower.device)
        out[z] = Box(torch.where(s > 0, b.lower.clamp(min=0), b.lower), torch.where(s < 0, torch.minimum(b.upper, zero), b.upper))
    return out


def _with_split(signs: dict[str, Tensor], choice: Tensor, side: int | Tensor) -> dict[str, Tensor]:
    """Copies of the domains' ``signs`` with neuron ``choice[i]`` of domain ``i`` set to ``side`` (or
    ``side[i]``); neurons are numbered across the ReLUs in the order of ``signs``, each ReLU's values flat."""
    out, offset = {}, 0
    for k, v in signs.items():
        flat = v.flatten(1).clone()
        local = choice - offset
        hit = ((local >= 0) & (local < flat.shape[1])).nonzero()[:, 0]
        flat[hit, local[hit]] = side if isinstance(side, int) else side[hit].to(flat.dtype)
        out[k] = flat.reshape(v.shape)
        offset += flat.shape[1]
    return out


def _filtered_choice(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor, clause_of_row: Tensor, K: int,
                     relus: dict[str, str], score: Tensor, k: int, boxes: dict[str, Box],
                     signs: dict[str, Tensor], alphas: dict[str, Tensor], betas: dict[str, Tensor]) -> Tensor:
    """Filtered smart branching (De Palma et al. 2021; alpha-beta-CROWN's ``kfsb`` with ``reduceop: max``, its
    MNIST-FC setting): of each domain's ``k`` best neurons by the estimate ``score`` ``[n, neurons]``, the one
    whose better child has the best bound (the worse child's bound as the criterion lost MNIST 256x4
    prop_8_0.03, which the better child's and BaBSR's prove).
    Each child is bounded by one fast CROWN pass with the domain's slopes and multipliers, the candidate
    cut to its side (in its box and as a split constraint with multiplier 0), batched over domains,
    candidates and both sides. Only the choice of neuron depends on these bounds, never a proof."""
    from .crown import crown_lower
    from .fp import FAST

    n = score.shape[0]
    k = min(k, score.shape[1])
    top, cand = score.topk(k, 1)
    N = 2 * n * k
    flat = cand.reshape(-1).repeat(2)
    side = torch.cat([torch.ones(n * k, dtype=torch.int8), -torch.ones(n * k, dtype=torch.int8)]).to(cand.device)

    def rep(t: Tensor) -> Tensor:  # [n, ...] -> [2 n k, ...]: side-major, then domain, then candidate
        return t.repeat_interleave(k, 0).repeat(2, *([1] * (t.dim() - 1)))

    child = _with_split({name: rep(v) for name, v in signs.items()}, flat, side)
    cut = _clamped({t: Box(rep(b.lower), rep(b.upper)) for t, b in boxes.items()}, relus, child, N)
    with torch.no_grad():
        rows = crown_lower(graph, input_set[torch.zeros(N, dtype=torch.long, device=score.device)],
                           C.expand(N, -1, -1), d.expand(N, -1), FAST, boxes=cut,
                           alphas={name: rep(a) for name, a in alphas.items()},
                           betas={name: (rep(b), child[name].to(b.dtype)) for name, b in betas.items()})
    better = clause_max(rows, clause_of_row, K).min(1).values.reshape(2, n, k).max(0).values
    better = torch.where(torch.isfinite(top), better.nan_to_num(-torch.inf), torch.full_like(better, -torch.inf))
    return cand.gather(1, better.argmax(1, keepdim=True))[:, 0]


def relu_split(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor, clause_of_row: Tensor,
               root_boxes: tuple[dict[str, Box], dict[str, Box]], root_alphas: dict[str, Tensor],
               try_points: Callable[[Tensor], object | None], budget: Budget,
               options: ReluSplitOptions = ReluSplitOptions(), device=None) -> BaBOutcome:
    """Decide a single-instance spec (``C [1, R, n]``, ``d [1, R]``) on a ReLU network by splitting ReLUs.

    ``root_boxes = (sound, fast)``: sound float64 bounds of every tensor over the input set (the root
    of the search), and the same in float32 for the fast pass. A domain fixes some pre-activations to one
    side of zero; it is bounded by CROWN over the root boxes cut to those sides, with the split
    constraints also in the objective through multipliers ``beta >= 0`` (``crown.backward_lower``), and
    slopes and multipliers optimised per row by a few Adam steps in float32 (warm-started from the
    parent). A domain whose fast bound closes every clause is certified again in float64 with sound
    rounding, with the same slopes and multipliers; only then is it closed. The domains always cover the
    input set (each split replaces a domain by its two sides), so the spec holds when none is open.

    Branching (BaBSR-style estimate of the bound improvement): for every unstable, unsplit neuron, the
    intercept of its upper relaxation line, ``-l u / (u - l)``, times the negative part of the worst
    clause's best row's coefficient on the ReLU's output; the largest is split, or with ``options.candidates``
    k > 1, of the k largest the one whose better child bounds best (``_filtered_choice``; off by default: on
    MNIST-FC it proved less than BaBSR alone, see RESULTS.md). Each open domain's
    minimiser of the final linear bound over the input box is offered to ``try_points``.
    """
    from .crown import crown_lower
    from .fp import FAST, sound_context, sound_rounding

    g64 = graph.to(device=device, dtype=torch.float64)
    g32 = graph.to(device=device, dtype=torch.float32)
    dev = g64.device
    sound_boxes, fast_boxes = root_boxes
    relus = {n.name: n.inputs[0] for n in g64.nodes if n.op == "relu"}
    K = int(clause_of_row.max()) + 1
    R = C.shape[1]
    s64 = input_set.reshape(graph.input_shape).to(device=dev, dtype=torch.float64)
    s32 = s64.to(dtype=torch.float32)
    box32 = s32.bounds()
    C32, d32 = C.to(dev, torch.float32), d.to(dev, torch.float32)
    C64, d64 = C.to(dev, torch.float64), d.to(dev, torch.float64)
    zeros = {k: torch.zeros(1, *fast_boxes[z].shape, dtype=torch.int8, device=dev) for k, z in relus.items()}
    alphas0 = {k: root_alphas[k].to(dev, torch.float32) if k in root_alphas else
               torch.where(fast_boxes[z].upper >= -fast_boxes[z].lower, 1.0, 0.0).unsqueeze(1).expand(1, R, *fast_boxes[z].shape)
               for k, z in relus.items()}
    betas0 = {k: torch.zeros(1, R, *fast_boxes[z].shape, device=dev) for k, z in relus.items()}
    queue = _Queue(_Domains(zeros, {k: v.clone() for k, v in alphas0.items()}, betas0,
                            torch.full((1, R), -torch.inf, device=dev)))
    exhausted = 0
    store = _Store(budget, options.memory_mb)
    certified = torch.full((K,), torch.inf, dtype=torch.float64)
    while len(queue):
        halt = store.halt(len(queue))
        if halt is not None:
            return halt
        batch = queue.take(options.batch)
        n = len(batch)
        store.visited += n
        signs = batch.signs
        s_n = s32[torch.zeros(n, dtype=torch.long, device=dev)]  # the one input set, once per domain
        boxes = _clamped(fast_boxes, relus, signs, n)
        alphas = {k: v.clone().requires_grad_(True) for k, v in batch.alphas.items()}
        betas = {k: v.clone().requires_grad_(True) for k, v in batch.betas.items()}
        opt = adam([{"params": list(alphas.values()), "lr": options.lr_alpha},
                    {"params": list(betas.values()), "lr": options.lr_beta}])
        sign_f = {k: v.to(torch.float32) for k, v in signs.items()}
        best = torch.full((n, R), -torch.inf, device=dev)
        best_a = {k: v.detach().clone() for k, v in alphas.items()}
        best_b = {k: v.detach().clone() for k, v in betas.items()}
        coef: dict = {}
        for it in range(options.iterations):
            coef = {}
            value = crown_lower(g32, s_n, C32.expand(n, -1, -1), d32.expand(n, -1), FAST, boxes=boxes, alphas=alphas,
                                betas={k: (betas[k], sign_f[k]) for k in relus}, coefficients=coef)
            with torch.no_grad():
                better = value > best
                best = torch.where(better, value, best)
                for k in relus:
                    m = better.reshape(n, R, *([1] * (alphas[k].dim() - 2)))
                    best_a[k] = torch.where(m, alphas[k], best_a[k])
                    best_b[k] = torch.where(m, betas[k], best_b[k])
            if it + 1 == options.iterations or not relus or bool((clause_max(best, clause_of_row, K) > 0).all()):
                break
            opt.zero_grad()
            (-value.sum()).backward()
            opt.step()
            with torch.no_grad():
                for k in relus:
                    alphas[k].clamp_(0.0, 1.0)
                    betas[k].clamp_(min=0.0)
        closing = (clause_max(best, clause_of_row, K) > 0).all(1)
        if bool(closing.any()):
            idx = closing.nonzero()[:, 0]
            m = idx.numel()
            with sound_context():
                rows = crown_lower(g64, s64[torch.zeros(m, dtype=torch.long, device=dev)], C64.expand(m, -1, -1),
                                   d64.expand(m, -1), sound_rounding(g64),
                                   boxes=_clamped(sound_boxes, relus, {k: v[idx] for k, v in signs.items()}, m),
                                   alphas={k: best_a[k][idx].double() for k in relus},
                                   betas={k: (best_b[k][idx].double(), signs[k][idx].double()) for k in relus})
            clause_lb = clause_max(rows, clause_of_row, K)
            sound_closed = (clause_lb > 0).all(1)
            if bool(sound_closed.any()):
                certified = torch.minimum(certified, clause_lb[sound_closed].min(0).values.cpu())
            closing = torch.zeros_like(closing)
            closing[idx] = sound_closed
        open_ = ~closing
        if not bool(open_.any()):
            continue
        o = open_.nonzero()[:, 0]
        # candidate counterexamples: the minimiser of the deciding row's linear bound over the input box
        row = _deciding_row(best[o], clause_of_row, K)
        A_x = coef["input"].detach()[o, row]
        points = torch.where(A_x >= 0, box32.lower[0], box32.upper[0])
        found = try_points(points)
        if found is not None:
            return BaBOutcome(False, counterexample=found, stats=store.stats(len(queue)))
        # branching
        scores = []
        for k, z in relus.items():
            b = boxes[z]
            lo, hi = b.lower[o].flatten(1), b.upper[o].flatten(1)
            a = coef[k].detach()[o, row].flatten(1)
            free = (signs[k][o].flatten(1) == 0) & (lo < 0) & (hi > 0)
            intercept = -lo * hi / (hi - lo).clamp_min(1e-12)
            score = (-a).clamp(min=0) * intercept + 1e-6 * a.abs() * (hi - lo)
            scores.append(torch.where(free, score, torch.full_like(score, -torch.inf)))
        if not scores:  # no ReLU at all: CROWN was exact, nothing to split
            exhausted += o.numel()
            continue
        score = torch.cat(scores, 1)
        top, choice = score.max(1)
        splittable = torch.isfinite(top)
        exhausted += int((~splittable).sum())
        o, choice, score = o[splittable], choice[splittable], score[splittable]
        if not o.numel():
            continue
        if options.candidates > 1:
            choice = _filtered_choice(g32, s32, C32, d32, clause_of_row, K, relus, score, options.candidates,
                                      {t: Box(b.lower[o], b.upper[o]) for t, b in boxes.items()},
                                      {k: v[o] for k, v in signs.items()}, {k: best_a[k][o] for k in relus},
                                      {k: best_b[k][o] for k in relus})
        full = store.admit(queue.nbytes() + 2 * batch.nbytes() * o.numel() // n, len(queue) + 2 * o.numel())
        if full is not None:
            return full
        queue.add([_Domains(_with_split({k: v[o] for k, v in signs.items()}, choice, side),
                            {k: best_a[k][o] for k in relus}, {k: best_b[k][o] for k in relus}, best[o])
                   for side in (1, -1)])
    if exhausted:
        return BaBOutcome(False, reason=f"{exhausted} domains with every ReLU split stayed open", stats=store.stats(0))
    return BaBOutcome(True, stats=store.stats(0), bounds=certified)
