"""The internal graph every backend walks: a topologically ordered tuple of ``Node``s over named
tensors, one data input and one output. Parameters are tensors held in each node; shapes exclude the
batch dimension, which every op preserves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch
from torch import Tensor

from .errors import ShapeError

#: What a proof can cover (see ``engine.fp``): the runtime's float evaluation too, or the exact network only.
SEMANTICS = ("runtime", "real")


@dataclass(frozen=True)
class Node:
    """``output = RULES[op].forward(params, *inputs)``; ``shape`` is the output shape without batch."""

    name: str
    op: str
    inputs: tuple[str, ...]
    output: str
    params: Mapping[str, Any]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    input: str
    input_shape: tuple[int, ...]
    nodes: tuple[Node, ...]
    output: str
    output_shape: tuple[int, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        return math.prod(self.output_shape)

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(sorted({n.op for n in self.nodes}))

    @property
    def dtype(self) -> torch.dtype:
        """The precision the engine evaluates this graph in: its parameters' (or, for a graph without
        floating-point parameters, the one ``to`` was last asked for; float64 by default)."""
        for node in self.nodes:
            for v in node.params.values():
                if isinstance(v, Tensor) and v.is_floating_point():
                    return v.dtype
        return getattr(torch, str(self.meta.get("compute_dtype", "float64")))

    @property
    def runtime_dtype(self) -> torch.dtype:
        """The precision the model's own runtime computes in (``meta["runtime_dtype"]``, recorded by the
        importer from the ONNX input type; float32 when unknown). The graph's parameters are float64."""
        return getattr(torch, str(self.meta.get("runtime_dtype", "float32")))

    @property
    def semantics(self) -> str:
        """What a proof about this graph covers: ``"runtime"`` (default: the exact network and its runtime's
        floating-point evaluation, see ``engine.fp``) or ``"real"`` (the exact network only)."""
        return str(self.meta.get("semantics", "runtime"))

    def with_semantics(self, semantics: str) -> "Graph":
        """A copy whose proofs cover ``semantics`` (``"runtime"`` or ``"real"``)."""
        if semantics not in SEMANTICS:
            raise ValueError(f"semantics: expected one of {SEMANTICS}, got {semantics!r}")
        return replace(self, meta={**self.meta, "semantics": semantics})

    @property
    def device(self) -> torch.device:
        for node in self.nodes:
            for v in node.params.values():
                if isinstance(v, Tensor):
                    return v.device
        return torch.device("cpu")

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Graph":
        """A copy with every floating-point parameter moved/cast (float32 weights are exact in float64)."""

        def conv(v):
            if isinstance(v, Tensor):
                return v.to(device=device, dtype=dtype if v.is_floating_point() and dtype else None)
            return v

        nodes = tuple(replace(n, params={k: conv(v) for k, v in n.params.items()}) for n in self.nodes)
        meta = {**self.meta, "compute_dtype": str(dtype).removeprefix("torch.")} if dtype is not None else self.meta
        return replace(self, nodes=nodes, meta=meta)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate on a batch ``[B, *input_shape]`` (differentiable; used by attacks and training)."""
        from .engine.traverse import evaluate

        return evaluate(self, x)

    __call__ = forward

    def check_input(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            if x[0].numel() == self.n_inputs:
                return x.reshape(x.shape[0], *self.input_shape)
            raise ShapeError("model input shape", self.input_shape, tuple(x.shape[1:]))
        return x
