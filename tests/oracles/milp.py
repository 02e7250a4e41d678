"""Exact oracle for small ReLU networks: mixed-integer linear programming with HiGHS.

``exact_min(layers, input_shape, lo, hi, c, d)`` returns ``min_{lo <= x <= hi} c @ f(x) - d``
for a network in the layer format of :mod:`numpy_crown` (dense, conv, relu,
flatten; convolutions are lowered to dense matrices).

Encoding (Tjeng, Xiao, Tedrake 2019, big-M form).  One continuous variable per
input entry and per neuron of every node; each affine layer is an equality
``z' = W z + b``; every ReLU ``y = relu(z)`` with IBP bounds ``l <= z <= u`` is

* ``l >= 0``:     ``y = z`` (linear);
* ``u <= 0``:     ``y = 0`` (linear);
* ``l < 0 < u``:  one binary ``a`` and
  ``y >= 0,  y >= z,  y <= u a,  y <= z - l (1 - a)``.

All node variables are also boxed by their (sound) IBP bounds.

Numerical caveat: HiGHS works to tolerances.  We ask for ``mip_rel_gap = 0``,
``mip_abs_gap = 0`` and feasibility tolerances of 1e-9 (primal, dual and integrality;
passed verbatim to HiGHS through ``scipy.optimize.milp``), so the returned objective
is exact up to roughly ``1e-9 * (big-M scale)``; an integrality violation of
``tau`` in a binary lets ``y`` move by up to ``tau * max(u, -l)``.  Tests should
therefore compare with a small tolerance, e.g. ``1e-6`` relative
(``abs(a - b) <= 1e-6 * (1 + abs(b))``), never bit-for-bit.  With
``return_x=True`` the minimiser is returned too; a plain forward pass at it gives an
achieved value (an upper bound of the true minimum) that agrees with the objective
up to the same tolerance.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

try:  # imported as tests.oracles.milp / oracles.milp
    from .numpy_crown import ibp_node_bounds, lower_network
except ImportError:  # imported as a top-level module
    from numpy_crown import ibp_node_bounds, lower_network

__all__ = ["exact_min", "exact_max", "exact_min_ball_linf", "exact_max_ball_linf", "HIGHS_OPTIONS",
           "GRAPH_OPS", "GraphProgram", "OracleError", "graph_forward", "graph_min", "input_bounds", "lower_graph",
           "torch_forward"]

#: Options handed to HiGHS.  The three tolerances are not in scipy's documented set;
#: scipy forwards them verbatim (with a RuntimeWarning that we silence).
HIGHS_OPTIONS = {
    "mip_rel_gap": 0.0,
    "mip_abs_gap": 0.0,
    "primal_feasibility_tolerance": 1e-9,
    "dual_feasibility_tolerance": 1e-9,
    "mip_feasibility_tolerance": 1e-9,
    "presolve": True,
}


def _build(ops, lo, hi):
    """Variables, bounds, integrality and sparse equality/inequality rows of the MILP.

    Returns ``(n_var, var_lo, var_hi, integrality, rows, cols, vals, b_lo, b_hi,
    n_con, out_idx)``: the constraint triplets are lists of blocks (``rows`` already
    global), ``out_idx`` the variable indices of the network output.
    """
    nodes = ibp_node_bounds(ops, lo, hi)
    var_lo: list[np.ndarray] = []
    var_hi: list[np.ndarray] = []
    integ: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    b_lo: list[np.ndarray] = []
    b_hi: list[np.ndarray] = []
    n_var = 0
    n_con = 0

    def new_vars(lo_, hi_, integral=False):
        nonlocal n_var
        idx = np.arange(n_var, n_var + lo_.size)
        var_lo.append(np.asarray(lo_, dtype=np.float64))
        var_hi.append(np.asarray(hi_, dtype=np.float64))
        integ.append(np.full(lo_.size, 1 if integral else 0))
        n_var += lo_.size
        return idx

    def new_rows(r_local, c, v, lo_, hi_):
        """Add constraints ``lo_ <= sum v x[c] <= hi_`` (``r_local`` 0-based within block)."""
        nonlocal n_con
        rows.append(np.asarray(r_local) + n_con)
        cols.append(np.asarray(c))
        vals.append(np.asarray(v, dtype=np.float64))
        b_lo.append(np.asarray(lo_, dtype=np.float64))
        b_hi.append(np.asarray(hi_, dtype=np.float64))
        n_con += np.asarray(lo_).size

    cur = new_vars(*nodes[0])  # the input x
    for k, op in enumerate(ops):
        l_out, u_out = nodes[k + 1]
        if op[0] == "affine":
            W, b = op[1], op[2]
            out = new_vars(l_out, u_out)
            # z' - W z = b
            m = out.size
            r_w, c_w = np.nonzero(W)
            new_rows(
                np.concatenate([np.arange(m), r_w]),
                np.concatenate([out, cur[c_w]]),
                np.concatenate([np.ones(m), -W[r_w, c_w]]),
                b, b,
            )
        else:
            l, u = nodes[k]
            out = new_vars(l_out, u_out)  # [max(l,0), max(u,0)]
            active = l >= 0
            inactive = (~active) & (u <= 0)
            unstable = ~(active | inactive)
            # active: y - z = 0
            ia = np.nonzero(active)[0]
            if ia.size:
                new_rows(np.concatenate([np.arange(ia.size)] * 2),
                         np.concatenate([out[ia], cur[ia]]),
                         np.concatenate([np.ones(ia.size), -np.ones(ia.size)]),
                         np.zeros(ia.size), np.zeros(ia.size))
            # inactive: y = 0 is already imposed by the variable bounds [0, 0].
            iu = np.nonzero(unstable)[0]
            if iu.size:
                n = iu.size
                a = new_vars(np.zeros(n), np.ones(n), integral=True)
                y, z, lu, uu = out[iu], cur[iu], l[iu], u[iu]
                r = np.arange(n)
                # y - z >= 0
                new_rows(np.concatenate([r, r]), np.concatenate([y, z]),
                         np.concatenate([np.ones(n), -np.ones(n)]), np.zeros(n), np.full(n, np.inf))
                # y - u a <= 0
                new_rows(np.concatenate([r, r]), np.concatenate([y, a]),
                         np.concatenate([np.ones(n), -uu]), np.full(n, -np.inf), np.zeros(n))
                # y - z - l a <= -l      (y <= z - l (1 - a))
                new_rows(np.concatenate([r, r, r]), np.concatenate([y, z, a]),
                         np.concatenate([np.ones(n), -np.ones(n), -lu]), np.full(n, -np.inf), -lu)
        cur = out
    return (n_var, np.concatenate(var_lo), np.concatenate(var_hi), np.concatenate(integ),
            rows, cols, vals, b_lo, b_hi, n_con, cur)


def exact_min(layers, input_shape, lo, hi, c, d: float = 0.0, return_x: bool = False,
              time_limit: float | None = 60.0):
    """Exact ``min_{lo <= x <= hi} c @ f(x) - d`` (up to HiGHS tolerances, see module doc).

    ``lo``, ``hi``: flat input bounds; ``c``: vector over the network outputs.
    Returns the optimal objective (float), or ``(value, x_argmin)`` when
    ``return_x``.  Raises ``RuntimeError`` if HiGHS does not prove optimality.
    """
    ops, shapes = lower_network(layers, input_shape)
    lo = np.asarray(lo, dtype=np.float64).ravel()
    hi = np.asarray(hi, dtype=np.float64).ravel()
    c = np.asarray(c, dtype=np.float64).ravel()
    n_out = int(np.prod(shapes[-1]))
    if c.size != n_out:
        raise ValueError(f"c has {c.size} entries, network has {n_out} outputs")
    (n_var, vlo, vhi, integ, rows, cols, vals, b_lo, b_hi, n_con, out_idx) = _build(ops, lo, hi)
    obj = np.zeros(n_var)
    obj[out_idx] = c
    constraints = []
    if n_con:
        A = sparse.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n_con, n_var))
        constraints.append(LinearConstraint(A, np.concatenate(b_lo), np.concatenate(b_hi)))
    options = dict(HIGHS_OPTIONS)
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        res = milp(obj, integrality=integ, bounds=Bounds(vlo, vhi), constraints=constraints,
                   options=options)
    if res.status != 0 or res.x is None:
        raise RuntimeError(f"HiGHS did not solve the MILP to optimality: {res.message}")
    value = float(res.fun) - float(d)
    if return_x:
        x = np.clip(res.x[: lo.size], lo, hi)
        return value, x
    return value


def exact_max(layers, input_shape, lo, hi, c, d: float = 0.0, return_x: bool = False,
              time_limit: float | None = 60.0):
    """Exact ``max_{lo <= x <= hi} c @ f(x) - d`` (``= -exact_min(..., -c, -d)``)."""
    r = exact_min(layers, input_shape, lo, hi, -np.asarray(c, dtype=np.float64), -float(d),
                  return_x=return_x, time_limit=time_limit)
    if return_x:
        return -r[0], r[1]
    return -r


def exact_min_ball_linf(layers, input_shape, center, eps, c, d: float = 0.0,
                        return_x: bool = False, time_limit: float | None = 60.0):
    """:func:`exact_min` over the L-inf ball ``||x - center||_inf <= eps`` (a box)."""
    center = np.asarray(center, dtype=np.float64).ravel()
    return exact_min(layers, input_shape, center - eps, center + eps, c, d,
                     return_x=return_x, time_limit=time_limit)


def exact_max_ball_linf(layers, input_shape, center, eps, c, d: float = 0.0,
                        return_x: bool = False, time_limit: float | None = 60.0):
    """:func:`exact_max` over the L-inf ball ``||x - center||_inf <= eps`` (a box)."""
    center = np.asarray(center, dtype=np.float64).ravel()
    return exact_max(layers, input_shape, center - eps, center + eps, c, d,
                     return_x=return_x, time_limit=time_limit)


# ---------------------------------------------------------------------------------------------------
# The graph oracle: a certify ``Graph`` (every op the exact backends accept), independent of certify.pwl
# ---------------------------------------------------------------------------------------------------
#
# ``lower_graph(graph, input_set)`` builds the oracle's own piecewise-linear program of the network in
# exact arithmetic on its stored (float64) parameters; ``graph_min(program, C, d)`` solves
# ``min_x max_j (C_j f(x) - d_j)`` with HiGHS (big-M); ``tests/oracles/exact.py`` confirms each value
# with z3 on the same program *without* any bound (every ReLU and every max a disjunction).
#
# Nothing here calls certify's engine, its transpose rules, its bounds or ``certify.pwl``: the meaning of
# every op is the PyTorch functional call written out in ``torch_forward`` (``F.linear``, ``F.conv2d``
# after ``F.pad`` of the asymmetric pre-padding, ``F.avg_pool2d``, ``F.max_pool2d``, ``F.leaky_relu``,
# ``reshape``/``permute``/``cat``, ``+``/``-``, ``x * scale + shift``), and
#
# * the linear map of every affine op is read off that forward evaluated in float64 on scaled basis
#   vectors (``(f(S e_i) - f(0)) / S`` with ``S = 2^30``, so that a bias does not cost the weights'
#   low bits), ``f(0)`` its constant; it is then checked against the forward at random points;
#   a row that copies one input entry (reshape, transpose, concat, identity) reuses that variable;
# * ReLU/LeakyReLU's slopes are ``F.leaky_relu``'s values at -1 and 1 (the negative slope must be in
#   [0, 1));
# * max-pooling's candidates come from index arithmetic on the (pre-padded) input (positions in the
#   symmetric or asymmetric padding, or beyond the input for ``ceil_mode``, are -inf and never win),
#   the output size from ``F.max_pool2d`` itself, and the windows are checked against
#   ``F.max_pool2d`` at random points;
# * big-M constants and variable bounds are plain float64 interval arithmetic (``|L|`` times the
#   radius), widened at every node by ``1e-6 |v| + 1e-9``.
#
# ReLU/LeakyReLU ``y = max(z, a z)`` with bounds ``l < 0 < u``: one binary ``s`` and
# ``y >= z, y >= a z, y <= z - (1 - a) l (1 - s), y <= a z + (1 - a) u s``; stable ones are equalities.
# Max ``y = max_i z_i`` (after dropping candidates whose upper bound is below another's lower bound):
# binaries ``s_i``, ``sum s_i = 1``, ``y >= z_i``, ``y <= z_i + (U - l_i)(1 - s_i)``, ``U = max_i u_i``.
# Input sets: a box; an L-inf ball (a box, intersected with its clip box); an L1 ball with auxiliary
# ``t_i >= |x_i - c_i|``, ``sum t_i <= eps`` (and its clip box).

import math
from dataclasses import dataclass, field

GRAPH_OPS = ("linear", "conv2d", "affine", "avgpool2d", "add", "sub", "reshape", "transpose", "concat",
             "identity", "relu", "leaky_relu", "maxpool2d")
_BASIS_SCALE = 2.0 ** 30
WIDEN_REL, WIDEN_ABS = 1e-6, 1e-9


class OracleError(RuntimeError):
    """The oracle cannot encode the graph, or one of its own self-checks failed."""


def _widen(lo, hi):
    return lo - (WIDEN_REL * np.abs(lo) + WIDEN_ABS), hi + (WIDEN_REL * np.abs(hi) + WIDEN_ABS)


def _t64(v):
    import torch

    return v.to(torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v


def torch_forward(node, *xs):
    """The node's meaning as PyTorch functional calls on a float64 batch ``[B, *shape]``."""
    import torch
    import torch.nn.functional as F

    p = {k: _t64(v) for k, v in node.params.items()}
    op = node.op
    if op == "linear":
        return F.linear(xs[0], p["weight"], p.get("bias"))
    if op in ("conv2d", "avgpool2d", "maxpool2d"):
        x = xs[0]
        pre = p.get("pre_pad")
        if pre is not None:
            x = F.pad(x, tuple(int(v) for v in pre), value=-math.inf if op == "maxpool2d" else 0.0)
        if op == "conv2d":
            return F.conv2d(x, p["weight"], p.get("bias"), tuple(p["stride"]), tuple(p["padding"]),
                            tuple(p["dilation"]), int(p["groups"]))
        if op == "avgpool2d":
            return F.avg_pool2d(x, tuple(p["kernel"]), tuple(p["stride"]), tuple(p["padding"]),
                                bool(p.get("ceil_mode", False)), bool(p.get("count_include_pad", True)))
        return F.max_pool2d(x, tuple(p["kernel"]), tuple(p["stride"]), tuple(p["padding"]),
                            tuple(p["dilation"]), bool(p.get("ceil_mode", False)))
    if op == "affine":
        x = xs[0]
        if p.get("scale") is not None:
            x = x * p["scale"]
        if p.get("shift") is not None:
            x = x + p["shift"]
        return x
    if op == "add":
        return xs[0] + xs[1]
    if op == "sub":
        return xs[0] - xs[1]
    if op == "reshape":
        return xs[0].reshape(xs[0].shape[0], *p["shape"])
    if op == "transpose":
        return xs[0].permute(0, *[int(a) + 1 for a in p["perm"]])
    if op == "concat":
        return torch.cat(xs, dim=int(p["axis"]) + 1)
    if op == "identity":
        return xs[0]
    if op == "relu":
        return torch.relu(xs[0])
    if op == "leaky_relu":
        return F.leaky_relu(xs[0], float(p["alpha"]))
    raise OracleError(f"the oracle has no encoding for op {op!r} (node {node.name})")


def graph_forward(graph, x):
    """A float64 forward pass of ``graph`` through :func:`torch_forward` (``x``: ``[B, *input_shape]``)."""
    import torch

    env = {graph.input: torch.as_tensor(x, dtype=torch.float64).reshape(-1, *graph.input_shape)}
    for node in graph.nodes:
        env[node.output] = torch_forward(node, *[env[i] for i in node.inputs])
    return env[graph.output]


def _affine_map(node, in_shapes, rng):
    """``(L, b)`` with ``torch_forward(node, x) = L x + b`` on flat float64 inputs (concatenated)."""
    import torch

    sizes = [int(np.prod(s)) for s in in_shapes]
    n = sum(sizes)

    def f(flat):
        parts = torch.split(flat, sizes, dim=1)
        xs = [t.reshape(flat.shape[0], *s) for t, s in zip(parts, in_shapes)]
        return torch_forward(node, *xs).reshape(flat.shape[0], -1)

    with torch.no_grad():
        b = f(torch.zeros(1, n, dtype=torch.float64))[0]
        blocks = []
        for start in range(0, n, 256):
            k = min(256, n - start)
            E = torch.zeros(k, n, dtype=torch.float64)
            E[torch.arange(k), start + torch.arange(k)] = _BASIS_SCALE
            cols = ((f(E) - b) / _BASIS_SCALE).numpy()  # [k, m]: columns start.. of L
            blocks.append(sparse.csr_array(cols.T))
        L = sparse.hstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
        b = b.numpy().copy()
        # the map must reproduce the forward (an op that is not affine, or a wrong map, fails here)
        X = rng.uniform(-2.0, 2.0, size=(4, n))
        Y = f(torch.as_tensor(X)).numpy()
        pred = (L @ X.T).T + b
        scale = (abs(L) @ np.abs(X).T).T + np.abs(b) + 1.0
        if not np.all(np.abs(Y - pred) <= 1e-9 * scale):
            raise OracleError(f"node {node.name} ({node.op}) is not the affine map read off its forward")
    L.eliminate_zeros()
    return L, b


def _maxpool_windows(node, in_shape, rng):
    """Per output entry (C order), the flat input indices of its window that are not padding."""
    import torch

    p = node.params
    C, H, W = in_shape
    left, right, top, bottom = (int(v) for v in (p.get("pre_pad") or (0, 0, 0, 0)))
    (k_h, k_w), (s_h, s_w) = tuple(p["kernel"]), tuple(p["stride"])
    (p_h, p_w), (d_h, d_w) = tuple(p["padding"]), tuple(p["dilation"])
    with torch.no_grad():
        out_shape = torch_forward(node, torch.zeros(1, C, H, W, dtype=torch.float64)).shape[1:]
    _, Ho, Wo = out_shape
    windows = []
    for c in range(C):
        for oh in range(Ho):
            for ow in range(Wo):
                cand = []
                for i in range(k_h):
                    h = oh * s_h - p_h + i * d_h - top  # row in the unpadded input
                    if not 0 <= h < H:
                        continue
                    for j in range(k_w):
                        w = ow * s_w - p_w + j * d_w - left
                        if 0 <= w < W:
                            cand.append((c * H + h) * W + w)
                if not cand:
                    raise OracleError(f"node {node.name}: a max-pool window of padding only")
                windows.append(np.array(cand))
    X = rng.standard_normal((4, C * H * W))
    with torch.no_grad():
        Y = torch_forward(node, torch.as_tensor(X).reshape(4, C, H, W)).reshape(4, -1).numpy()
    mine = np.stack([X[:, w].max(1) for w in windows], 1)
    if not np.array_equal(Y, mine):
        raise OracleError(f"node {node.name}: the max-pool windows do not reproduce F.max_pool2d")
    return windows


@dataclass
class GraphProgram:
    """The oracle's program. ``lo``/``hi``: widened interval bounds of every variable (the MILP's only
    use of bounds); ``eqs``: blocks ``v[out] - L v[ins] = b``; ``relus``: ``(z, y, a)`` with
    ``y = max(z, a z)`` elementwise; ``maxes``: ``(y, candidate index arrays)``; ``out``: the output's
    variables; ``input_set``: ``("box", lo, hi)`` or ``("ball", p, c, eps, clip_lo, clip_hi)``."""

    lo: list = field(default_factory=list)
    hi: list = field(default_factory=list)
    eqs: list = field(default_factory=list)
    relus: list = field(default_factory=list)
    maxes: list = field(default_factory=list)
    out: np.ndarray | None = None
    n_inputs: int = 0
    input_set: tuple = ()

    @property
    def n_vars(self) -> int:
        return len(self.lo)

    def new(self, lo, hi) -> np.ndarray:
        idx = np.arange(self.n_vars, self.n_vars + len(lo))
        self.lo.extend(float(v) for v in lo)
        self.hi.extend(float(v) for v in hi)
        return idx


def _input_set_of(input_set):
    """``("box", lo, hi)`` / ``("ball", p, c, eps, clip_lo, clip_hi)`` (flat float64) of a certify input
    set (single instance) or of such a tuple."""
    if isinstance(input_set, tuple):
        return input_set
    import torch

    def flat(t):
        return None if t is None else torch.as_tensor(t, dtype=torch.float64).reshape(-1).numpy().copy()

    if hasattr(input_set, "eps"):
        clip = input_set.clip
        p = float(input_set.p)
        if p not in (1.0, math.inf):
            raise OracleError(f"the oracle handles boxes and L-inf/L1 balls, not p={p}")
        return ("ball", p, flat(input_set.center), float(input_set.eps.reshape(-1)[0]),
                None if clip is None else flat(clip.lower), None if clip is None else flat(clip.upper))
    return ("box", flat(input_set.lower), flat(input_set.upper))


def input_bounds(input_set):
    """The box of the input set (flat float64)."""
    s = _input_set_of(input_set)
    if s[0] == "box":
        return s[1], s[2]
    _, p, c, eps, clo, chi = s
    lo, hi = c - eps, c + eps
    if clo is not None:
        lo, hi = np.maximum(lo, clo), np.minimum(hi, chi)
    return lo, hi


def lower_graph(graph, input_set, seed: int = 0) -> GraphProgram:
    """The oracle's program of ``graph`` (a certify Graph, evaluated in float64) over ``input_set``."""
    import torch
    import torch.nn.functional as F

    graph = graph.to(dtype=torch.float64)
    rng = np.random.default_rng(seed)
    prog = GraphProgram(input_set=_input_set_of(input_set))
    lo, hi = input_bounds(prog.input_set)
    if lo.size != graph.n_inputs:
        raise OracleError(f"input set of {lo.size} entries for a graph of {graph.n_inputs} inputs")
    if np.any(lo > hi):
        raise OracleError("empty input set")
    x = prog.new(lo, hi)
    prog.n_inputs = x.size
    env = {graph.input: x}
    shapes = {graph.input: tuple(graph.input_shape)}
    for node in graph.nodes:
        if node.op not in GRAPH_OPS:
            raise OracleError(f"the oracle has no encoding for op {node.op!r} (node {node.name})")
        ins = np.concatenate([env[i] for i in node.inputs])
        in_shapes = [shapes[i] for i in node.inputs]
        l_in, u_in = np.array(prog.lo)[ins], np.array(prog.hi)[ins]
        if node.op in ("relu", "leaky_relu"):
            with torch.no_grad():
                vals = torch_forward(node, torch.tensor([[-1.0, 1.0]], dtype=torch.float64))[0]
            a, one = -float(vals[0]), float(vals[1])
            if one != 1.0 or not 0.0 <= a < 1.0:
                raise OracleError(f"node {node.name}: slopes ({a}, {one}) are not a ReLU/LeakyReLU with slope in [0, 1)")
            f_lo, f_hi = np.maximum(l_in, a * l_in), np.maximum(u_in, a * u_in)
            y = prog.new(*_widen(f_lo, f_hi))
            prog.relus.append((ins, y, a))
            out = y
        elif node.op == "maxpool2d":
            windows = _maxpool_windows(node, in_shapes[0], rng)
            cands = [ins[w] for w in windows]
            m_lo = np.array([l_in[w].max() for w in windows])
            m_hi = np.array([u_in[w].max() for w in windows])
            y = prog.new(*_widen(m_lo, m_hi))
            prog.maxes.append((y, cands))
            out = y
        else:
            L, b = _affine_map(node, in_shapes, rng)
            Lc = L.tocsr()
            nnz = np.diff(Lc.indptr)
            if np.all(nnz == 1) and np.all(Lc.data == 1.0) and np.all(b == 0.0):
                out = ins[Lc.indices]  # a copy: reshape, transpose, concat, identity
            else:
                mid, rad = (l_in + u_in) / 2, (u_in - l_in) / 2
                c = Lc @ mid + b
                r = abs(Lc) @ rad
                out = prog.new(*_widen(c - r, c + r))
                prog.eqs.append((out, Lc, ins, b))
        with torch.no_grad():
            probe = [torch.zeros(1, *s, dtype=torch.float64) for s in in_shapes]
            shape = tuple(torch_forward(node, *probe).shape[1:])
        if int(np.prod(shape)) != out.size:
            raise OracleError(f"node {node.name}: {out.size} variables for shape {shape}")
        env[node.output], shapes[node.output] = out, shape
    prog.out = env[graph.output]
    if prog.out.size != graph.n_outputs:
        raise OracleError("output size mismatch")
    return prog


def _milp_rows(prog: GraphProgram):
    """Variables (with the binaries appended), bounds, integrality and rows of the MILP."""
    lo, hi = np.array(prog.lo), np.array(prog.hi)
    n = lo.size
    extra_lo, extra_hi, integ = [], [], []
    R, Cc, V, blo, bhi = [], [], [], [], []
    n_con = 0

    def new_var(l, u, integral):
        nonlocal n
        extra_lo.append(l)
        extra_hi.append(u)
        integ.append(integral)
        n += 1
        return n - 1

    def row(cols, vals, l, u):
        nonlocal n_con
        R.extend([n_con] * len(cols))
        Cc.extend(int(c) for c in cols)
        V.extend(float(v) for v in vals)
        blo.append(l)
        bhi.append(u)
        n_con += 1

    for out, L, ins, b in prog.eqs:
        for r in range(out.size):
            s, e = L.indptr[r], L.indptr[r + 1]
            row([out[r], *ins[L.indices[s:e]]], [1.0, *(-L.data[s:e])], b[r], b[r])
    for z, y, a in prog.relus:
        for zi, yi in zip(z, y):
            l, u = lo[zi], hi[zi]
            if l >= 0:
                row([yi, zi], [1.0, -1.0], 0.0, 0.0)
            elif u <= 0:
                row([yi, zi], [1.0, -a], 0.0, 0.0)
            else:
                s = new_var(0.0, 1.0, 1)
                row([yi, zi], [1.0, -1.0], 0.0, np.inf)
                row([yi, zi], [1.0, -a], 0.0, np.inf)
                row([yi, zi, s], [1.0, -1.0, -(1 - a) * l], -np.inf, -(1 - a) * l)
                row([yi, zi, s], [1.0, -a, -(1 - a) * u], -np.inf, 0.0)
    for y, cands in prog.maxes:
        for yi, z in zip(y, cands):
            best = lo[z].max()
            z = z[hi[z] >= best]
            if z.size == 1:
                row([yi, z[0]], [1.0, -1.0], 0.0, 0.0)
                continue
            U = hi[z].max()
            s = [new_var(0.0, 1.0, 1) for _ in z]
            row(s, [1.0] * len(s), 1.0, 1.0)
            for zi, si in zip(z, s):
                row([yi, zi], [1.0, -1.0], 0.0, np.inf)
                M = U - lo[zi]
                row([yi, zi, si], [1.0, -1.0, M], -np.inf, M)
    kind = prog.input_set[0]
    if kind == "ball" and prog.input_set[1] == 1.0:
        _, _, c, eps, _, _ = prog.input_set
        t = [new_var(0.0, eps, 0) for _ in range(prog.n_inputs)]
        for i, ti in enumerate(t):
            row([ti, i], [1.0, -1.0], -c[i], np.inf)
            row([ti, i], [1.0, 1.0], c[i], np.inf)
        row(t, [1.0] * len(t), -np.inf, eps)
    vlo = np.concatenate([lo, np.array(extra_lo, dtype=float)])
    vhi = np.concatenate([hi, np.array(extra_hi, dtype=float)])
    integrality = np.concatenate([np.zeros(lo.size, dtype=int), np.array(integ, dtype=int)])
    return vlo, vhi, integrality, (R, Cc, V, blo, bhi, n_con)


def graph_min(prog: GraphProgram, C, d, time_limit: float | None = 120.0):
    """``min_x max_j (C_j f(x) - d_j)`` over the program's input set: ``(value, x_argmin)``.

    ``C``: ``[rows, n_outputs]``, ``d``: ``[rows]``. Raises ``RuntimeError`` unless HiGHS proves
    optimality (zero gaps, 1e-9 tolerances)."""
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    vlo, vhi, integ, (R, Cc, V, blo, bhi, n_con) = _milp_rows(prog)
    R, Cc, V, blo, bhi = list(R), list(Cc), list(V), list(blo), list(bhi)
    t = vlo.size  # the objective variable: t >= C_j y - d_j
    for j in range(C.shape[0]):
        nz = np.nonzero(C[j])[0]
        R.extend([n_con] * (nz.size + 1))
        Cc.extend([t, *prog.out[nz]])
        V.extend([1.0, *(-C[j, nz])])
        blo.append(-d[j])
        bhi.append(np.inf)
        n_con += 1
    vlo, vhi = np.append(vlo, -np.inf), np.append(vhi, np.inf)
    integ = np.append(integ, 0)
    obj = np.zeros(vlo.size)
    obj[t] = 1.0
    A = sparse.csr_array((np.array(V), (np.array(R), np.array(Cc))), shape=(n_con, vlo.size))
    options = dict(HIGHS_OPTIONS)
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        res = milp(obj, integrality=integ, bounds=Bounds(vlo, vhi),
                   constraints=[LinearConstraint(A, np.array(blo), np.array(bhi))], options=options)
    if res.status != 0 or res.x is None:
        raise RuntimeError(f"HiGHS did not solve the oracle MILP to optimality: {res.message}")
    lo, hi = input_bounds(prog.input_set)
    return float(res.fun), np.clip(res.x[: prog.n_inputs], lo, hi)
