"""Piecewise-linear programs: the exact lowering of a network that the ``smt`` and ``milp`` backends solve.

``lower(graph, input_set)`` turns a network of affine ops (Linear/Gemm, Conv2d, folded BatchNorm and
other scale-and-shift, AvgPool, Add, Sub, reshapes, transposes, concatenation), ReLU, LeakyReLU and
MaxPool into a ``Program`` over real variables:

* every input entry is a variable, boxed by the input set's bounds;
* every output of an affine op that is not a plain copy is a variable ``v`` with one equality
  ``v - sum_i L_ri v_i = b_r``; the coefficients ``L`` are the stored weights themselves (each
  tensor is a vector of single variables or constants, so no products of matrices are formed and
  nothing is rounded);
* a ReLU (or LeakyReLU with slope ``a`` in [0, 1)) whose input box ``[l, u]`` from the engine lies on one
  side of zero is that side's linear piece (no variable for ReLU's inactive side at all: the constant
  0); only the *unstable* ones (``l < 0 < u``) become a ``ReluGroup``: a new variable ``y = max(z, a z)``
  that the solver must branch on;
* a max-pool output becomes a copy when one candidate's lower bound beats every other candidate's
  upper bound; otherwise a ``MaxGroup`` ``y = max_i z_i`` over the candidates that can win.

The boxes are the engine's sound float64 bounds (IBP tightened by CROWN) of the exact real network,
which is what makes the big-M constants and the stable-neuron decisions valid.

The program describes the network's *float evaluation* as well as its exact one. Every rounded affine
output carries a rounding variable ``delta`` in its equality, ``v = sum_i L_ri v_i + b_r + delta_r``,
bounded by

    |delta_r| <= g_r (sum_i |L_ri| |v_i| + |b_r|),   g_r = gamma_{k_r + 4} in the runtime's precision,

Higham's a-priori bound for a ``k_r``-term dot product in any summation order, with or without FMA
(``gamma_n = n u / (1 - n u)``; the ``+4`` leaves room for an unfolded BatchNorm's subtract, divide,
multiply and add). ``|v_i|`` is the variable itself where the tensor is known non-negative (ReLU
outputs), so these are linear constraints; elsewhere the box's magnitude. ReLU and max-pooling are
exact in floating point. ``delta = 0`` is the exact network on the stored weights, and every float
evaluation of it (onnxruntime's, PyTorch's) is the program at some admissible ``delta``, so a clause
the program cannot reach is reached neither in exact arithmetic nor by the float network. The engine's
boxes bound the exact network; for the program's variables they are widened by an a-priori bound of
the accumulated rounding (``|L|`` times the error before, plus the ``delta`` bound). Every such bound is
computed in float64 as a nonnegative expression of dot products, which rounding can leave low by ``gamma_k``
relative; each is multiplied by ``certify.engine.fp.path_factor`` (``1 + 2 gamma_{2^40}``) to cover that, and
so are the coefficients ``g |L|`` of the ``delta`` rows.

(``lower(..., float_rounding="margin")`` leaves the rounding variables out and adds that a-priori bound
to the constant margin instead: a smaller problem with a looser margin, which the SMT backend uses.)

Left as a constant per output (``Program.err_const``, propagated by ``|L|`` and the activations'
Lipschitz constants): the representation error of constants the importer folded (BatchNorm into a
scale and shift; ``rel_err`` and ``abs_err`` of a node, see ``certify.engine.fp``; plus ``2 u64`` relative
for coefficients such as an average's ``1/k`` that float64 rounds) and the rounding of LeakyReLU's
product. A clause counts as unreachable only with the rows ``C_j y <= d_j + sum_k |C_jk| err_const_k``
(the margin of ``Program.margin``) infeasible; that is the margin behind a *proved* answer of the
exact backends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse

from .errors import CertifyError
from .graph import Graph, Node
from .sets import Box, InputSet

#: Coefficients below this magnitude are not given to a solver (HiGHS drops ``|a| <= 1e-9``, its
#: ``small_matrix_value``, and perturbs values near it): their contribution is bounded instead.
SMALL_COEF = 1e-7

#: The ops the exact encodings handle.
EXACT_OPS = ("linear", "conv2d", "affine", "avgpool2d", "add", "sub", "reshape", "transpose", "concat",
             "identity", "relu", "leaky_relu", "maxpool2d")


class UnsupportedOp(CertifyError):
    """An op the exact encodings cannot express; the message names the op, the node and a backend that can."""


@dataclass
class ReluGroup:
    """``y = max(z, slope * z)`` on the variables ``z`` (input) and ``y`` (output), ``l < 0 < u`` bounds of z."""

    z: np.ndarray
    y: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    slope: float = 0.0


@dataclass
class MaxGroup:
    """``y = max_i z_i`` over candidate variables ``z`` with bounds ``[lower_i, upper_i]``."""

    y: int
    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


@dataclass
class Program:
    """Variables ``0 .. n_vars-1`` with bounds ``[lo, hi]`` (the first ``n_inputs`` are the input),
    equalities ``eq @ v = eq_rhs``, inequalities ``ub @ v <= ub_rhs`` (the rounding bounds), the groups,
    and the output: ``y_k = v[out_var[k]]`` where ``out_var[k] >= 0``, else the constant
    ``out_const[k]``; ``err_const`` bounds what the program leaves out (see the module docstring)."""

    n_inputs: int
    lo: np.ndarray
    hi: np.ndarray
    eq: sparse.csr_matrix
    eq_rhs: np.ndarray
    ub: sparse.csr_matrix
    ub_rhs: np.ndarray
    relus: list[ReluGroup]
    maxes: list[MaxGroup]
    out_var: np.ndarray
    out_const: np.ndarray
    err_const: np.ndarray
    input_set: InputSet
    stats: dict = field(default_factory=dict)

    @property
    def n_vars(self) -> int:
        return self.lo.shape[0]

    def output_rows(self, C: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
        """``C y`` as ``A v + a``: rows ``[R, n_vars]`` and constants ``[R]`` for ``C [R, n_out]``."""
        var = self.out_var >= 0
        A = sparse.csr_matrix((C[:, var].ravel(), (np.repeat(np.arange(C.shape[0]), var.sum()),
                                                   np.tile(self.out_var[var], C.shape[0]))),
                              shape=(C.shape[0], self.n_vars))
        return A, C[:, ~var] @ self.out_const[~var]

    def margin(self, C: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
        """Per row ``j`` the margin ``sum_k |C_jk| err_const_k`` (what the program leaves out), plus the
        representation error of the float ``C``, ``d`` rounded to nearest from a spec's exact rationals
        (``u (|C_j| m + |d_j|)``, and ``tiny (sum_k m_k + 1)`` for entries rounded below the normal range;
        ``m`` the outputs' magnitudes), enlarged by ``1e-9`` relative to cover the float64 rounding of the
        margin's own computation."""
        u, tiny = 2.0**-53, np.finfo(np.float64).tiny
        m_out = self.output_magnitude()
        rep = u * (np.abs(C) @ m_out) + tiny * (m_out.sum() + 1)
        if d is not None:
            rep = rep + u * np.abs(d)
        return (np.abs(C) @ self.err_const + rep) * (1 + 1e-9) + 1e-300

    def output_magnitude(self) -> np.ndarray:
        """``max |y_k|`` over the program's bounds (a constant output's own magnitude)."""
        var = self.out_var >= 0
        idx = np.where(var, self.out_var, 0)
        bound = np.maximum(np.abs(self.lo[idx]), np.abs(self.hi[idx]))
        return np.where(var, bound, np.abs(self.out_const)) + self.err_const


def unsupported_reason(graph: Graph) -> str | None:
    """Why the exact encodings cannot express ``graph`` (the first offending op and node), or None."""
    for node in graph.nodes:
        if node.op not in EXACT_OPS:
            return (f"op {node.op!r} (node {node.name!r}) is not piecewise linear, so the exact encodings cannot "
                    f"express it; use crown, alpha-crown or bab (input splitting) for such networks")
        if node.op == "leaky_relu" and not 0.0 <= float(node.params["alpha"]) < 1.0:
            return f"leaky_relu with slope {float(node.params['alpha'])} (node {node.name!r}): only slopes in [0, 1)"
    return None


def _gamma(n: np.ndarray, u: float) -> np.ndarray:
    nu = n * u
    if float(np.max(nu, initial=0.0)) >= 0.5:
        raise CertifyError("dot product too long for an a-priori rounding bound")
    return nu / (1 - nu)


def _linear_maps(node: Node, in_shapes: list[tuple[int, ...]], chunk: int = 512):
    """``(L_i sparse [n_out, n_in_i] per input, bias [n_out])`` of an affine op, from its transpose
    applied to unit rows (each entry is one stored coefficient: no rounding for dense and conv layers)."""
    from .engine.rules import RULES

    rule = RULES[node.op]
    n_out = math.prod(node.shape)
    blocks: list[list[sparse.csr_matrix]] = [[] for _ in in_shapes]
    for start in range(0, n_out, chunk):
        rows = min(chunk, n_out - start)
        A = torch.zeros(rows, n_out, dtype=torch.float64)
        A[torch.arange(rows), torch.arange(start, start + rows)] = 1.0
        parts = rule.transpose(node.params, A.reshape(rows, *node.shape), in_shapes)
        for i, part in enumerate(parts):
            blocks[i].append(sparse.csr_matrix(part.reshape(rows, -1).numpy()))
    zeros = [torch.zeros(1, *s, dtype=torch.float64) for s in in_shapes]
    bias = rule.forward(node.params, *zeros).reshape(-1).numpy().astype(np.float64)
    return [sparse.vstack(b).tocsr() for b in blocks], bias


def _pool_windows(node: Node, in_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Per max-pool output (flattened), the flat input indices of its window (padding excluded)."""
    import torch.nn.functional as F

    c, h, w = in_shape
    idx = torch.arange(1, c * h * w + 1, dtype=torch.float64).reshape(1, c, h, w)
    pre = node.params.get("pre_pad")
    if pre is not None:
        idx = F.pad(idx, pre, value=0.0)
    if node.params.get("ceil_mode", False):
        s = node.params["stride"]
        idx = F.pad(idx, (0, s[1], 0, s[0]), value=0.0)
    cols = F.unfold(idx.reshape(c, 1, *idx.shape[-2:]), node.params["kernel"], node.params["dilation"],
                    node.params["padding"], node.params["stride"])  # [c, k*k, L]
    _, oh, ow = node.shape
    L_h = (idx.shape[-2] + 2 * node.params["padding"][0] - node.params["dilation"][0] * (node.params["kernel"][0] - 1) - 1) // node.params["stride"][0] + 1
    L_w = cols.shape[-1] // L_h
    cols = cols.reshape(c, -1, L_h, L_w)[:, :, :oh, :ow]
    out = []
    for ch in range(c):
        for i in range(oh):
            for j in range(ow):
                window = cols[ch, :, i, j]
                out.append(window[window > 0].long().numpy() - 1)
    return out


class _Builder:
    def __init__(self):
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.n = 0
        self.eq_blocks: list[tuple] = []
        self.eq_rhs: list[np.ndarray] = []
        self.ub_blocks: list[tuple] = []
        self.ub_rhs: list[np.ndarray] = []

    def new(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        idx = np.arange(self.n, self.n + lo.size)
        self.lo.append(np.asarray(lo, dtype=np.float64).ravel())
        self.hi.append(np.asarray(hi, dtype=np.float64).ravel())
        self.n += lo.size
        return idx

    def magnitudes(self) -> np.ndarray:
        """``max(|lo|, |hi|)`` of every variable so far."""
        if not self.lo:
            return np.zeros(0)
        return np.maximum(np.abs(np.concatenate(self.lo)), np.abs(np.concatenate(self.hi)))

    def equal(self, out: np.ndarray, coef: sparse.csr_matrix, cols: np.ndarray, rhs: np.ndarray) -> None:
        """``v[out_r] - sum_c coef[r, c] v[cols[c]] = rhs_r``."""
        coef = coef.tocoo()
        rows = np.concatenate([np.arange(out.size), coef.row])
        vcols = np.concatenate([out, cols[coef.col]])
        vals = np.concatenate([np.ones(out.size), -coef.data])
        self.eq_blocks.append((rows, vcols, vals, out.size))
        self.eq_rhs.append(rhs)

    def upper(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, rhs: np.ndarray) -> None:
        """Rows ``sum vals v[cols] <= rhs`` (triplets with rows local to this block)."""
        self.ub_blocks.append((rows, cols, vals, rhs.size))
        self.ub_rhs.append(rhs)

    def inequalities(self) -> tuple[sparse.csr_matrix, np.ndarray]:
        return self._stack(self.ub_blocks, self.ub_rhs)

    def equalities(self) -> tuple[sparse.csr_matrix, np.ndarray]:
        return self._stack(self.eq_blocks, self.eq_rhs)

    def _stack(self, blocks, rhs_blocks) -> tuple[sparse.csr_matrix, np.ndarray]:
        r, c, v, offset = [], [], [], 0
        for rows, cols, vals, m in blocks:
            r.append(rows + offset)
            c.append(cols)
            v.append(vals)
            offset += m
        if not r:
            return sparse.csr_matrix((0, self.n)), np.zeros(0)
        mat = sparse.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(offset, self.n))
        return mat, np.concatenate(rhs_blocks)


def lower(graph: Graph, input_set: InputSet, eval_dtype: torch.dtype | None = None,
          use_bounds: bool = True, float_rounding: str = "variables") -> Program:
    """The ``Program`` of ``graph`` over the single-instance ``input_set`` (see the module docstring).
    ``eval_dtype``: the precision of the reference runtime (default: the one the importer recorded in
    ``graph.meta["runtime_dtype"]``, else float32).
    ``use_bounds=False`` ignores the engine's bounds (every ReLU and max-pool stays a case split, no
    variable bounds but the input's, infinite margins): an encoding that does not depend on the
    engine, for SMT cross-checks of it (a MILP needs the bounds for its big-M constants).
    ``float_rounding``: ``"variables"`` (rounding variables, see the module docstring), ``"margin"``
    (none; instead the a-priori bound of the accumulated rounding joins the constant margin: looser,
    but a smaller problem, which suits SMT) or ``"none"`` (the exact network alone: oracles)."""
    if float_rounding not in ("variables", "margin", "none"):
        raise ValueError(f"float_rounding: expected variables, margin or none, got {float_rounding!r}")
    variables = float_rounding == "variables"
    from .engine.crown import compute_boxes
    from .engine.fp import SOUND, path_factor, sound_context, unit_roundoff
    from .engine.rules import RULES

    why = unsupported_reason(graph)
    if why:
        raise UnsupportedOp(why)
    if input_set.batch_size != 1:
        raise ValueError("lower takes a single-instance input set")
    if eval_dtype is None:
        eval_dtype = graph.runtime_dtype
    u_eval = unit_roundoff(eval_dtype)
    t_eval = torch.finfo(eval_dtype).tiny
    u64 = unit_roundoff(torch.float64)
    pf = path_factor(torch.float64)  # computed nonnegative error terms cover their own evaluation (fp.path_factor)
    g64 = graph.to(device="cpu", dtype=torch.float64)
    s64 = input_set.reshape(graph.input_shape).to(device="cpu", dtype=torch.float64)
    with sound_context():
        boxes = compute_boxes(g64, s64, SOUND, refine=use_bounds)
    if not use_bounds:
        boxes = {k: (v if k == graph.input else Box(torch.full_like(v.lower, -math.inf), torch.full_like(v.upper, math.inf)))
                 for k, v in boxes.items()}

    b = _Builder()
    box_in = s64.bounds()
    n_in = graph.n_inputs
    var: dict[str, np.ndarray] = {}  # per tensor, flat: variable index or -1 (constant)
    const: dict[str, np.ndarray] = {}
    eub: dict[str, np.ndarray] = {}  # a-priori bound of |float - exact| (widens the engine's boxes)
    err_r: dict[str, np.ndarray] = {}  # what the program leaves out (folded constants; LeakyReLU's product)
    var[graph.input] = b.new(box_in.lower.numpy().ravel(), box_in.upper.numpy().ravel())
    const[graph.input] = np.zeros(n_in)
    eub[graph.input] = np.zeros(n_in)
    err_r[graph.input] = np.zeros(n_in)
    shapes = {graph.input: graph.input_shape}

    def bounds(name: str) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the program's variables of ``name``: the exact network's box, widened."""
        box: Box = boxes[name]
        slack = (eub[name] if variables else 0.0) + err_r[name]
        return box.lower.numpy().ravel() - slack, box.upper.numpy().ravel() + slack

    def mag(name: str) -> np.ndarray:
        lo, hi = bounds(name)
        return np.maximum(np.abs(lo), np.abs(hi))

    def absolute(name: str) -> tuple[sparse.csr_matrix, np.ndarray]:
        """``|v| <= X @ v + x0``: the variable itself where it is non-negative (up to a tiny negative
        lower bound, added twice), a constant's magnitude, or the box's magnitude elsewhere."""
        lo, _ = bounds(name)
        z, c = var[name], const[name]
        m = mag(name)
        lin = (z >= 0) & (lo >= -1e-6 * (1 + m))
        rows = np.nonzero(lin)[0]
        X = sparse.csr_matrix((np.ones(rows.size), (rows, z[rows])), shape=(z.size, b.n))
        return X, np.where(lin, 2 * np.maximum(0.0, -lo), np.where(z < 0, np.abs(c), m))

    unstable = 0
    relus: list[ReluGroup] = []
    maxes: list[MaxGroup] = []
    for node in g64.nodes:
        rule = RULES[node.op]
        out, n_out = node.output, math.prod(node.shape)
        shapes[out] = node.shape
        if rule.linear:
            maps, bias = _linear_maps(node, [shapes[i] for i in node.inputs])
            full = sparse.hstack(maps).tocsr()
            full.eliminate_zeros()
            m_cols = np.concatenate([mag(i) for i in node.inputs])
            # coefficients a solver may drop or perturb (HiGHS drops |a| <= 1e-9) leave the program: their
            # contribution, at most |L_small| m, joins the constant margin
            small = full.copy()
            small.data = np.where(np.abs(small.data) < SMALL_COEF, small.data, 0.0)
            small.eliminate_zeros()
            full.data = np.where(np.abs(full.data) < SMALL_COEF, 0.0, full.data)
            full.eliminate_zeros()
            cols = np.concatenate([var[i] for i in node.inputs])
            consts = np.concatenate([const[i] for i in node.inputs])
            is_var = cols >= 0
            nnz = np.diff(full.indptr)
            first = np.zeros(n_out)
            first[nnz > 0] = full.data[full.indptr[:-1][nnz > 0]]
            copy = (nnz == 1) & (first == 1.0) & (bias == 0) & (np.diff(small.indptr) == 0)
            absL = abs(full)
            m_in = absL @ m_cols
            rel = float(np.max(np.asarray(node.params.get("rel_err", 0.0)))) if "rel_err" in node.params else 0.0
            abs_err = node.params.get("abs_err")
            abs_err = (torch.as_tensor(abs_err, dtype=torch.float64).expand(1, *node.shape).reshape(-1).numpy()
                       if abs_err is not None else 0.0)
            abs_small = abs(small)
            dropped = abs_small @ m_cols
            err_r[out] = (absL @ np.concatenate([err_r[i] for i in node.inputs]) + np.where(
                copy, 0.0, (rel + 2 * u64) * m_in + abs_err) + dropped) * pf
            # the runtime's rounding (engine.rules.affine_runtime_error): gamma_{n+4+k} in its precision,
            # against the file's own additive constants, plus flushed operands and results
            n_terms = np.diff(full.indptr) + np.diff(small.indptr) + 4.0 + float(node.params.get("runtime_ops", 0))
            g = np.where(copy | (float_rounding == "none"), 0.0, _gamma(n_terms, u_eval))
            b_rt = node.params.get("runtime_bias_abs")
            b_rt = (torch.as_tensor(b_rt, dtype=torch.float64).expand(1, *node.shape).reshape(-1).numpy()
                    if b_rt is not None else np.abs(bias))
            absL_all = absL + abs_small
            sub = absL_all.copy()  # the weights a flushing runtime reads as zero
            sub.data = np.where(sub.data < t_eval, sub.data, 0.0)
            extra = np.where(g > 0, g * (absL_all @ np.full(m_cols.size, t_eval) + b_rt + dropped)
                             + sub @ m_cols + 2 * n_terms * t_eval, 0.0)
            with np.errstate(invalid="ignore"):  # 0 * inf where there is no rounding variable
                delta_max = np.where(g > 0, g * m_in + extra, 0.0) * pf
            eub[out] = absL @ np.concatenate([eub[i] for i in node.inputs]) + delta_max
            if bool(copy.all()):  # moves only: the output is the inputs' variables, permuted
                src = full.indices[full.indptr[:-1]]
                var[out], const[out] = cols[src], consts[src]
                continue
            parts = [absolute(i) for i in node.inputs]
            X = sparse.vstack([p[0] for p in parts]).tocsr()
            x0 = np.concatenate([p[1] for p in parts])
            var_mag = b.magnitudes()  # the variables X refers to (all created before this layer's)
            lo, hi = bounds(out)
            v = b.new(lo, hi)
            rounded = np.nonzero(g > 0)[0] if variables else np.zeros(0, dtype=np.int64)
            delta = b.new(-delta_max[rounded], delta_max[rounded])
            rhs = bias + (full[:, ~is_var] @ consts[~is_var] if (~is_var).any() else 0.0)
            coef = sparse.hstack([full[:, is_var], sparse.csr_matrix(
                (np.ones(rounded.size), (rounded, np.arange(rounded.size))), shape=(n_out, rounded.size))]).tocsr()
            b.equal(v, coef, np.concatenate([cols[is_var], delta]), rhs)
            # +-delta_r - g_r |L_r| X v <= g_r |L_r| x0 + extra_r; coefficients of g |L| X too small for the
            # solver are bounded by their magnitude instead (moved to the right-hand side)
            W = (sparse.diags(g[rounded] * pf) @ (absL[rounded] @ X)).tocsr()  # pf: W's own rounding
            tiny_w = W.copy()
            tiny_w.data = np.where(tiny_w.data < SMALL_COEF, tiny_w.data, 0.0)
            W.data = np.where(W.data < SMALL_COEF, 0.0, W.data)
            W.eliminate_zeros()
            W = W.tocoo()
            cap = (g[rounded] * (absL[rounded] @ x0) + extra[rounded] + tiny_w @ var_mag) * pf
            k = rounded.size
            for sign in (1.0, -1.0):
                b.upper(np.concatenate([np.arange(k), W.row]), np.concatenate([delta, W.col]),
                        np.concatenate([np.full(k, sign), -W.data]), cap)
            var[out], const[out] = v, np.zeros(n_out)
        elif node.op in ("relu", "leaky_relu"):
            a = float(node.params["alpha"]) if node.op == "leaky_relu" else 0.0
            src = node.inputs[0]
            z, c = var[src], const[src]
            lo, hi = bounds(src)
            v, k = z.copy(), c.copy()
            is_c = z < 0
            k[is_c] = np.maximum(c[is_c], a * c[is_c])
            active = ~is_c & (lo >= 0)
            inactive = ~is_c & (hi <= 0)
            mixed = ~is_c & ~active & ~inactive
            if a == 0.0:
                v[inactive], k[inactive] = -1, 0.0
            elif inactive.any():  # y = a z: one scaled copy per neuron
                idx = np.nonzero(inactive)[0]
                y = b.new(a * lo[idx], a * hi[idx])
                b.equal(y, sparse.diags(np.full(idx.size, a), format="csr"), z[idx], np.zeros(idx.size))
                v[idx] = y
            if mixed.any():
                idx = np.nonzero(mixed)[0]
                y = b.new(a * lo[idx] if a > 0 else np.zeros(idx.size), hi[idx])
                relus.append(ReluGroup(z[idx], y, lo[idx], hi[idx], a))
                v[idx] = y
                unstable += idx.size
            var[out], const[out] = v, k
            # errors pass at most 1:1 (slope a on the negative side); a ReLU whose input stays negative
            # in every evaluation outputs exactly 0
            for err in (eub, err_r):
                dead = boxes[src].upper.numpy().ravel() + eub[src] + err_r[src] < 0
                err[out] = np.where(dead, a, 1.0) * err[src]
            if a:
                err_r[out] = err_r[out] + 2 * u_eval * a * mag(src)
            if float_rounding != "none":  # a subnormal operand flushed to zero by the runtime
                eub[out] = eub[out] + 3 * t_eval
        elif node.op == "maxpool2d":
            src = node.inputs[0]
            windows = _pool_windows(node, shapes[src])
            z, c = var[src], const[src]
            lo, hi = bounds(src)
            v, k = np.full(n_out, -1), np.zeros(n_out)
            e_u, e_r = np.zeros(n_out), np.zeros(n_out)
            for o, w in enumerate(windows):
                e_u[o], e_r[o] = eub[src][w].max(), err_r[src][w].max()
                w = w[hi[w] >= lo[w].max()]  # the candidates that can be the maximum
                if w.size == 1:
                    v[o], k[o] = z[w[0]], c[w[0]]
                    continue
                if (z[w] < 0).all():
                    k[o] = float(c[w].max())
                    continue
                if (z[w] < 0).any():  # constants among the candidates: variables fixed to their values
                    fixed = w[z[w] < 0]
                    z = z.copy()
                    z[fixed] = b.new(c[fixed], c[fixed])
                    var[src] = z
                y = int(b.new(np.array([lo[w].max()]), np.array([hi[w].max()]))[0])
                maxes.append(MaxGroup(y, z[w].copy(), lo[w].copy(), hi[w].copy()))
                v[o] = y
                unstable += 1
            var[out], const[out], eub[out], err_r[out] = v, k, e_u + (3 * t_eval if float_rounding != "none" else 0.0), e_r
        else:  # unsupported_reason has ruled this out
            raise UnsupportedOp(f"op {node.op!r} (node {node.name!r})")

    eq, eq_rhs = b.equalities()
    ub, ub_rhs = b.inequalities()
    out = graph.output
    return Program(n_in, np.concatenate(b.lo), np.concatenate(b.hi), eq, eq_rhs, ub, ub_rhs, relus, maxes,
                   var[out].astype(np.int64), const[out], err_r[out] + (0.0 if variables else eub[out]), s64,
                   stats={"variables": b.n, "unstable": unstable, "equalities": eq.shape[0],
                          "rounding_bound": float(eub[out].max(initial=0.0))})
