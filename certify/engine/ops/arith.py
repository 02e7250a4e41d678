"""Sums and differences of two tensors (residual joins)."""
from __future__ import annotations

import torch
from torch import Tensor

from ...sets import Box
from ..fp import Rounding
from ..rules import OpRule, Params, sum_runtime_error


def _add(p: Params, a: Tensor, b: Tensor) -> Tensor:
    return a + b


def _sub(p: Params, a: Tensor, b: Tensor) -> Tensor:
    return a - b


def _sub_ibp(p: Params, boxes, rnd: Rounding) -> Box:
    a, b = boxes
    # one correctly rounded operation per end point: one ulp outward covers it
    return rnd.outward(Box(a.lower - b.upper, a.upper - b.lower))


def _two_inputs(g: torch.Generator):
    return {}, [(2, 3), (2, 3)]


def _add_ibp(p: Params, boxes, rnd: Rounding) -> Box:
    a, b = boxes
    return rnd.outward(Box(a.lower + b.lower, a.upper + b.upper))


def _add_t(p: Params, A: Tensor, in_shapes):
    return A, A


def _sub_t(p: Params, A: Tensor, in_shapes):
    return A, -A


RULES = {
    # both inputs have the output's shape (the importer refuses broadcasting between data tensors)
    "add": OpRule("add", _add, _add_ibp, _two_inputs, linear=True, exact=True, transpose=_add_t,
                  runtime_error=sum_runtime_error),
    "sub": OpRule("sub", _sub, _sub_ibp, _two_inputs, linear=True, exact=True, transpose=_sub_t,
                  runtime_error=sum_runtime_error),
}
