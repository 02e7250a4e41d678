"""CROWN: backward linear bound propagation (Zhang et al. 2018) over the computational graph
(Xu et al. 2020, "Automatic Perturbation Analysis").

For coefficients ``A`` on a tensor ``t``, the backward pass walks the graph from ``t`` to the input,
replacing each op by its transpose (affine ops) or by the linear relaxation that bounds ``<A, op(z)>``
from below (nonlinear ops: the lower line where a coefficient is positive, the upper line where it is
negative). It ends with ``<A, t(x)> >= <A_x, x> + bias`` for every ``x`` whose intermediate values lie in
their boxes, and the input set concretises the right-hand side (``concretize_lower``: dual norms for
Lp balls, the box otherwise), so a new input set needs no change here.

The specification is folded in: the pass starts at the output with ``A = C`` (one row per
constraint), so one backward pass bounds every row of every clause.

Intermediate bounds are needed only at inputs of nonlinear ops; each is the intersection of IBP and
a CROWN pass started at that tensor (rows ``+e_i`` and ``-e_i``).

Floating point: with ``Rounding(sound=True)`` (float64, inside ``fp.sound_context``) every step adds
an a-priori bound on its rounding error to ``err``, so the returned value is below the exact
real-arithmetic minimum. For an affine op ``y = L z + f0`` the computed ``A L`` and ``<A, f0>`` are off
by at most ``gamma_N <|A|, |L| m_z + |f0|>`` with ``N`` the output size plus one and
``m_z = max(|l_z|, |u_z|)``, plus the op's recorded representation errors; a relaxation step by
``u <|A_z|, m_z> + gamma_{2M+1} <|A|, |lb| + |ub|>``; the relaxation lines themselves are valid in exact
arithmetic (see ``ops/activations.py``); the bias sum by ``gamma_k`` of its terms; and the final
concretisation by ``fp.concretize_lower``.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from ..graph import Graph
from ..sets import Box, InputSet, LpBall, up
from .fp import FAST, Rounding, path_factor, sound_context, sound_rounding, unit_roundoff
from .memo import recall
from .rules import RULES, magnitude, node_box, runtime_perturbation

# Intermediate-bound rows per backward pass: sized so a coefficient tensor [B, 2 rows, n] stays near 256k
# values; the passes are memory-bound, and cache-sized chunks run faster than one big one.
CHUNK_VALUES = 1 << 18


def _flat_dot(A: Tensor, t: Tensor) -> Tensor:
    """``<A, t>`` over the trailing dimensions: ``A`` is ``[B, R, *s]``, ``t`` is ``[B or 1, 1, *s]`` (or
    broadcasts to it); one batched matrix-vector product, without materialising ``A * t``."""
    t = t.expand(t.shape[0], 1, *A.shape[2:]) if t.dim() == A.dim() else t.expand(*A.shape[:1], 1, *A.shape[2:])
    return torch.matmul(A.flatten(2), t.reshape(t.shape[0], -1, 1)).squeeze(-1)


def concretize_lower(input_set: InputSet, A: Tensor, rnd: Rounding) -> Tensor:
    """``min_x <A_r, x>`` over the input set, per row (``A`` is ``[B, R, *shape]``), below the exact value.

    Box (and L-inf ball): ``<A, c> - <|A|, r>``; Lp ball: ``<A, c> - eps ||A||_q``, intersected with its clip
    box by taking the larger of the two lower bounds. Sound rounding subtracts
    ``gamma_{n+3} (<|A|, |c|> + radius term)``.
    """
    n = A[0, 0].numel()
    if isinstance(input_set, LpBall) and input_set.p != math.inf:
        c = input_set.center.unsqueeze(1)
        Af = A.flatten(2)
        q = {2.0: 2.0, 1.0: math.inf}[input_set.p]
        dual = Af.abs().amax(-1) if q == math.inf else torch.linalg.vector_norm(Af, ord=q, dim=-1)
        radius = input_set.eps.reshape(-1, 1) * dual
        value = _flat_dot(A, c) - radius
        if rnd.sound:
            value = rnd.lo(value - rnd.error_bound(_flat_dot(A.abs(), c.abs()) + radius, n + 3))
        if input_set.clip is not None:
            value = torch.maximum(value, concretize_lower(input_set.clip, A, rnd))
        return value
    box = rnd.input_box(input_set.bounds())
    c, r = rnd.center_radius(box)
    c, r = c.unsqueeze(1), r.unsqueeze(1)
    value = _flat_dot(A, c) - _flat_dot(A.abs(), r)
    if rnd.sound:
        value = rnd.lo(value - rnd.error_bound(_flat_dot(A.abs(), c.abs() + r), n + 1))
    return value


def _shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    shapes = {graph.input: graph.input_shape}
    for node in graph.nodes:
        shapes[node.output] = node.shape
    return shapes


class Boxes(dict):
    """Boxes of every tensor by name, plus ``perturbation[node name]``: each node's runtime error bound
    ``E`` computed from its input boxes (valid for any smaller boxes too, e.g. after a split)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.perturbation: dict[str, Tensor] = {}


def backward_lower(graph: Graph, boxes: Mapping[str, Box], input_set: InputSet, start: str, A: Tensor,
                   rnd: Rounding, alphas: Mapping[str, Tensor] | None = None,
                   coefficients: dict | None = None,
                   betas: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Lower bound of ``<A_r, t_start(x)>`` per row over the input set, ``[B, R]``.

    If ``coefficients`` is a dict, the final linear coefficients on the input (``[B, R, *input]``) are
    stored in it under ``"input"``, and those on each nonlinear node's output under the node's name
    (branching heuristics use them).

    ``boxes`` must hold bounds of every tensor between the input and ``start`` (from ``compute_boxes``);
    ``alphas`` maps a ReLU-like node name to its lower slopes ``[B, R, *shape]`` (alpha-CROWN).

    Split constraints (beta-CROWN, Wang et al. 2021): ``betas[name] = (beta, sign)`` for a node whose
    input neurons ``z_j`` are constrained to ``sign_j z_j >= 0`` (``sign`` in {-1, 0, 1}, ``[B, *shape]``;
    the caller also clamps their boxes to the constrained side). For any ``beta >= 0`` (``[B, R, *shape]``)
    ``<A, relu(z)> >= <A, relu(z)> - <beta sign, z>`` wherever the constraints hold, so subtracting
    ``beta sign`` from the coefficients on ``z`` keeps a valid lower bound over the constrained region
    and lets the optimiser use the constraints inside the bound, not only through the boxes.
    """
    shapes = _shapes(graph)
    B, R = A.shape[:2]
    acc: dict[str, Tensor] = {start: A}
    bias = torch.zeros(B, R, dtype=A.dtype, device=A.device)
    err = torch.zeros_like(bias)
    bias_terms, bias_mag = 0, torch.zeros_like(bias)
    last = max(i for i, n in enumerate(graph.nodes) if n.output == start) if start != graph.input else -1
    for node in reversed(graph.nodes[: last + 1]):
        Aout = acc.pop(node.output, None)
        if Aout is None:
            continue
        rule = RULES[node.op]
        in_boxes = [boxes[name] for name in node.inputs]
        if rnd.runtime is not None:  # the runtime's error at this node: a bounded variable e, |e| <= E
            cache = getattr(boxes, "perturbation", None)
            E = cache.get(node.name) if cache is not None else None
            if E is None:
                E = runtime_perturbation(node, in_boxes, rnd)
            if E is not None:
                dot = _flat_dot(Aout.abs(), E.unsqueeze(1))
                err = err + dot + rnd.error_bound(dot, Aout[0, 0].numel() + 1)
        if rule.relax is not None:
            z = in_boxes[0]
            alpha = alphas.get(node.name) if alphas is not None else None
            rel = rule.relax(node.params, z.lower, z.upper, rnd, alpha)
            lw = rel.lw if rel.lw.dim() == Aout.dim() else rel.lw.unsqueeze(1)
            uw = rel.uw.unsqueeze(1)
            lb, ub = rel.lb.unsqueeze(1), rel.ub.unsqueeze(1)
            pos = Aout.clamp(min=0)
            neg = Aout - pos  # exact
            if rnd.sound:  # one rounded product per element (the other term is an exact zero)
                A_ins = (pos * lw + neg * uw,)
            else:  # A uw + A+ (lw - uw): one pass over A fewer, but cancels, so not for sound bounds
                A_ins = (torch.addcmul(Aout * uw, pos, lw - uw),)
            term = _flat_dot(neg, ub) + (_flat_dot(pos, lb) if bool(lb.any()) else 0.0)
            if rnd.sound:
                M = lb[0, 0].numel()
                err = err + rnd.error_bound(_flat_dot(A_ins[0].abs(), magnitude(z).unsqueeze(1)), 2)
                err = err + rnd.error_bound(_flat_dot(Aout.abs(), lb.abs() + ub.abs()), 2 * M + 1)
            if coefficients is not None:
                coefficients[node.name] = Aout
            if betas is not None and node.name in betas:
                beta, sign = betas[node.name]
                beta = beta.clamp(min=0.0) if rnd.sound else beta
                a = A_ins[0] - beta * sign.unsqueeze(1)  # beta * sign is exact: sign is -1, 0 or 1
                if rnd.sound:  # one rounded subtraction per element
                    err = err + rnd.error_bound(_flat_dot(a.abs(), magnitude(z).unsqueeze(1)), 1)
                A_ins = (a,)
        elif rule.backward is not None:
            A_ins, term, step_err = rule.backward(node.params, Aout, in_boxes, rnd)
            err = err + step_err
        else:
            flat = Aout.reshape(B * R, *Aout.shape[2:])
            in_shapes = [shapes[name] for name in node.inputs]
            A_ins = tuple(a.reshape(B, R, *s) for a, s in zip(rule.transpose(node.params, flat, in_shapes), in_shapes))
            term = None
            if not rule.exact:
                zeros = [torch.zeros(1, *s, dtype=A.dtype, device=A.device) for s in in_shapes]
                f0 = rule.forward(node.params, *zeros).unsqueeze(1)
                term = _flat_dot(Aout, f0)
                if rnd.sound:
                    m = rule.abs_forward(node.params, magnitude(in_boxes[0])).unsqueeze(1)
                    N = Aout[0, 0].numel() + 1
                    err = err + rnd.error_bound(_flat_dot(Aout.abs(), m + f0.abs()), N,
                                                extra_rel=node.params.get("rel_err", 0.0))
                    abs_err = node.params.get("abs_err")
                    if abs_err is not None:  # a tensor broadcasting to the output, or a number
                        abs_err = torch.as_tensor(abs_err, dtype=A.dtype, device=A.device)
                        err = err + _flat_dot(Aout.abs(), abs_err.expand(1, *Aout.shape[2:]).unsqueeze(1))
        if term is not None:
            bias = bias + term
            bias_terms += 1
            bias_mag = bias_mag + term.abs()
        for name, a in zip(node.inputs, A_ins):
            if name in acc:  # a tensor read by several ops: coefficients add up (one rounding each)
                a = acc[name] + a
                if rnd.sound:
                    err = err + rnd.error_bound(_flat_dot(a.abs(), magnitude(boxes[name]).unsqueeze(1)), 1)
            acc[name] = a
    A_x = acc.get(graph.input)
    if A_x is None:
        A_x = torch.zeros(B, R, *graph.input_shape, dtype=A.dtype, device=A.device)
    if coefficients is not None:
        coefficients["input"] = A_x
    value = concretize_lower(input_set, A_x, rnd) + bias
    if rnd.sound:
        err = err + rnd.error_bound(bias_mag, bias_terms + 2)
        value = rnd.lo(rnd.lo(value) - err * path_factor(err.dtype))  # err's own sums, rounded (fp.path_factor)
    return value


def _needs_bounds(graph: Graph) -> set[str]:
    """Tensors read by nonlinear ops: the only ones whose bounds CROWN tightens."""
    return {node.inputs[0] for node in graph.nodes
            if RULES[node.op].relax is not None or RULES[node.op].backward is not None}


_MOVES = ("affine", "reshape", "transpose", "identity")  # elementwise or value-moving affine ops


def _exact_under_ibp(graph: Graph, input_set: InputSet) -> set[str]:
    """Tensors that IBP already bounds exactly, so that CROWN cannot tighten them: over a box, every value of
    an affine map of the input is bounded exactly by interval arithmetic as long as the path from the input
    mixes values once (one dense or convolution layer among elementwise scalings and moves). Over an L2 or L1
    ball the box is looser than the ball, so nothing qualifies."""
    if isinstance(input_set, LpBall) and input_set.p != math.inf:
        return set()
    mixes = {graph.input: 0}
    for node in graph.nodes:
        rule = RULES[node.op]
        if len(node.inputs) == 1 and rule.linear and node.inputs[0] in mixes:
            mixes[node.output] = mixes[node.inputs[0]] + (node.op not in _MOVES)
    return {name for name, m in mixes.items() if m <= 1}


def compute_boxes(graph: Graph, input_set: InputSet, rnd: Rounding, refine: bool = True,
                  alphas: Mapping[str, Mapping[str, Tensor]] | None = None,
                  intersect_ibp: bool = True, rows: Mapping[str, Tensor] | None = None,
                  base: Mapping[str, Box] | None = None, only_unstable: bool = False) -> dict[str, Box]:
    """Bounds of every tensor: IBP, tightened by CROWN at the inputs of nonlinear ops (``refine``).

    Every neuron there is refined, stable ones included: their tighter bounds tighten the IBP of the
    layers after them (which is intersected with CROWN in turn). ``alphas[t]`` optionally gives lower
    slopes (rows ``+e_i`` then ``-e_i``) for the pass that bounds tensor ``t``; the bound with CROWN's
    own slopes is then computed too and the tighter one kept. ``intersect_ibp=False`` keeps CROWN's
    bounds alone at those tensors (plain CROWN as published, and as auto_LiRPA computes it: looser).
    ``rows[t]`` (flat value indices) restricts the refinement of ``t`` to those values, the others keeping
    ``base[t]`` (valid bounds from an earlier pass, intersected with this pass's IBP); ``alphas[t]`` then
    holds slopes for those rows only (``+e_i`` for each index in order, then ``-e_i``).
    ``only_unstable`` (without ``alphas``) refines only the values whose box so far contains 0 in some instance
    of the batch: a stable value meets a ReLU that is exact on its box, so its CROWN bound changes no
    relaxation; what is given up is its tighter box inside the IBP of later tensors (intersected with CROWN).
    Tensors IBP bounds exactly (``_exact_under_ibp``: the first layer over a box) are not refined: a CROWN pass
    there costs as much as all the others of a two-layer CNN and gains at most rounding."""
    boxes = Boxes({graph.input: rnd.input_box(input_set.bounds())})
    needs = _needs_bounds(graph) - (set() if not intersect_ibp else _exact_under_ibp(graph, input_set)) \
        if refine else set()
    for node in graph.nodes:
        boxes[node.output], E = node_box(node, [boxes[n] for n in node.inputs], rnd)
        if E is not None:
            boxes.perturbation[node.name] = E
        if node.output in needs:
            if not intersect_ibp:
                inf = torch.full_like(boxes[node.output].lower, torch.inf)
                boxes[node.output] = Box(-inf, inf)
            own = alphas.get(node.output) if alphas else None
            only = rows.get(node.output) if rows is not None else None
            if only is None and only_unstable:
                b = boxes[node.output]
                only = ((b.lower < 0) & (b.upper > 0)).flatten(1).any(0).nonzero()[:, 0]
            if only is None:
                boxes[node.output] = _refine(graph, boxes, input_set, node.output, rnd, own)
            else:
                boxes[node.output] = _refine_some(graph, boxes, input_set, node.output, rnd, own, only,
                                                  base[node.output] if base is not None else None)
    return boxes


def _refine_some(graph: Graph, boxes: dict[str, Box], input_set: InputSet, name: str, rnd: Rounding,
                 alphas: Mapping[str, Tensor] | None, only: Tensor, base: Box | None) -> Box:
    """``_refine`` of the values ``only``; the others keep ``base`` intersected with the current box. The
    two parts are joined by selection, not by a maximum, so that the refined values' gradient is whole."""
    ibp = boxes[name]
    kept = ibp.intersect(base) if base is not None else ibp
    if not only.numel():
        return kept
    refined = _refine(graph, boxes, input_set, name, rnd, alphas, only)
    mask = torch.zeros(ibp.lower[0].numel(), dtype=torch.bool, device=ibp.lower.device)
    mask[only.to(mask.device)] = True
    mask = mask.reshape(ibp.lower.shape[1:])
    return Box(torch.where(mask, refined.lower, kept.lower), torch.where(mask, refined.upper, kept.upper))


def _refine(graph: Graph, boxes: dict[str, Box], input_set: InputSet, name: str, rnd: Rounding,
            alphas: Mapping[str, Tensor] | None = None, only: Tensor | None = None) -> Box:
    """Intersect a tensor's box with CROWN bounds of each of its values (rows ``+e_i`` and ``-e_i``), or of
    the values ``only`` (flat indices; ``alphas`` then has the rows of those values alone)."""
    box = boxes[name]
    B = box.lower.shape[0]
    lo, hi = box.lower.reshape(B, -1).clone(), box.upper.reshape(B, -1).clone()
    n = lo.shape[1]
    values = torch.arange(n, device=lo.device) if only is None else only.to(lo.device)
    m = values.numel()
    own = getattr(alphas, "rows", None) if only is None else None  # RowSlopes: the values with slopes of their own
    chunk = max(8, CHUNK_VALUES // (2 * B * n))
    for start in range(0, m, chunk):
        pos = torch.arange(start, min(m, start + chunk), device=lo.device)
        rows = values[pos]
        R = rows.numel()
        eye = torch.zeros(R, n, dtype=lo.dtype, device=lo.device)
        eye[torch.arange(R, device=lo.device), rows] = 1.0
        A = torch.cat([eye, -eye]).unsqueeze(0).expand(B, -1, -1).reshape(B, 2 * R, *box.shape)
        lb = backward_lower(graph, boxes, input_set, name, A, rnd)
        if own is not None:  # the second pass only for the values with slopes of their own (RowSlopes)
            sel = torch.isin(rows, own.to(rows.device)).nonzero()[:, 0]
            if sel.numel():
                sub = torch.cat([sel, sel + R])
                slopes = {k: v.index_select(1, torch.cat([rows[sel], rows[sel] + n])) for k, v in alphas.items()}
                lb_own = backward_lower(graph, boxes, input_set, name, A.index_select(1, sub), rnd, slopes)
                lb = lb.index_copy(1, sub, torch.maximum(lb.index_select(1, sub), lb_own))
        elif alphas is not None:
            pick = torch.cat([pos, pos + m])
            slopes = {k: v.index_select(1, pick) for k, v in alphas.items()}
            lb = torch.maximum(lb, backward_lower(graph, boxes, input_set, name, A, rnd, slopes))
        lo[:, rows] = torch.maximum(lo[:, rows], lb[:, :R])
        hi[:, rows] = torch.minimum(hi[:, rows], -lb[:, R:])
    return Box(lo.reshape(box.lower.shape), hi.reshape(box.upper.shape))


def crown_lower(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor, rnd: Rounding = FAST,
                boxes: Mapping[str, Box] | None = None, alphas: Mapping[str, Tensor] | None = None,
                intermediate_alphas: Mapping[str, Mapping[str, Tensor]] | None = None,
                coefficients: dict | None = None,
                betas: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Lower bounds of ``C_r f(x) - d_r`` over the input set, ``[B, R]`` (``C`` is ``[B, R, n_out]``);
    ``betas``: split constraints (see ``backward_lower``), valid only where they hold."""
    input_set = input_set.reshape(graph.input_shape)
    if boxes is None:
        boxes = compute_boxes(graph, input_set, rnd, alphas=intermediate_alphas)
    A = C.to(graph.dtype).reshape(C.shape[0], C.shape[1], *graph.output_shape)
    value = backward_lower(graph, boxes, input_set, graph.output, A, rnd, alphas, coefficients, betas) - d.to(A.dtype)
    if rnd.sound:  # one subtraction, and the nearest-rounding error of C and d (exact rationals in the spec)
        u = unit_roundoff(A.dtype)
        rep = u * d.to(A.dtype).abs()
        if graph.output in boxes:
            m_out = magnitude(boxes[graph.output]).reshape(-1, 1, *graph.output_shape)
            # relative u in the normal range; below it (a coefficient rounded to a subnormal, or to 0) the
            # error is absolute, under the smallest normal per coefficient: tiny (sum_k m_k + 1) covers C and d
            absolute = torch.finfo(A.dtype).tiny * (m_out.flatten(1).sum(-1, keepdim=True) + 1)
            rep = rep + u * _flat_dot(A.abs(), m_out) + absolute
        value = rnd.lo(value - up(rep * path_factor(A.dtype)))
    return value


def _own_rows(graph: Graph, boxes: Mapping[str, Box], inter: Mapping[str, "RowSlopes"]):
    """For ``compute_boxes(rows=, alphas=)``: every bounded tensor's rows with slopes of their own (none where
    ``inter`` has no entry), and those slopes alone, in ``_refine``'s subset layout."""
    rows, own = {}, {}
    for t in _needs_bounds(graph):
        if t not in inter:
            rows[t] = torch.zeros(0, dtype=torch.long)
            continue
        a = inter[t]
        n = boxes[t].lower[0].numel()
        pick = torch.cat([a.rows, a.rows + n])
        rows[t] = a.rows
        own[t] = {k: v.index_select(1, pick.to(v.device)) for k, v in a.items()}
    return rows, own


class RowSlopes(dict):
    """The slopes (by ReLU name, ``[B, 2 n, ...]``) for the ``2 n`` rows that bound one tensor, and ``rows``:
    the values whose rows carry slopes of their own; every other row holds CROWN's adaptive slopes, whose
    bound ``_refine`` computes anyway, so the pass with these slopes runs on ``rows`` alone."""

    def __init__(self, slopes: Mapping[str, Tensor], rows: Tensor):
        super().__init__(slopes)
        self.rows = rows


def _as64(alphas, dev):
    out = {k: v.detach().to(device=dev, dtype=torch.float64) for k, v in alphas.items()}
    return RowSlopes(out, alphas.rows) if isinstance(alphas, RowSlopes) else out


def sound_boxes(graph: Graph, input_set: InputSet, device, only_unstable: bool = False) -> dict[str, Box]:
    """CROWN's sound float64 boxes of every tensor (``compute_boxes`` with ``sound_rounding``); shared along an
    ``auto`` chain (``memo``): the crown step's are alpha-CROWN's and branch-and-bound's starting boxes."""
    g = graph.to(device=device, dtype=torch.float64)
    s = input_set.reshape(graph.input_shape).to(device=g.device, dtype=torch.float64)

    def compute():
        with sound_context():
            return compute_boxes(g, s, sound_rounding(g), only_unstable=only_unstable)

    return recall("sound-boxes", graph, (s, str(g.device), only_unstable), compute)


def sound_slope_boxes(graph: Graph, input_set: InputSet, intermediate_alphas: Mapping[str, Mapping[str, Tensor]],
                      device=None) -> dict[str, Box]:
    """Sound float64 boxes of every tensor with optimised intermediate slopes, each value never looser than
    CROWN's: with ``RowSlopes`` only their rows are bounded again and the rest keep CROWN's boxes; with full
    slopes every row takes the tighter of the two passes (``_refine``). Shared along an ``auto`` chain."""
    g = graph.to(device=device, dtype=torch.float64)
    dev = g.device
    s = input_set.reshape(graph.input_shape).to(device=dev, dtype=torch.float64)
    crown_boxes = sound_boxes(graph, input_set, device)

    def compute():
        inter = {t: _as64(a, dev) for t, a in intermediate_alphas.items()}
        rnd = sound_rounding(g)
        with sound_context():
            if all(isinstance(a, RowSlopes) for a in inter.values()):
                # CROWN's boxes stand for the rows without slopes of their own; only the others are bounded again
                rows, own = _own_rows(g, crown_boxes, inter)
                return compute_boxes(g, s, rnd, alphas=own, rows=rows, base=crown_boxes)
            return compute_boxes(g, s, rnd, alphas=inter)

    return recall("sound-slope-boxes", graph, (s, str(dev), intermediate_alphas), compute)


def sound_crown_lower(graph: Graph, input_set: InputSet, C: Tensor, d: Tensor,
                      device: str | torch.device | None = None,
                      alphas: Mapping[str, Tensor] | None = None,
                      intermediate_alphas: Mapping[str, Mapping[str, Tensor]] | None = None,
                      coefficients: dict | None = None, only_unstable: bool = False) -> Tensor:
    """``crown_lower`` in float64 with sound rounding: below the exact real-arithmetic minimum and,
    under the graph's default ``runtime`` semantics, below every runtime evaluation (``fp.sound_rounding``).

    Without slopes this is CROWN. With optimised ``alphas`` (final rows) and ``intermediate_alphas``
    (per bounded tensor) it returns the larger of CROWN's bound and the bound with those slopes over
    intermediate boxes that take the tighter of both, row by row: never looser than CROWN. ``only_unstable``:
    CROWN's intermediate boxes refine only unstable values (``compute_boxes``). Inside ``memo.shared()``
    the boxes of an identical earlier call are reused (the bounds themselves are computed again: cheap)."""
    g = graph.to(device=device, dtype=torch.float64)
    dev = g.device
    s = input_set.reshape(graph.input_shape).to(device=dev, dtype=torch.float64)
    C, d = C.to(dev, torch.float64), d.to(dev, torch.float64)
    rnd = sound_rounding(g)
    crown_boxes = sound_boxes(graph, input_set, device, only_unstable)
    slope_boxes = sound_slope_boxes(graph, input_set, intermediate_alphas, device) if intermediate_alphas else None
    with sound_context():
        best = crown_lower(g, s, C, d, rnd, boxes=crown_boxes, coefficients=coefficients)
        if alphas is None and intermediate_alphas is None:
            return best
        boxes = slope_boxes if slope_boxes is not None else crown_boxes
        if slope_boxes is not None:
            best = torch.maximum(best, crown_lower(g, s, C, d, rnd, boxes=boxes))
        if alphas:
            best = torch.maximum(best, crown_lower(g, s, C, d, rnd, boxes=boxes, alphas=_as64(alphas, dev)))
    return best
