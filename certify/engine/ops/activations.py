"""Elementwise activations. All are monotone, so IBP is ``[f(l), f(u)]``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rules import OpRule, Params, monotone_ibp

# SLEEF/glibc document <= 3.5 ulp for these routines; 16 units of roundoff (8 ulp) is a safe envelope.
LIBRARY_ULPS = 16.0


def _relu(p: Params, x: Tensor) -> Tensor:
    return torch.relu(x)


def _leaky_relu(p: Params, x: Tensor) -> Tensor:
    return F.leaky_relu(x, p["alpha"])


def _sigmoid(p: Params, x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def _tanh(p: Params, x: Tensor) -> Tensor:
    return torch.tanh(x)


def _vector(g: torch.Generator):
    return {}, [(7,)]


def _leaky_example(g: torch.Generator):
    return {"alpha": float(torch.rand(1, generator=g)) * 0.5}, [(7,)]


RULES = {
    "relu": OpRule("relu", _relu, monotone_ibp(_relu, None), _vector),
    # alpha * x is one rounding: 2 units of roundoff relative covers it
    "leaky_relu": OpRule("leaky_relu", _leaky_relu, monotone_ibp(_leaky_relu, 2.0), _leaky_example),
    "sigmoid": OpRule("sigmoid", _sigmoid, monotone_ibp(_sigmoid, LIBRARY_ULPS), _vector, domain=(-12.0, 12.0)),
    "tanh": OpRule("tanh", _tanh, monotone_ibp(_tanh, LIBRARY_ULPS), _vector, domain=(-6.0, 6.0)),
}
