"""Ops that only move values: reshape/flatten, transpose, concat, identity. All exact and monotone.

Shapes exclude the batch dimension, which every op keeps as dimension 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..rules import OpRule, Params, monotone_ibp


def _reshape(p: Params, x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], *p["shape"])


def _transpose(p: Params, x: Tensor) -> Tensor:
    return x.permute(0, *[a + 1 for a in p["perm"]])


def _concat(p: Params, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=p["axis"] + 1)


def _identity(p: Params, x: Tensor) -> Tensor:
    return x


def _reshape_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    return (A.reshape(A.shape[0], *in_shapes[0]),)


def _transpose_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    inverse = [0] * len(p["perm"])
    for i, a in enumerate(p["perm"]):
        inverse[a] = i
    return (A.permute(0, *[a + 1 for a in inverse]),)


def _concat_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor, ...]:
    sizes = [s[p["axis"]] for s in in_shapes]
    return tuple(torch.split(A, sizes, dim=p["axis"] + 1))


def _identity_t(p: Params, A: Tensor, in_shapes) -> tuple[Tensor]:
    return (A,)


RULES = {
    "reshape": OpRule("reshape", _reshape, monotone_ibp(_reshape, None),
                      lambda g: ({"shape": (3, 4)}, [(2, 6)]), linear=True, exact=True,
                      transpose=_reshape_t),
    "transpose": OpRule("transpose", _transpose, monotone_ibp(_transpose, None),
                        lambda g: ({"perm": (2, 0, 1)}, [(2, 3, 4)]), linear=True, exact=True,
                        transpose=_transpose_t),
    "concat": OpRule("concat", _concat, monotone_ibp(_concat, None),
                     lambda g: ({"axis": 1}, [(2, 3), (2, 4)]), linear=True, exact=True,
                     transpose=_concat_t),
    "identity": OpRule("identity", _identity, monotone_ibp(_identity, None),
                       lambda g: ({}, [(5,)]), linear=True, exact=True, transpose=_identity_t),
}
