"""Affine ops: dense layers, convolutions, and elementwise scale-and-shift (folded BatchNorm,
Mul/Div/Add/Sub by constants)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rules import OpRule, Params, affine_map_ibp, affine_runtime_error


# dense: y = x W^T + b over the last dimension
def _linear(p: Params, x: Tensor) -> Tensor:
    return F.linear(x, p["weight"], p.get("bias"))


def _weight_abs(p: Params) -> Tensor:
    """``|W|``: cached by the importer as ``weight_abs``; computed when absent (training graphs, whose
    weights change every step)."""
    w = p.get("weight_abs")
    return w if w is not None else p["weight"].abs()


def _linear_abs(p: Params, x: Tensor) -> Tensor:
    return F.linear(x, _weight_abs(p))


def interval_pair(p: Params) -> tuple[Tensor, Tensor]:
    """``[W^T / 2; |W|^T]`` (``[2, n_in, n_out]``) and ``[b; 0]`` (``[2, 1, n_out]``), so that one batched
    product maps stacked ``[u + l; u - l]`` to ``[W (u + l)/2 + b; |W| (u - l)]`` (halving is exact). Cached by the importer as ``pair_weight`` and
    ``pair_bias``; computed when absent (training graphs, whose weights change every step)."""
    if "pair_weight" in p:
        return p["pair_weight"], p["pair_bias"]
    W = p["weight"]
    b = p.get("bias")
    b = torch.zeros_like(W[:, 0]) if b is None else b
    return torch.stack([W.t() * 0.5, _weight_abs(p).t()]), torch.stack([b, torch.zeros_like(b)]).unsqueeze(1)


def _linear_pair(p: Params, cw: Tensor) -> Tensor:
    if "pair_weight" not in p:  # training graphs: stacking fresh weights every step costs more than it saves
        b = p.get("bias")
        centre = torch.addcmul(b, F.linear(cw[0], p["weight"]), cw.new_tensor(0.5)) if b is not None \
            else 0.5 * F.linear(cw[0], p["weight"])
        return torch.stack([centre, _linear_abs(p, cw[1])])
    weights, bias = interval_pair(p)
    if cw.dim() == 3:  # [2, B, n]: the common case, no reshapes
        return torch.baddbmm(bias, cw, weights)
    out = torch.baddbmm(bias, cw.reshape(2, -1, cw.shape[-1]), weights)
    return out.reshape(*cw.shape[:-1], out.shape[-1])


def _abs_or_none(key: str, trailing: int = 0):
    """``|params[key]|`` shaped to broadcast over the output (``trailing`` spatial dimensions), or None."""

    def get(p: Params):
        t = p.get(key)
        return t.abs().reshape(t.shape + (1,) * trailing) if t is not None else None

    return get


def _linear_example(g: torch.Generator):
    n_in, n_out = int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
    params = {"weight": torch.randn(n_out, n_in, generator=g, dtype=torch.float64),
              "bias": torch.randn(n_out, generator=g, dtype=torch.float64)}
    return params, [(n_in,)]


# 2-D convolution (NCHW); ``pre_pad`` holds asymmetric ONNX pads as (left, right, top, bottom)
def _pad(p: Params, x: Tensor, value: float = 0.0) -> Tensor:
    pre = p.get("pre_pad")
    return F.pad(x, pre, value=value) if pre is not None else x


def _conv(p: Params, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.conv2d(_pad(p, x), weight, bias, p["stride"], p["padding"], p["dilation"], p["groups"])


def _conv2d(p: Params, x: Tensor) -> Tensor:
    return _conv(p, x, p["weight"], p.get("bias"))


def _conv2d_abs(p: Params, x: Tensor) -> Tensor:
    return _conv(p, x, _weight_abs(p), None)


def _conv_example(g: torch.Generator):
    def r(a, b):
        return int(torch.randint(a, b + 1, (1,), generator=g))

    groups = r(1, 2)
    c_in, c_out = groups * r(1, 2), groups * r(1, 2)
    k = r(1, 3)
    params = {
        "weight": torch.randn(c_out, c_in // groups, k, k, generator=g, dtype=torch.float64),
        "bias": torch.randn(c_out, generator=g, dtype=torch.float64),
        "stride": (r(1, 2), r(1, 2)), "padding": (r(0, 1), r(0, 1)), "dilation": (r(1, 2), 1),
        "groups": groups, "pre_pad": (r(0, 1), 0, 0, r(0, 1)),
    }
    return params, [(c_in, r(5, 7), r(5, 7))]


# elementwise y = x * scale + shift (either may be absent), constants broadcast over [1, *shape]
def _affine(p: Params, x: Tensor) -> Tensor:
    scale, shift = p.get("scale"), p.get("shift")
    if scale is not None:
        x = x * scale
    if shift is not None:
        x = x + shift
    return x


def _affine_abs(p: Params, x: Tensor) -> Tensor:
    scale = p.get("scale")
    return x * scale.abs() if scale is not None else x


def _affine_example(g: torch.Generator):
    params = {"scale": torch.randn(1, 3, 1, 1, generator=g, dtype=torch.float64),
              "shift": torch.randn(1, 3, 1, 1, generator=g, dtype=torch.float64)}
    return params, [(3, 2, 2)]


# transposes: coefficients A [N, *out] on the output -> coefficients on the input (A L)
def _linear_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    return (A @ p["weight"],)


def _conv2d_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    c, h, w = in_shapes[0]
    pre = p.get("pre_pad") or (0, 0, 0, 0)
    left, right, top, bottom = pre
    H, W = h + top + bottom, w + left + right  # the padded input the convolution saw
    weight = p["weight"]
    k_h, k_w = weight.shape[2:]
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = p["stride"], p["padding"], p["dilation"]
    out_h, out_w = A.shape[-2:]
    op_h = H - ((out_h - 1) * s_h - 2 * p_h + d_h * (k_h - 1) + 1)
    op_w = W - ((out_w - 1) * s_w - 2 * p_w + d_w * (k_w - 1) + 1)
    g = F.conv_transpose2d(A, weight, None, p["stride"], p["padding"], (op_h, op_w), p["groups"], p["dilation"])
    return (g[..., top:top + h, left:left + w],)


def _affine_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    scale = p.get("scale")
    return (A * scale if scale is not None else A,)


RULES = {
    "linear": OpRule("linear", _linear, affine_map_ibp(_linear, _linear_abs, _abs_or_none("bias"),
                                                        lambda p: p["weight"].shape[1], _linear_pair),
                     _linear_example, linear=True, transpose=_linear_t, abs_forward=_linear_abs,
                     runtime_error=affine_runtime_error(_linear_abs, _abs_or_none("bias"), lambda p: p["weight"].shape[1])),
    "conv2d": OpRule("conv2d", _conv2d, affine_map_ibp(_conv2d, _conv2d_abs, _abs_or_none("bias", trailing=2),
                                                        lambda p: p["weight"][0].numel()),
                     _conv_example, linear=True, transpose=_conv2d_t, abs_forward=_conv2d_abs,
                     runtime_error=affine_runtime_error(_conv2d_abs, _abs_or_none("bias", trailing=2),
                                                        lambda p: p["weight"][0].numel())),
    "affine": OpRule("affine", _affine, affine_map_ibp(_affine, _affine_abs, _abs_or_none("shift"), lambda p: 1),
                     _affine_example, linear=True, transpose=_affine_t, abs_forward=_affine_abs,
                     runtime_error=affine_runtime_error(_affine_abs, _abs_or_none("shift"), lambda p: 1)),
}
