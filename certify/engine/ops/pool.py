"""2-D pooling (NCHW). ``pre_pad`` holds asymmetric ONNX pads as (left, right, top, bottom)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rules import OpRule, Params, affine_map_ibp, affine_runtime_error, flush_runtime_error, monotone_ibp
from .linear import _pad

def _maxpool(p: Params, x: Tensor) -> Tensor:
    return F.max_pool2d(_pad(p, x, -math.inf), p["kernel"], p["stride"], p["padding"], p["dilation"],
                        p.get("ceil_mode", False))

def _avgpool(p: Params, x: Tensor) -> Tensor:
    return F.avg_pool2d(_pad(p, x), p["kernel"], p["stride"], p["padding"], p.get("ceil_mode", False),
                        p.get("count_include_pad", True))

def _avgpool_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    """The transpose of average pooling, as the vector-Jacobian product of the (linear) forward."""
    x = torch.zeros(A.shape[0], *in_shapes[0], dtype=A.dtype, device=A.device)
    _, vjp = torch.func.vjp(lambda t: _avgpool(p, t), x)
    return vjp(A)

def _example(g: torch.Generator):
    def r(a, b):
        return int(torch.randint(a, b + 1, (1,), generator=g))

    k = r(1, 3)
    params = {"kernel": (k, k), "stride": (r(1, 2), r(1, 2)), "padding": (r(0, k // 2), 0),
              "dilation": (1, 1), "ceil_mode": False, "count_include_pad": bool(r(0, 1))}
    return params, [(2, r(4, 6), r(4, 6))]

def _windows(p: Params, x: Tensor, out_hw: tuple[int, int], fill: float) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Pooling windows of ``x`` ([B, C, H, W]) as ``[B, C, k*k, L]``, padded with ``fill`` (ONNX pads,
    symmetric padding and the extra rows/columns ``ceil_mode`` reads); also the pads used."""
    left, right, top, bottom = p.get("pre_pad") or (0, 0, 0, 0)
    p_h, p_w = p["padding"]
    left, right, top, bottom = left + p_w, right + p_w, top + p_h, bottom + p_h
    (k_h, k_w), (s_h, s_w), (d_h, d_w) = p["kernel"], p["stride"], p["dilation"]
    need_h = (out_hw[0] - 1) * s_h + d_h * (k_h - 1) + 1
    need_w = (out_hw[1] - 1) * s_w + d_w * (k_w - 1) + 1
    bottom += max(0, need_h - (x.shape[-2] + top + bottom))
    right += max(0, need_w - (x.shape[-1] + left + right))
    xp = F.pad(x, (left, right, top, bottom), value=fill)
    cols = F.unfold(xp, p["kernel"], dilation=p["dilation"], stride=p["stride"])
    B, C = x.shape[:2]
    cols = cols.reshape(B, C, k_h * k_w, -1)[..., : out_hw[0] * out_hw[1]]
    return cols, (left, right, top, bottom)

def _maxpool_backward(p: Params, A: Tensor, boxes, rnd):
    """Linear bounds through max-pooling. Lower: ``max >= x_j*`` with ``j*`` the window element with the
    largest lower bound. Upper: ``max = x_j*`` when ``l_j* >= u_k`` for every other ``k`` of the window,
    else the constant ``max_k u_k``. ``A`` is ``[B, R, C, Ho, Wo]``."""
    (box,) = boxes
    B, R, C, Ho, Wo = A.shape
    lw, pads = _windows(p, box.lower, (Ho, Wo), -math.inf)
    uw, _ = _windows(p, box.upper, (Ho, Wo), -math.inf)
    kk = lw.shape[2]
    j = lw.argmax(2, keepdim=True)  # [B, C, 1, L]
    l_j = lw.gather(2, j)
    others = uw.scatter(2, j, -math.inf).amax(2, keepdim=True)
    dominant = (l_j >= others).to(A.dtype)  # [B, C, 1, L]
    u_max = uw.amax(2, keepdim=True)
    Af = A.reshape(B, R, C, 1, Ho * Wo)
    pos, neg = Af.clamp(min=0), Af.clamp(max=0)
    onehot = torch.zeros(B, 1, C, kk, Ho * Wo, dtype=A.dtype, device=A.device).scatter(3, j.unsqueeze(1), 1.0)
    coef = onehot * (pos + neg * dominant.unsqueeze(1))  # [B, R, C, kk, L]
    bias = (neg * (1 - dominant.unsqueeze(1)) * u_max.unsqueeze(1)).sum((2, 3, 4))
    left, right, top, bottom = pads
    H, W = box.lower.shape[-2:]
    folded = F.fold(coef.reshape(B * R, C * kk, Ho * Wo), (H + top + bottom, W + left + right), p["kernel"],
                    dilation=p["dilation"], stride=p["stride"])
    A_in = folded[..., top:top + H, left:left + W].reshape(B, R, C, H, W)
    err = torch.zeros_like(bias)
    if rnd.sound:  # overlapping windows add coefficients; the bias is a sum over the output

        m = torch.maximum(box.lower.abs(), box.upper.abs()).unsqueeze(1)
        err = rnd.error_bound((A_in.abs() * m).flatten(2).sum(-1), kk + 1) + rnd.error_bound(
            (neg.abs() * u_max.abs().unsqueeze(1)).flatten(2).sum(-1), C * Ho * Wo + 1)
    return (A_in,), bias, err

RULES = {
    # max is exact in floating point
    "maxpool2d": OpRule("maxpool2d", _maxpool, monotone_ibp(_maxpool, None), _example, backward=_maxpool_backward,
                        runtime_error=flush_runtime_error(_maxpool)),
    # an average is a non-negative linear map: |L| = L, no bias; k*k terms plus the division
    "avgpool2d": OpRule("avgpool2d", _avgpool,
                        affine_map_ibp(_avgpool, _avgpool, lambda p: None,
                                       lambda p: p["kernel"][0] * p["kernel"][1] + 1),
                        _example, linear=True, transpose=_avgpool_t, abs_forward=_avgpool,
                        runtime_error=affine_runtime_error(_avgpool, lambda p: None,
                                                           lambda p: p["kernel"][0] * p["kernel"][1] + 1)),
}
