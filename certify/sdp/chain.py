"""A network of affine ops and ReLUs as a chain of float64 matrices with proven perturbation bounds.

``lower_chain(graph, input_set)`` returns hidden layers ``k = 1..K`` and an output layer:

    z_k = W_k x_{k-1} + b_k + e_k,   |e_k| <= E_k,   x_k = relu(z_k),   y = W_o x_K + b_o + e_o,

where ``x_0`` is the input and ``z_k`` is *any* value the pre-activation takes: in exact arithmetic on
the file's constants, or (``graph.semantics == "runtime"``) as the runtime evaluates it. ``W_k, b_k``
are float64 matrices as computed here; ``E_k`` covers everything they leave out.

The argument, by induction over the affine ops between two ReLUs. Keep, for the current tensor ``t``,
``t = W x + b + delta`` with ``|delta| <= D`` (at a segment's start: ``W = I, b = 0`` and ``D`` the
runtime's flush error of the ReLU that produced ``x``, ``rules.runtime_perturbation``, or 0). An affine
op with stored map ``L`` and constant ``f`` (read off ``rule.transpose`` on unit rows and ``rule.forward``
at 0: each entry one stored coefficient) gives

    t' = L t + f + r + e,   |r| <= (rel + 2 u64) |L| m_t + abs_err,   |e| <= E_node,

``r`` the importer's recorded representation error of folded constants (``rel_err``, ``abs_err``;
``2 u64`` for coefficients such as ``1/k`` that float64 rounds, as ``certify.pwl``), ``e`` the runtime's
rounding at the node (``boxes.perturbation``; 0 under ``semantics="real"``), ``m_t`` the magnitude of
``t``'s engine box. With ``W' = fl(L W)`` and ``b' = fl(L b + f)``, Higham's bound for ``k``-term dot
products (any order, FMA or not) gives ``|W' - L W| <= gamma_k |L| |W|`` and
``|b' - (L b + f)| <= gamma_{k+1} (|L| |b| + |f|)``, hence

    D' = |L| D + |r| + E_node + gamma_k |L| |W| m_x + gamma_{k+1} (|L| |b| + |f|),

``m_x`` the magnitude of ``x``'s box. Moves (reshape, transpose, identity) are exact and change nothing
but the order. ``D`` is evaluated in float64 with every term non-negative and the sum multiplied by
``(1 + 2 gamma_{k+8})`` plus the smallest normal per operation, so it is an upper bound of its exact value.
At a ReLU, ``E_k = D``. The ReLU itself is exact; a flushed subnormal output (``|f| <= tiny``) starts
the next segment's ``D``, so ``x_k`` is exactly ``relu(z_k)``.

Boxes are the engine's (``compute_boxes``: IBP tightened by CROWN, float64 with outward rounding, widened
by the runtime's perturbation): the pre-activation box ``[l_k, u_k]`` contains every ``z_k``. A neuron
with ``u_k <= 0`` has ``x_k = 0`` exactly and is removed (its column of ``W_{k+1}`` with it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.crown import compute_boxes
from ..engine.fp import gamma, sound_context, sound_rounding, unit_roundoff
from ..engine.rules import RULES, magnitude
from ..graph import Graph, Node
from ..sets import InputSet, up

#: Affine ops of the chain (Linear, Conv, folded BatchNorm/scale-shift, average pooling, moves).
AFFINE_OPS = ("linear", "conv2d", "affine", "avgpool2d", "reshape", "identity", "transpose")
SDP_OPS = AFFINE_OPS + ("relu",)

F64 = torch.float64
U64 = unit_roundoff(F64)
TINY = torch.finfo(F64).tiny


def unsupported_reason(graph: Graph) -> str | None:
    """Why ``graph`` is not an affine+ReLU chain the SDP relaxation can state, or None."""
    if not graph.nodes:
        return "the graph has no operations"
    prev = graph.input
    for node in graph.nodes:
        if node.op not in SDP_OPS:
            return (f"op {node.op!r} (node {node.name!r}) is outside the affine+ReLU chain the SDP relaxation "
                    f"handles (Linear, Conv, folded BatchNorm, average pooling, flatten/reshape, ReLU); "
                    f"use crown, alpha-crown or bab")
        if tuple(node.inputs) != (prev,):
            return (f"node {node.name!r} does not read the previous node's output: the SDP relaxation handles "
                    f"chains only (no residual or parallel branches); use crown, alpha-crown or bab")
        prev = node.output
    if prev != graph.output:
        return "the graph's output is not its last node's output"
    return None


@dataclass
class Layer:
    """``z = W x + b + e`` with ``|e| <= E`` and the engine's box ``[lower, upper]`` of ``z``; ``index``: which
    neurons of the graph's tensor these are (the others were removed)."""

    W: Tensor
    b: Tensor
    E: Tensor
    lower: Tensor
    upper: Tensor
    index: Tensor | None = None

    @property
    def n(self) -> int:
        return self.b.numel()


@dataclass
class Chain:
    """Input box ``[x_lower, x_upper]``; hidden layers (each followed by a ReLU, inactive neurons
    removed); the output layer (its box is the output's)."""

    x_lower: Tensor
    x_upper: Tensor
    hidden: list[Layer]
    out: Layer

    @property
    def sizes(self) -> list[int]:
        """Variables per block: the input, then each hidden layer's kept neurons."""
        return [self.x_lower.numel()] + [layer.n for layer in self.hidden]

    @property
    def n_vars(self) -> int:
        return sum(self.sizes)


def _dense_map(node: Node, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(L [n_out, n_in], f [n_out])`` of an affine op: ``op(t) = L t + f``."""
    rule = RULES[node.op]
    n_out = math.prod(node.shape)
    eye = torch.eye(n_out, dtype=F64).reshape(n_out, *node.shape)
    (L,) = rule.transpose(node.params, eye, [in_shape])
    f = rule.forward(node.params, torch.zeros(1, *in_shape, dtype=F64)).reshape(-1)
    return L.reshape(n_out, -1), f


def _up(t: Tensor, k: int) -> Tensor:
    """A non-negative float64 sum computed with about ``k`` roundings, made an upper bound of its exact value."""
    return up(t * (1 + 2 * gamma(k + 8, F64)) + (k + 8) * TINY)


class _Segment:
    """``t = W x + b + delta``, ``|delta| <= D``, over the kept entries ``x`` of the segment's start tensor;
    ``W is None`` means the selection of the kept entries (``b`` = 0)."""

    def __init__(self, keep: Tensor, D: Tensor, m_x: Tensor):
        self.keep = keep
        self.W: Tensor | None = None
        self.b = torch.zeros(keep.numel(), dtype=F64)
        self.D = D
        self.m_x = m_x

    def apply(self, L: Tensor, f: Tensor, exact: bool, rep: Tensor, E: Tensor) -> None:
        k = L.shape[1]
        absL = L.abs()
        first = self.W is None
        if first:  # L S and L 0 + f are exact (S selects the kept entries)
            W, b, comp = L[:, self.keep], f.clone(), torch.zeros_like(f)
        elif exact:  # a move: every entry of L W is one product with 1, every entry of L b one value
            W, b, comp = L @ self.W, L @ self.b + f, torch.zeros_like(f)
        else:
            comp = gamma(k, F64) * (absL @ (self.W.abs() @ self.m_x)) + gamma(k + 1, F64) * (absL @ self.b.abs() + f.abs())
            W, b = L @ self.W, L @ self.b + f
        self.D = _up(absL @ self.D + rep + E + comp, k)
        self.W, self.b = W, b

    def matrix(self) -> Tensor:
        if self.W is not None:
            return self.W
        return torch.eye(self.keep.numel(), dtype=F64)[:, self.keep]


def _rep_error(node: Node, L: Tensor, m_t: Tensor) -> Tensor:
    """``(rel + 2 u64) |L| m_t + abs_err``: the importer's folded constants (see the module docstring)."""
    rel = float(torch.as_tensor(node.params.get("rel_err", 0.0), dtype=F64).max()) if "rel_err" in node.params else 0.0
    out = (rel + 2 * U64) * (L.abs() @ m_t)
    abs_err = node.params.get("abs_err")
    if abs_err is not None:
        out = out + torch.as_tensor(abs_err, dtype=F64).expand(1, *node.shape).reshape(-1)
    return out


def lower_chain(graph: Graph, input_set: InputSet) -> Chain:
    """The chain of ``graph`` (``unsupported_reason`` must be None) over a single-instance input set, with
    the engine's sound boxes (``compute_boxes`` in ``sound_context``, under ``graph.semantics``)."""
    g64 = graph.to(device="cpu", dtype=F64)
    s64 = input_set.reshape(graph.input_shape).to(device="cpu", dtype=F64)
    if s64.batch_size != 1:
        raise ValueError("lower_chain takes a single-instance input set")
    rnd = sound_rounding(g64)
    with sound_context():
        boxes = compute_boxes(g64, s64, rnd)
        flat = {name: (box.lower.reshape(-1), box.upper.reshape(-1)) for name, box in boxes.items()}
        mag = {name: magnitude(box).reshape(-1) for name, box in boxes.items()}
        shapes = {graph.input: graph.input_shape, **{n.output: n.shape for n in g64.nodes}}
        x_lo, x_hi = flat[graph.input]
        hidden: list[Layer] = []
        seg = _Segment(torch.ones_like(x_lo, dtype=torch.bool), torch.zeros_like(x_lo), mag[graph.input])
        for node in g64.nodes:
            src = node.inputs[0]
            if node.op == "relu":
                lo, hi = flat[src]
                W = seg.matrix()
                keep = hi > 0
                hidden.append(Layer(W[keep], seg.b[keep], seg.D[keep], lo[keep], hi[keep], torch.nonzero(keep)[:, 0]))
                flush = boxes.perturbation.get(node.name)
                D = flush.reshape(-1).clone() if flush is not None else torch.zeros_like(lo)
                D[~keep] = 0.0  # a removed neuron outputs exactly 0
                seg = _Segment(keep, D, mag[node.output][keep])
                continue
            L, f = _dense_map(node, shapes[src])
            rule = RULES[node.op]
            rep = torch.zeros_like(f) if rule.exact else _rep_error(node, L, mag[src])
            E = boxes.perturbation.get(node.name)
            E = E.reshape(-1) if E is not None else torch.zeros_like(f)
            seg.apply(L, f, rule.exact, rep, E)
        W = seg.matrix()
        out_lo, out_hi = flat[graph.output]
        out = Layer(W, seg.b, seg.D, out_lo, out_hi)
    return Chain(x_lo, x_hi, hidden, out)
