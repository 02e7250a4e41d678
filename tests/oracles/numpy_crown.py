"""Reference CROWN in plain float64 NumPy (test oracle; no torch).

Implements the linear-bound back-substitution of

    Zhang, Weng, Chen, Hsieh, Daniel (2018), "Efficient Neural Network Robustness
    Certification with General Activation Functions" (CROWN), NeurIPS 2018,

for ReLU networks made of dense and convolutional layers.  It is written to be read
next to the paper and to be compared, to ~1e-6, with the project's engine, so the
variant is pinned down exactly:

* **Network.**  A list of layers, each one of

  - ``("dense", W, b)``              ``y = W x + b``, ``W`` of shape ``(out, in)``, ``x`` flattened;
  - ``("conv", W, b, stride, padding)`` 2-D cross-correlation (PyTorch ``Conv2d``
    convention), ``W`` of shape ``(C_out, C_in, kh, kw)``, symmetric zero padding,
    on inputs shaped ``(C, H, W)``; it is lowered to an explicit dense matrix;
  - ``("relu",)``;
  - ``("flatten",)``                 a no-op on the flat representation.

  All tensors are flattened in C order (``(C, H, W)`` -> ``c*H*W + h*W + w``), for
  the input and for every convolution output.

* **Input set.**  A box ``Box(lo, hi)`` / ``(lo, hi)``, or an Lp ball
  ``LpBall(center, eps, p)`` / ``(center, eps, p)`` with ``p`` in ``{1, 2, inf}``
  (any ``p >= 1`` works), never clipped.

* **Intermediate bounds.**  Walking the layers in order, the pre-activation bounds
  ``[l, u]`` of every ReLU input are

      [l, u] = [max(l_CROWN, l_IBP), min(u_CROWN, u_IBP)]

  where ``l_CROWN, u_CROWN`` come from CROWN itself (back-substitution from that
  layer with the identity as the specification, using the already computed bounds
  of the earlier ReLUs) and ``l_IBP, u_IBP`` come from interval arithmetic started
  at the (already intersected) bounds of the previous ReLU output
  ``[relu(l), relu(u)]`` (or at the input box for the first one) and pushed through
  each affine layer in between, one layer at a time.

* **ReLU relaxation** (paper Sec. 3.2 / Table 1, "adaptive" lower bound).  For a
  neuron with pre-activation bounds ``l, u``:

  - ``l >= 0`` (active):      ``z <= relu(z) <= z``;
  - ``u <= 0`` (inactive):    ``0 <= relu(z) <= 0``;
  - ``l < 0 < u`` (unstable): ``alpha z <= relu(z) <= u/(u-l) (z - l)``,
    ``alpha = 1 if u >= -l else 0``.

* **Concretisation** of ``a.x + c`` over the input set: box
  ``min = a.mid - |a|.rad``; Lp ball ``min = a.x0 - eps ||a||_q`` with
  ``1/p + 1/q = 1`` (Hölder).  Maxima symmetric.

* The **final output** (``C @ f(x)``) is pure CROWN: it is *not* intersected with
  IBP (only pre-activation bounds are).

Public functions: :func:`crown_bounds`, :func:`intermediate_bounds`,
:func:`ibp_bounds`, :func:`forward`, :func:`lower_network`, :func:`conv_to_dense`,
:func:`relu_relaxation`, :func:`ibp_node_bounds`; input-set classes :class:`Box`,
:class:`LpBall` and :func:`as_input_set`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "Box",
    "LpBall",
    "as_input_set",
    "lower_network",
    "conv_to_dense",
    "forward",
    "relu_relaxation",
    "ibp_node_bounds",
    "ibp_bounds",
    "intermediate_bounds",
    "crown_bounds",
]


# ---------------------------------------------------------------------------
# Input sets
# ---------------------------------------------------------------------------


@dataclass
class Box:
    """The box ``{x : lo <= x <= hi}`` (flat float64 arrays)."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self):
        self.lo = np.asarray(self.lo, dtype=np.float64).ravel()
        self.hi = np.asarray(self.hi, dtype=np.float64).ravel()
        if self.lo.shape != self.hi.shape:
            raise ValueError("Box: lo and hi differ in size")
        if np.any(self.lo > self.hi):
            raise ValueError("Box: lo > hi somewhere")

    @property
    def size(self) -> int:
        return self.lo.size

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """Elementwise bounds ``(lo, hi)`` of the set (the set itself)."""
        return self.lo.copy(), self.hi.copy()

    def concretize(self, A: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rowwise ``min`` and ``max`` of ``A x + c`` over the box.

        With ``mid = (lo+hi)/2`` and ``rad = (hi-lo)/2``::

            min_x a.x + c = a.mid - |a|.rad + c,    max_x a.x + c = a.mid + |a|.rad + c.
        """
        mid = (self.lo + self.hi) / 2.0
        rad = (self.hi - self.lo) / 2.0
        centre = A @ mid + c
        spread = np.abs(A) @ rad
        return centre - spread, centre + spread


@dataclass
class LpBall:
    """The ball ``{x : ||x - center||_p <= eps}`` (no clipping), ``p >= 1`` or ``inf``."""

    center: np.ndarray
    eps: float
    p: float

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64).ravel()
        self.eps = float(self.eps)
        p = self.p
        if isinstance(p, str):
            p = np.inf if p.lower() in ("inf", "linf", "l_inf") else float(p)
        self.p = float(p)
        if self.p < 1:
            raise ValueError("LpBall: need p >= 1")
        if self.eps < 0:
            raise ValueError("LpBall: need eps >= 0")

    @property
    def size(self) -> int:
        return self.center.size

    @property
    def q(self) -> float:
        """Dual exponent, ``1/p + 1/q = 1`` (``p=1 -> q=inf``, ``p=inf -> q=1``)."""
        if self.p == 1:
            return np.inf
        if np.isinf(self.p):
            return 1.0
        return self.p / (self.p - 1.0)

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """Elementwise bounds of the ball: ``center -+ eps`` (``|d_i| <= ||d||_p <= eps``)."""
        return self.center - self.eps, self.center + self.eps

    def concretize(self, A: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rowwise ``min``/``max`` of ``A x + c`` over the ball (Hölder, tight)::

            min_{||d||_p <= eps} a.(x0 + d) + c = a.x0 + c - eps ||a||_q.
        """
        centre = A @ self.center + c
        spread = self.eps * np.linalg.norm(A, ord=self.q, axis=1) if A.shape[1] else np.zeros(A.shape[0])
        return centre - spread, centre + spread


def as_input_set(input_set) -> Box | LpBall:
    """Accept ``Box``/``LpBall`` objects, ``(lo, hi)`` or ``(center, eps, p)`` tuples."""
    if isinstance(input_set, (Box, LpBall)):
        return input_set
    if isinstance(input_set, (tuple, list)):
        if len(input_set) == 2:
            return Box(*input_set)
        if len(input_set) == 3:
            return LpBall(*input_set)
    raise TypeError(f"cannot interpret {type(input_set).__name__} as an input set")


# ---------------------------------------------------------------------------
# Network lowering: every layer becomes ("affine", W, b) or ("relu",)
# ---------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def conv_to_dense(W, b, in_shape: Sequence[int], stride=1, padding=0) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Explicit matrix ``M`` and bias ``m`` of a 2-D convolution on a ``(C, H, W)`` input.

    Cross-correlation as in PyTorch ``Conv2d``::

        y[o, i, j] = b[o] + sum_{c, a, e} W[o, c, a, e] * xpad[c, i*s_h + a, j*s_w + e]

    with ``xpad`` the input zero-padded by ``p`` on each side.  Zero padding simply
    drops the corresponding columns.  Returns ``(M, m, (C_out, H_out, W_out))`` with
    ``y.ravel() = M @ x.ravel() + m`` (C order on both sides) and
    ``H_out = (H + 2 p_h - kh) // s_h + 1`` (same for width).
    """
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64).ravel()
    C_out, C_in, kh, kw = W.shape
    C, H, Wd = (int(s) for s in in_shape)
    if C != C_in:
        raise ValueError(f"conv expects {C_in} input channels, got shape {tuple(in_shape)}")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    H_out = (H + 2 * ph - kh) // sh + 1
    W_out = (Wd + 2 * pw - kw) // sw + 1
    if H_out <= 0 or W_out <= 0:
        raise ValueError("conv output would be empty")
    o, i, j, c, a, e = np.meshgrid(
        np.arange(C_out), np.arange(H_out), np.arange(W_out),
        np.arange(C_in), np.arange(kh), np.arange(kw), indexing="ij",
    )
    r = i * sh - ph + a  # input row read by kernel tap (a, e) at output (i, j)
    s = j * sw - pw + e  # input column
    valid = (r >= 0) & (r < H) & (s >= 0) & (s < Wd)
    rows = ((o * H_out + i) * W_out + j)[valid]
    cols = ((c * H + r) * Wd + s)[valid]
    M = np.zeros((C_out * H_out * W_out, C_in * H * Wd))
    np.add.at(M, (rows, cols), W[o, c, a, e][valid])
    m = np.repeat(b, H_out * W_out)
    return M, m, (C_out, H_out, W_out)


def lower_network(layers, input_shape) -> tuple[list[tuple], list[tuple[int, ...]]]:
    """Lower ``layers`` to ``ops``: a list of ``("affine", W, b)`` and ``("relu",)``.

    Node ``k`` is the input of ``ops[k]`` (node 0 is the network input, node
    ``len(ops)`` its output).  Returns ``(ops, shapes)`` with ``shapes[k]`` the
    (unflattened) shape of node ``k``.  ``flatten`` layers disappear.
    """
    shape = tuple(int(s) for s in (input_shape if isinstance(input_shape, (tuple, list)) else (input_shape,)))
    ops: list[tuple] = []
    shapes = [shape]
    for layer in layers:
        kind = layer[0]
        if kind == "dense":
            W = np.asarray(layer[1], dtype=np.float64)
            b = np.asarray(layer[2], dtype=np.float64).ravel()
            n_in = int(np.prod(shape))
            if W.ndim != 2 or W.shape[1] != n_in or b.shape != (W.shape[0],):
                raise ValueError(f"dense layer {W.shape}/{b.shape} does not fit input shape {shape}")
            ops.append(("affine", W, b))
            shape = (W.shape[0],)
            shapes.append(shape)
        elif kind == "conv":
            if len(shape) != 3:
                raise ValueError(f"conv needs a (C, H, W) input, got shape {shape}")
            stride = layer[3] if len(layer) > 3 else 1
            padding = layer[4] if len(layer) > 4 else 0
            M, m, shape = conv_to_dense(layer[1], layer[2], shape, stride, padding)
            ops.append(("affine", M, m))
            shapes.append(shape)
        elif kind == "relu":
            ops.append(("relu",))
            shapes.append(shape)
        elif kind == "flatten":
            shape = (int(np.prod(shape)),)
            shapes[-1] = shape  # same node, same flat data; only the nominal shape changes
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return ops, shapes


def forward(layers, input_shape, x, return_pre_relu: bool = False):
    """Plain forward pass on a batch ``x`` of shape ``(N, n_in)`` (or one flat ``x``).

    Returns ``(N, n_out)`` (or ``(n_out,)``); with ``return_pre_relu=True`` also the
    list of ReLU inputs, each ``(N, n_k)``.
    """
    ops, _ = lower_network(layers, input_shape)
    x = np.asarray(x, dtype=np.float64)
    single = x.ndim == 1
    h = x.reshape(1, -1) if single else x.reshape(x.shape[0], -1)
    pre = []
    for op in ops:
        if op[0] == "affine":
            h = h @ op[1].T + op[2]
        else:
            pre.append(h)
            h = np.maximum(h, 0.0)
    if single:
        h = h[0]
        pre = [p[0] for p in pre]
    return (h, pre) if return_pre_relu else h


# ---------------------------------------------------------------------------
# Interval bound propagation
# ---------------------------------------------------------------------------


def _ibp_affine(W, b, l, u):
    """Interval image of ``W z + b`` for ``l <= z <= u``: ``W mid + b -+ |W| rad``."""
    mid = (l + u) / 2.0
    rad = (u - l) / 2.0
    centre = W @ mid + b
    spread = np.abs(W) @ rad
    return centre - spread, centre + spread


def ibp_node_bounds(ops, lo, hi) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pure IBP bounds of every node of lowered ``ops`` from the input box ``[lo, hi]``."""
    l = np.asarray(lo, dtype=np.float64).ravel()
    u = np.asarray(hi, dtype=np.float64).ravel()
    out = [(l, u)]
    for op in ops:
        if op[0] == "affine":
            l, u = _ibp_affine(op[1], op[2], l, u)
        else:
            l, u = np.maximum(l, 0.0), np.maximum(u, 0.0)
        out.append((l, u))
    return out


def ibp_bounds(layers, input_shape, input_set, C=None, per_layer: bool = False):
    """Pure interval bounds (no CROWN tightening anywhere).

    The input set is first replaced by its elementwise interval (for an Lp ball:
    ``center -+ eps``).  Returns ``(lower, upper)`` of ``C @ f(x)`` (``C`` applied as
    one more interval-linear map, identity by default); with ``per_layer=True``
    returns instead the list of pre-activation bounds ``(l, u)`` of each ReLU.
    """
    ops, _ = lower_network(layers, input_shape)
    S = as_input_set(input_set)
    nodes = ibp_node_bounds(ops, *S.interval())
    if per_layer:
        return [nodes[k] for k, op in enumerate(ops) if op[0] == "relu"]
    l, u = nodes[-1]
    if C is None:
        return l.copy(), u.copy()
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    return _ibp_affine(C, np.zeros(C.shape[0]), l, u)


# ---------------------------------------------------------------------------
# CROWN
# ---------------------------------------------------------------------------


def relu_relaxation(l, u) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear relaxation ``alpha z <= relu(z) <= beta z + gamma`` on ``[l, u]``.

    Returns ``(alpha, beta, gamma)`` (paper Sec. 3.2, adaptive lower slope)::

        l >= 0          : alpha = 1, beta = 1,         gamma = 0
        u <= 0 (l < 0)  : alpha = 0, beta = 0,         gamma = 0
        l < 0 < u       : alpha = [u >= -l], beta = u/(u-l), gamma = -beta * l
    """
    l = np.asarray(l, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    active = l >= 0
    unstable = (~active) & (u > 0)
    alpha = np.where(active, 1.0, 0.0)
    alpha = np.where(unstable & (u >= -l), 1.0, alpha)
    denom = np.where(unstable, u - l, 1.0)
    beta = np.where(active, 1.0, np.where(unstable, u / denom, 0.0))
    gamma = np.where(unstable, -beta * l, 0.0)
    return alpha, beta, gamma


def _backsubstitute(ops, node: int, spec: np.ndarray, pre_bounds: dict, input_set):
    """CROWN bounds of ``spec @ h_node`` (``h_node`` = value of node ``node``).

    Starting from ``Lambda_U = Lambda_L = spec`` and constants ``0``, walk back
    through ``ops[node-1], ..., ops[0]`` (paper Theorem 3.2):

    * affine ``h' = W h + b``:  ``c += Lambda b``;  ``Lambda <- Lambda W``;
    * ReLU ``h' = relu(z)`` with relaxation ``alpha z <= h' <= beta z + gamma``:

        upper:  ``c_U += Lambda_U^+ gamma``,
                ``Lambda_U <- Lambda_U^+ diag(beta) + Lambda_U^- diag(alpha)``;
        lower:  ``c_L += Lambda_L^- gamma``,
                ``Lambda_L <- Lambda_L^+ diag(alpha) + Lambda_L^- diag(beta)``;

      (``Lambda^+ = max(Lambda, 0)``, ``Lambda^- = min(Lambda, 0)``: a positive
      coefficient takes the upper line for the upper bound, the lower line for the
      lower bound; negative coefficients the opposite).

    Finally ``Lambda_L x + c_L`` is minimised and ``Lambda_U x + c_U`` maximised over
    the input set.  Every row is treated at once (no loop over neurons).
    """
    lam_l = np.array(spec, dtype=np.float64)
    lam_u = lam_l.copy()
    c_l = np.zeros(lam_l.shape[0])
    c_u = np.zeros(lam_l.shape[0])
    for k in range(node - 1, -1, -1):
        op = ops[k]
        if op[0] == "affine":
            W, b = op[1], op[2]
            c_l += lam_l @ b
            c_u += lam_u @ b
            lam_l = lam_l @ W
            lam_u = lam_u @ W
        else:
            alpha, beta, gamma = relu_relaxation(*pre_bounds[k])
            up_pos, up_neg = np.maximum(lam_u, 0.0), np.minimum(lam_u, 0.0)
            lo_pos, lo_neg = np.maximum(lam_l, 0.0), np.minimum(lam_l, 0.0)
            c_u += up_pos @ gamma
            c_l += lo_neg @ gamma
            lam_u = up_pos * beta + up_neg * alpha
            lam_l = lo_pos * alpha + lo_neg * beta
    lower, _ = input_set.concretize(lam_l, c_l)
    _, upper = input_set.concretize(lam_u, c_u)
    return lower, upper


def _pre_activation_bounds(ops, input_set, record: list | None = None) -> dict:
    """Intersected CROWN/IBP bounds of every ReLU input, keyed by the ReLU's op index.

    ``l_IBP, u_IBP`` are carried forward from the last tightened ReLU output (or the
    input set's interval); at each ReLU the CROWN bounds of its input node (identity
    specification) are intersected with them.  When ``record`` is a list, a dict with
    the CROWN part, the IBP part and the result is appended per ReLU.
    """
    pre: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    l, u = input_set.interval()
    for k, op in enumerate(ops):
        if op[0] == "affine":
            l, u = _ibp_affine(op[1], op[2], l, u)
            continue
        n = l.size
        cl, cu = _backsubstitute(ops, k, np.eye(n), pre, input_set)
        tl, tu = np.maximum(cl, l), np.minimum(cu, u)
        pre[k] = (tl, tu)
        if record is not None:
            record.append({
                "lower": tl, "upper": tu,
                "crown_lower": cl, "crown_upper": cu,
                "ibp_lower": l, "ibp_upper": u,
            })
        l, u = np.maximum(tl, 0.0), np.maximum(tu, 0.0)
    return pre


def intermediate_bounds(layers, input_shape, input_set, detail: bool = False):
    """Pre-activation bounds of each ReLU (in layer order), as used by :func:`crown_bounds`.

    Returns a list of ``(lower, upper)`` (flat float64 arrays).  With
    ``detail=True`` each entry is instead a dict with keys ``lower``, ``upper`` (the
    intersection), ``crown_lower``, ``crown_upper`` (CROWN part) and ``ibp_lower``,
    ``ibp_upper`` (IBP part, computed from the tightened previous ReLU).
    """
    ops, _ = lower_network(layers, input_shape)
    S = as_input_set(input_set)
    _check_size(ops, S)
    record: list = []
    _pre_activation_bounds(ops, S, record)
    if detail:
        return record
    return [(r["lower"], r["upper"]) for r in record]


def _check_size(ops, S):
    n_in = None
    for op in ops:
        if op[0] == "affine":
            n_in = op[1].shape[1]
            break
    if n_in is not None and n_in != S.size:
        raise ValueError(f"input set has {S.size} entries, network expects {n_in}")


def crown_bounds(layers, input_shape, input_set, C=None) -> tuple[np.ndarray, np.ndarray]:
    """CROWN bounds ``lower <= C @ f(x) <= upper`` for all ``x`` in ``input_set``.

    ``layers``: see the module docstring; ``input_shape``: e.g. ``(n,)`` or
    ``(C, H, W)``; ``input_set``: ``Box``/``LpBall`` or ``(lo, hi)`` /
    ``(center, eps, p)``; ``C``: ``(rows, n_out)`` specification (identity when
    ``None``; a 1-D vector is taken as one row).  Returns two float64 arrays of
    shape ``(rows,)``.
    """
    ops, shapes = lower_network(layers, input_shape)
    S = as_input_set(input_set)
    _check_size(ops, S)
    pre = _pre_activation_bounds(ops, S)
    n_out = int(np.prod(shapes[-1]))
    if C is None:
        C = np.eye(n_out)
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    if C.shape[1] != n_out:
        raise ValueError(f"C has {C.shape[1]} columns, network has {n_out} outputs")
    return _backsubstitute(ops, len(ops), C, pre, S)
