"""The engine's bounds on a live ``nn.Module``, differentiable in its parameters (certified training).

``BoundModel(module, input_shape)`` traces the module once with ``torch.fx`` and, for every batch, turns
it into an engine ``Graph`` whose parameters *are* the module's parameters (no copies, no detach), so the
losses below run the float32 fast path of the same rule table the verifiers use (``engine.ibp``,
``engine.crown``): there is no second implementation of IBP or CROWN here.

BatchNorm in training mode is an affine op whose scale and shift come from the statistics of the clean
batch at that layer (Shi et al. 2021, section 3.3; as auto_LiRPA computes it): ``s = gamma / sqrt(var + e)``,
``t = beta - mean s`` with the biased batch variance, the running statistics updated as ``nn.BatchNorm``
would. In eval mode the running statistics are used, so the graph is the network the checkpoint holds.

Supported: Linear, Conv2d (zero padding), BatchNorm1d/2d, ReLU (module or function), Flatten / reshape /
view, Identity, ``Normalize`` (``certify.training.arch``), and shape arithmetic (``x.shape[0]``). Anything
else is refused with one line naming it: a certified loss over an op the engine would model differently
from the module would train the wrong network.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CertifyError
from ..graph import Graph, Node
from ..sets import Box
from ..engine.crown import compute_boxes, crown_lower
from ..engine.fp import FAST
from ..engine.ibp import interval_bounds

_SHAPE_FUNCS = {operator.getitem, getattr, operator.mul, operator.floordiv, operator.add}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}


class _Tracer(torch.fx.Tracer):
    """Standard layers and ``Normalize`` stay single calls (its buffers are read in ``_lower``)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__name__ == "Normalize" or super().is_leaf_module(m, qualname)


def _is_shape_op(n) -> bool:
    """``x.shape``, ``x.size()``, ``shape[0]`` and arithmetic on them: values, not tensors."""
    return (n.op == "call_function" and n.target in _SHAPE_FUNCS) or (n.op == "call_method" and n.target == "size")


class BoundModel:
    """Per batch: the engine graph of ``module`` sharing its parameters, and the clean logits."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]):
        self.module = module
        self.input_shape = tuple(int(s) for s in input_shape)
        try:
            self.fx = torch.fx.GraphModule(module, _Tracer().trace(module))
        except Exception as exc:  # data-dependent control flow, unsupported Python
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CertifyError(f"certified training needs a traceable module (torch.fx): {first}") from None
        self.modules = dict(self.fx.named_modules())
        for n in self.fx.graph.nodes:
            self._check(n)

    def _check(self, n) -> None:
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
                raise CertifyError(f"certified training: {n.target}: Conv2d needs numeric zero padding")
            ok = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Flatten, nn.Identity)
            if not isinstance(m, ok) and type(m).__name__ != "Normalize":
                raise CertifyError(f"certified training: layer {n.target} ({type(m).__name__}) has no bound rule "
                                   "here; supported: Linear, Conv2d, BatchNorm, ReLU, Flatten, Normalize")
        elif n.op == "call_function":
            if n.target not in (F.relu, torch.relu, torch.flatten) and n.target not in _SHAPE_FUNCS:
                raise CertifyError(f"certified training: function {getattr(n.target, '__name__', n.target)} "
                                   "has no bound rule here")
        elif n.op == "call_method" and n.target not in _RESHAPE_METHODS | {"relu", "size"}:
            raise CertifyError(f"certified training: method .{n.target}() has no bound rule here")

    def __call__(self, x: Tensor) -> tuple[Graph, Tensor]:
        """``(graph, logits)`` for the batch ``x`` ``[B, *input_shape]``: the graph's BatchNorm nodes use this
        batch's statistics when the module is in training mode."""
        x = x.reshape(x.shape[0], *self.input_shape)
        env: dict[Any, Any] = {}
        names: dict[Any, str] = {}
        nodes: list[Node] = []
        out_name, logits = None, None

        def arg(a):
            return torch.fx.node.map_arg(a, lambda n: env[n])

        for n in self.fx.graph.nodes:
            if n.op == "placeholder":
                env[n], names[n] = x, "input"
                continue
            if n.op == "output":
                res = n.args[0]
                out_name, logits = names[res], env[res]
                break
            if n.op == "get_attr":
                raise CertifyError(f"certified training: parameter access {n.target} outside a layer")
            values = arg(n.args)
            if _is_shape_op(n) or not any(a in names for a in n.all_input_nodes):
                env[n] = self._shape_op(n, values, arg(n.kwargs))  # shape arithmetic: no graph node
                continue
            src = next(a for a in n.all_input_nodes if a in names)
            op, params, y = self._lower(n, env[src], values, arg(n.kwargs))
            env[n], names[n] = y, n.name
            prev = nodes[-1] if nodes else None
            if (op == "affine" and _is_batchnorm(self.modules.get(n.target)) and prev is not None
                    and prev.output == names[src] and prev.op in ("linear", "conv2d") and len(src.users) == 1):
                nodes[-1] = _fold(prev, params, n.name)  # one op instead of two: half the passes over A in CROWN
                continue
            nodes.append(Node(n.name, op, (names[src],), n.name, params, tuple(y.shape[1:])))
        graph = Graph("input", self.input_shape, tuple(nodes), out_name, tuple(logits.shape[1:]))
        return graph, logits

    @staticmethod
    def _shape_op(n, values, kwargs):
        if n.op == "call_function":
            return n.target(*values, **kwargs)
        if n.op == "call_method":
            return getattr(values[0], n.target)(*values[1:], **kwargs)
        raise CertifyError(f"certified training: unexpected node {n.format_node()}")

    def _lower(self, n, x: Tensor, values, kwargs) -> tuple[str, dict, Tensor]:
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, nn.Linear):
                p = {"weight": m.weight, "bias": m.bias}
                return "linear", p, F.linear(x, m.weight, m.bias)
            if isinstance(m, nn.Conv2d):
                p = {"weight": m.weight, "bias": m.bias, "stride": m.stride, "padding": m.padding,
                     "dilation": m.dilation, "groups": m.groups}
                return "conv2d", p, m(x)
            if _is_batchnorm(m):
                p = _batchnorm(m, x)
                return "affine", p, x * p["scale"] + p["shift"]
            if isinstance(m, nn.ReLU):
                return "relu", {}, F.relu(x)
            if isinstance(m, nn.Identity):
                return "identity", {}, x
            if isinstance(m, nn.Flatten):
                y = m(x)
                return "reshape", {"shape": tuple(y.shape[1:])}, y
            p = {"scale": m.scale, "shift": m.shift}  # Normalize: (x - mean) / std as x * scale + shift
            return "affine", p, x * m.scale + m.shift
        if n.target in (F.relu, torch.relu, "relu"):
            return "relu", {}, F.relu(x)
        y = self._shape_op(n, values, kwargs)  # flatten / view / reshape of the data tensor
        return "reshape", {"shape": tuple(y.shape[1:])}, y


def _is_batchnorm(m) -> bool:
    return isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))


def _fold(node: Node, bn: dict[str, Tensor], name: str) -> Node:
    """``BN(W x + b)`` as one affine layer ``(s W) x + (s b + t)`` (per output channel; exact in real
    arithmetic, so the bounds are those of the same network)."""
    s, t = bn["scale"].reshape(-1), bn["shift"].reshape(-1)
    W = node.params["weight"] * s.reshape(-1, *(1,) * (node.params["weight"].dim() - 1))
    b = node.params.get("bias")
    b = s * b + t if b is not None else t
    return Node(node.name, node.op, node.inputs, name, {**node.params, "weight": W, "bias": b}, node.shape)


def _batchnorm(m: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Scale and shift of a BatchNorm layer as the engine's ``affine`` op (per channel, broadcast over
    ``[B, C, *spatial]``): batch statistics of ``x`` in training mode (running statistics updated), running
    statistics in eval mode."""
    dims = [0] + list(range(2, x.dim()))
    shape = (x.shape[1],) + (1,) * (x.dim() - 2)
    if m.training:
        # two passes of plain sums: torch.var_mean over (0, 2, 3) is ten times slower on the CPU
        n = x.numel() // x.shape[1]
        mean = x.sum(dims) / n
        var = (x - mean.reshape(shape)).square().sum(dims) / n
        with torch.no_grad():
            momentum = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked + 1)
            m.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            m.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / max(n - 1, 1))
            m.num_batches_tracked.add_(1)
    else:
        mean, var = m.running_mean, m.running_var
    gamma = m.weight if m.weight is not None else torch.ones_like(mean)
    beta = m.bias if m.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + m.eps)
    return {"scale": scale.reshape(shape), "shift": (beta - mean * scale).reshape(shape)}


def other_classes(y: Tensor, n_classes: int) -> Tensor:
    """``[B, K - 1]``: every class but ``y``, in order (the columns of ``spec_rows``)."""
    others = torch.arange(n_classes - 1, device=y.device).unsqueeze(0)
    return others + (others >= y.unsqueeze(1)).long()


def spec_rows(y: Tensor, n_classes: int) -> Tensor:
    """``C`` ``[B, K - 1, K]`` with rows ``e_y - e_j`` for ``j != y``: the robustness spec's margins ``f_y - f_j``."""
    eye = torch.eye(n_classes, dtype=torch.float32, device=y.device)
    return eye[y].unsqueeze(1) - eye[other_classes(y, n_classes)]


def with_label_column(m: Tensor, y: Tensor) -> Tensor:
    """``[B, K - 1]`` margins (classes ``j != y`` in order) -> ``[B, K]`` with ``m_y = 0``."""
    B, R = m.shape
    return m.new_zeros(B, R + 1).scatter(1, other_classes(y, R + 1), m)


def drop_label_column(m: Tensor, y: Tensor) -> Tensor:
    """``[B, K]`` -> ``[B, K - 1]`` without column ``y`` (the inverse of ``with_label_column``)."""
    return m.gather(1, other_classes(y, m.shape[1]))


def elided(graph: Graph) -> Graph:
    """``graph`` with an output of all pairwise differences ``f_i - f_j`` (index ``i K + j``), merged into the
    last linear layer where there is one (Gowal et al. 2018's elision: ``(e_i - e_j)^T (W h + b)`` is one
    affine map of ``h``, so IBP bounds each margin over the penultimate box, not logit by logit)."""
    K = graph.n_outputs
    last = graph.nodes[-1]
    eye = torch.eye(K, device=graph.device)
    D = (eye.unsqueeze(1) - eye.unsqueeze(0)).reshape(K * K, K)
    if last.op == "linear" and last.output == graph.output:
        W, b = last.params["weight"], last.params.get("bias")
        D = D.to(W.dtype)
        params = {"weight": D @ W, "bias": D @ b if b is not None else None}
        nodes = graph.nodes[:-1] + (Node(last.name, "linear", last.inputs, last.output, params, (K * K,)),)
    else:
        nodes = graph.nodes + (Node("margins", "linear", (graph.output,), "margins", {"weight": D, "bias": None},
                                    (K * K,)),)
    return Graph(graph.input, graph.input_shape, nodes, nodes[-1].output, (K * K,), graph.meta)


def ibp_margin_bounds(graph: Graph, box: Box, y: Tensor, relu_boxes: list | None = None,
                      boxes: dict | None = None) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds ``[B, K]`` of ``f_y(x) - f_j(x)`` over the box by IBP with the last layer elided
    (fast mode: float32, differentiable; not a certificate). ``relu_boxes``, if a list, receives the box of
    every ReLU's input (for the warm-up regularisers), and ``boxes``, if a dict, the box of every tensor read
    by a node of ``graph`` (what a CROWN-IBP pass needs), from the same pass."""
    K = graph.n_outputs
    g = elided(graph)
    env = interval_bounds(g, box, all_nodes=True)
    if boxes is not None:
        boxes.update({name: env[name] for n in graph.nodes for name in n.inputs})
    if relu_boxes is not None:
        relu_boxes.extend(env[n.inputs[0]] for n in g.nodes if n.op == "relu")
    idx = (y * K).unsqueeze(1) + torch.arange(K, device=y.device)
    out = env[g.output]
    return out.lower.gather(1, idx), out.upper.gather(1, idx)


def ibp_margins(graph: Graph, box: Box, y: Tensor, relu_boxes: list | None = None) -> Tensor:
    """Lower bounds ``[B, K]`` of ``f_y(x) - f_j(x)``: see ``ibp_margin_bounds``."""
    return ibp_margin_bounds(graph, box, y, relu_boxes)[0]


def crown_ibp_margins(graph: Graph, box: Box, y: Tensor, boxes: dict | None = None) -> Tensor:
    """Lower bounds ``[B, K]`` of the margins by CROWN-IBP (Zhang et al. 2020): IBP boxes for every
    intermediate tensor (``boxes``, or computed here), one CROWN backward pass from the spec rows (fast
    mode, differentiable)."""
    if boxes is None:
        boxes = compute_boxes(graph, box, FAST, refine=False)
    C = spec_rows(y, graph.n_outputs).to(box.lower.dtype)  # K - 1 rows: the label's own row is 0
    m = crown_lower(graph, box, C, torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device), FAST, boxes=boxes)
    return with_label_column(m, y)


def fused_crown_ibp_loss(graph: Graph, box: Box, y: Tensor, lower: Tensor, upper: Tensor,
                         boxes: dict | None = None) -> Tensor:
    """An upper bound ``[B]`` on ``max_x CE(f(x), y)`` over the box from ONE CROWN-IBP backward pass (loss
    fusion, Xu et al. 2020), given IBP bounds ``lower <= f_y - f_j <= upper`` (``ibp_margin_bounds``).

    With ``z_j = f_j - f_y`` in ``[l_j, u_j] = [-upper_j, -lower_j]`` and ``c = max_j u_j``, the loss is
    ``c + log s`` with ``s = sum_j exp(z_j - c)``. The chord of ``exp`` over ``[l_j - c, u_j - c]`` bounds each
    term from above: ``exp(z_j - c) <= a_j z_j + b_j`` (``a_j >= 0``), and the tangent of the concave ``log`` at
    ``s_u = sum_j exp(u_j - c)`` gives ``log s <= log s_u - 1 + s / s_u``. So

        CE <= c + log s_u - 1 + S / s_u,    S >= sum_j (a_j z_j + b_j) on the box,

    and ``S`` is ``sum_j b_j`` minus CROWN's lower bound of the single row ``sum_j a_j (e_y - e_j)`` (IBP boxes
    inside), capped at IBP's own ``sum_j (a_j u_j + b_j) = s_u``: never looser than ``CE(-lower)``, the IBP loss.
    One row instead of ``K - 1`` makes it cost about one more backward pass than IBP; ``boxes`` (from
    ``ibp_margin_bounds``) saves recomputing the IBP boxes."""
    l, u = -upper, -lower  # bounds of z_j = f_j - f_y; z_y = 0 exactly
    c = u.max(1, keepdim=True).values
    lo, hi = l - c, u - c
    e_lo, e_hi = torch.exp(lo), torch.exp(hi)
    width = hi - lo
    a = torch.where(width > 1e-6, (e_hi - e_lo) / width.clamp(min=1e-6), e_hi)  # chord slope (tangent if flat)
    b = e_hi - a * hi  # the chord through (hi, e^hi): b_j + a_j (z_j - c) is the chord at z_j
    s_u = e_hi.sum(1)
    C = spec_rows(y, graph.n_outputs).to(box.lower.dtype)  # rows e_y - e_j, j != y
    a_others = drop_label_column(a, y)
    row = (a_others.unsqueeze(2) * C).sum(1, keepdim=True)  # sum_j a_j (e_y - e_j): [B, 1, K]
    d = torch.zeros(row.shape[:2], dtype=row.dtype, device=row.device)
    if boxes is None:
        boxes = compute_boxes(graph, box, FAST, refine=False)
    lower_row = crown_lower(graph, box, row, d, FAST, boxes=boxes)[:, 0]
    # sum_j a_j (z_j - c) + b_j = sum_j a_j z_j + sum_j (b_j - a_j c), and sum_j a_j z_j <= -lower_row
    S = torch.minimum(-lower_row + (b - a * c).sum(1), s_u)
    return c[:, 0] + torch.log(s_u) - 1 + S / s_u
