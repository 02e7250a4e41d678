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

__all__ = ["exact_min", "exact_max", "exact_min_ball_linf", "exact_max_ball_linf", "HIGHS_OPTIONS"]

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
