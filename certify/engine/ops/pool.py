"""2-D pooling (NCHW). ``pre_pad`` holds asymmetric ONNX pads as (left, right, top, bottom)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rules import OpRule, Params, affine_map_ibp, monotone_ibp
from .linear import _pad


def _maxpool(p: Params, x: Tensor) -> Tensor:
    return F.max_pool2d(_pad(p, x, -math.inf), p["kernel"], p["stride"], p["padding"], p["dilation"],
                        p.get("ceil_mode", False))


def _avgpool(p: Params, x: Tensor) -> Tensor:
    return F.avg_pool2d(_pad(p, x), p["kernel"], p["stride"], p["padding"], p.get("ceil_mode", False),
                        p.get("count_include_pad", True))


def _example(g: torch.Generator):
    def r(a, b):
        return int(torch.randint(a, b + 1, (1,), generator=g))

    k = r(1, 3)
    params = {"kernel": (k, k), "stride": (r(1, 2), r(1, 2)), "padding": (r(0, k // 2), 0),
              "dilation": (1, 1), "ceil_mode": False, "count_include_pad": bool(r(0, 1))}
    return params, [(2, r(4, 6), r(4, 6))]


RULES = {
    # max is exact in floating point
    "maxpool2d": OpRule("maxpool2d", _maxpool, monotone_ibp(_maxpool, None), _example),
    # an average is a non-negative linear map: |L| = L, no bias; k*k terms plus the division
    "avgpool2d": OpRule("avgpool2d", _avgpool,
                        affine_map_ibp(_avgpool, _avgpool, lambda p: None,
                                       lambda p: p["kernel"][0] * p["kernel"][1] + 1),
                        _example, linear=True),
}
