"""Optional reference backend: auto_LiRPA's CROWN / alpha-CROWN on the same graph (Xu et al. 2020).

Installed separately. Its PyPI release 0.3 declares torch < 1.13 but runs on current torch with three
import-time aliases for APIs that moved (applied by ``import_auto_lirpa``, only when this backend is
used): ``numpy.lib.arraysetops`` (numpy 2), ``torch.onnx.utils._optimize_graph`` and
``_set_opset_version`` (torch 2's TorchScript exporter moved them), and ``torch._C.Node.__getitem__``
(attribute access by kind, which old torch.onnx installed). Install it beside certify with
``pip install --no-deps auto_LiRPA==0.3 appdirs`` (``--no-deps`` keeps pip from replacing torch), or a
current release from its repository. auto_LiRPA computes its bounds in plain floating point, without the
rounding-error accounting that lets our engine claim *proved*; so this backend reports its bounds but answers UNKNOWN with the reason
``reference only`` rather than PROVED. Use it to compare bounds and time, not to certify.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from certify.bounding import clause_bounds
from certify.budget import Budget
from certify.graph import Graph
from certify.models import Model
from certify.results import Guarantee, Result, Verdict
from certify.sets import Box, LpBall
from certify.spec import Property, Spec


@dataclass(frozen=True)
class LirpaOptions:
    """``method``: auto_LiRPA's "CROWN" or "alpha-CROWN"; ``device``: where it runs."""

    method: str = "CROWN"
    device: str = "cpu"


class GraphModule(torch.nn.Module):
    """The engine's graph as a plain ``nn.Module`` (float32), for tools that trace modules."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph.to(dtype=torch.float32)
        for i, node in enumerate(self.graph.nodes):  # module state, so that tracers see weights, not constants
            for key, value in node.params.items():
                if isinstance(value, torch.Tensor):
                    self.register_buffer(f"n{i}_{key}", value)

    def forward(self, x):
        return self.graph.forward(x)


def import_auto_lirpa():
    """``auto_LiRPA``, after aliasing the APIs its 0.3 release expects (see the module docstring)."""
    import sys

    import numpy

    sys.modules.setdefault("numpy.lib.arraysetops", numpy)
    import torch.onnx.symbolic_helper as helper
    import torch.onnx.utils as onnx_utils

    if not hasattr(helper, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        onnx_utils._optimize_graph = ts_utils._optimize_graph
        helper._set_opset_version = lambda v: setattr(GLOBALS, "export_onnx_opset_version", v)
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda node, key: getattr(node, node.kindOf(key))(key)
    import auto_LiRPA

    return auto_LiRPA


def bounded_box(graph: Graph, box: Box):
    """auto_LiRPA's ``(BoundedModule, BoundedTensor)`` for ``graph`` over an input box (float32; expanded
    views made contiguous, which its concretisation needs)."""
    lirpa = import_auto_lirpa()
    lo, hi = box.lower.float().contiguous(), box.upper.float().contiguous()
    module = lirpa.BoundedModule(GraphModule(graph), torch.zeros_like(lo))
    ptb = lirpa.PerturbationLpNorm(norm=math.inf, x_L=lo, x_U=hi)
    return module, lirpa.BoundedTensor((lo + hi) / 2, ptb)


def lirpa_lower(model: Model, spec: Spec, options: LirpaOptions = LirpaOptions()) -> torch.Tensor:
    """auto_LiRPA's lower bounds of ``C_r f(x) - d_r``, ``[B, R]`` (not floating-point certified)."""
    lirpa = import_auto_lirpa()
    BoundedModule, BoundedTensor, PerturbationLpNorm = lirpa.BoundedModule, lirpa.BoundedTensor, lirpa.PerturbationLpNorm

    spec = spec.reshape_input(model.input_shape).to(device=options.device, dtype=torch.float32)
    box = spec.input.bounds()
    module = GraphModule(model.graph.to(device=options.device))
    x = box.center
    bounded = BoundedModule(module, torch.zeros_like(x), device=options.device)
    if isinstance(spec.input, LpBall) and spec.input.p != math.inf and spec.input.clip is None:
        ptb = PerturbationLpNorm(norm=spec.input.p, eps=float(spec.input.eps[0]))
        x = spec.input.center
    else:
        ptb = PerturbationLpNorm(norm=math.inf, x_L=box.lower, x_U=box.upper)
    C, d, _ = spec.matrix()
    lb, _ = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), C=C.float(), method=options.method, bound_upper=False)
    return lb.double().cpu() - d.cpu()


class Lirpa:
    name: ClassVar[str] = "lirpa"
    description: ClassVar[str] = "auto_LiRPA CROWN/alpha-CROWN as a reference (bounds only, never proves)"
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ("auto_LiRPA",)
    Options: ClassVar[type] = LirpaOptions

    def supports(self, model: Model, prop: Property) -> str | None:
        return None

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        options = options or LirpaOptions()
        t0 = time.perf_counter()
        bounds = tuple(tuple(float(v) for v in clause_bounds(lirpa_lower(model, s, options), s)[0]) for s in prop.specs)
        positive = all(v > 0 for spec in bounds for v in spec)
        reason = ("reference only: auto_LiRPA's bounds are positive but not floating-point certified" if positive
                  else "reference only: auto_LiRPA's bounds are too loose")
        return Result(Verdict.UNKNOWN, self.name, time.perf_counter() - t0, bounds=bounds, reason=reason,
                      property=prop.name, options=asdict(options))
