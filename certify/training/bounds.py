"""The engine's bounds on a live ``nn.Module``, differentiable in its parameters (certified training).

``BoundModel(module, input_shape)`` traces the module once with ``torch.fx`` and, for every batch, turns
it into an engine ``Graph`` whose parameters *are* the module's parameters (no copies, no detach), so the
losses below run the float32 fast path of the same rule table the verifiers use (``engine.ibp``,
``engine.crown``): there is no second implementation of IBP or CROWN here.

BatchNorm in training mode is an affine op ``s = gamma / sqrt(var + e)``, ``t = beta - mean s`` whose
statistics are those of the batch at that layer, the biased variance, the running statistics updated as
``nn.BatchNorm`` would. ``BoundModel(module)(x)`` draws them from the clean batch ``x`` (Shi et al. 2021
with auto_LiRPA draw them so, from a separate clean pass); ``BoundModel.interval(box)``, what the losses
use, draws them from the centres of the boxes at that layer, which costs no extra pass and is the clean
batch at eps 0 (see ``interval``). In eval mode the running statistics are used, so the graph is the
network the checkpoint holds.

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
from ..engine.rules import RULES, node_box

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

    def interval(self, box: Box, last: bool = True) -> tuple[Graph, dict[str, Box]]:
        """``(graph, boxes)`` for the input box ``[B, *input_shape]``: IBP through the module in one pass, the
        box of every tensor the graph's nodes read by name (the network's output too, unless ``last`` is
        false and the last layer is Linear: the elided margins of ``ibp_margin_bounds`` read only its
        input), and the graph
        of the network those boxes belong to.

        BatchNorm in training mode takes its statistics from the *centres* of its input boxes (the batch
        ``(l + u) / 2`` at that layer), so the bounds need no separate clean pass: IBP costs two applications
        of each layer, forward and backward, where statistics from the clean batch would add a third. At eps
        0 the centres are the clean batch and this is ``nn.BatchNorm`` exactly. Every op is the engine's own
        rule in fast mode (``rules.node_box``), except that a Linear/Conv2d followed by BatchNorm is kept in
        centre-width form, ``c' = L c + b``, ``w' = |L| w`` (the rule's ``forward`` and ``abs_forward``, as its
        IBP computes them), then ``s c' + t`` and ``|s| w'``: the BatchNorm's statistics need the centre
        anyway, and the end points are formed once, after it. In eval mode the graph equals ``self(x)[0]``."""
        lo = box.lower.reshape(box.lower.shape[0], *self.input_shape)
        box = Box(lo, box.upper.reshape(lo.shape))
        env: dict[Any, Any] = {}  # fx node -> a tensor of the node's shape (shape arithmetic reads it)
        names: dict[Any, str] = {}
        boxes: dict[str, Box] = {"input": box}
        pending: dict[str, tuple[Tensor, Tensor]] = {}  # affine outputs kept as (centre, width) for BatchNorm
        nodes: list[Node] = []
        out_name = None

        def arg(a):
            return torch.fx.node.map_arg(a, lambda n: env[n])

        def box_of(name: str) -> Box:
            if name not in boxes:
                c, w = pending[name]
                boxes[name] = Box(torch.add(c, w, alpha=-0.5), torch.add(c, w, alpha=0.5))
            return boxes[name]

        fx_nodes = list(self.fx.graph.nodes)
        final = next(n.args[0] for n in fx_nodes if n.op == "output")
        for n in fx_nodes:
            if n.op == "placeholder":
                env[n], names[n] = lo, "input"
                continue
            if n.op == "output":
                out_name = names[n.args[0]]
                break
            if n.op == "get_attr":
                raise CertifyError(f"certified training: parameter access {n.target} outside a layer")
            values = arg(n.args)
            if _is_shape_op(n) or not any(a in names for a in n.all_input_nodes):
                env[n] = self._shape_op(n, values, arg(n.kwargs))
                continue
            src = next(a for a in n.all_input_nodes if a in names)
            module = self.modules.get(n.target) if n.op == "call_module" else None
            users = list(n.users)
            if _is_batchnorm(module) and names[src] in pending:
                c, w = pending[names[src]]
                op, params, _ = "affine", _batchnorm(module, c), None
                rule = RULES["affine"]
                pending[n.name] = (rule.forward(params, c), rule.abs_forward(params, w))
                shape = tuple(c.shape[1:])
            elif _is_batchnorm(module):  # not after an affine layer: statistics of its input boxes' centres
                op, params, out = _batchnorm_box(module, box_of(names[src]))
                boxes[n.name] = out
                shape = tuple(out.lower.shape[1:])
            else:
                op, params, _ = self._lower(n, env[src], values, arg(n.kwargs), forward=False)
                node = Node(n.name, op, (names[src],), n.name, params, ())
                if n is final and not last and op == "linear":
                    shape = (params["weight"].shape[0],)
                elif op in ("linear", "conv2d") and len(users) == 1 and _is_batchnorm(self.modules.get(users[0].target)):
                    src_box, rule = box_of(names[src]), RULES[op]
                    c = rule.forward(params, torch.lerp(src_box.lower, src_box.upper, 0.5))
                    pending[n.name] = (c, rule.abs_forward(params, src_box.upper - src_box.lower))
                    shape = tuple(c.shape[1:])
                else:
                    out = node_box(node, [box_of(names[src])], FAST)[0]
                    boxes[n.name] = out
                    shape = tuple(out.lower.shape[1:])
            node = Node(n.name, op, (names[src],), n.name, params, shape)
            env[n] = boxes[n.name].lower if n.name in boxes else pending[n.name][0] if n.name in pending else None
            names[n] = n.name
            prev = nodes[-1] if nodes else None
            if (op == "affine" and _is_batchnorm(module) and prev is not None
                    and prev.output == names[src] and prev.op in ("linear", "conv2d") and len(src.users) == 1):
                nodes[-1] = _fold(prev, params, n.name)
                continue
            nodes.append(node)
        for name in pending:  # every tensor a node of the graph reads has its box (CROWN-IBP, regularisers)
            if any(name in m.inputs for m in nodes):
                box_of(name)
        graph = Graph("input", self.input_shape, tuple(nodes), out_name, nodes[-1].shape)
        return graph, boxes

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

    def _lower(self, n, x: Tensor, values, kwargs, forward: bool = True) -> tuple[str, dict, Tensor | None]:
        """The engine op and parameters of fx node ``n`` whose data input is ``x`` (BatchNorm statistics are
        drawn from ``x``), and its value on ``x`` unless ``forward`` is false (``None`` for the affine layers
        then: ``interval`` applies the engine's rule instead)."""
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, nn.Linear):
                p = {"weight": m.weight, "bias": m.bias}
                return "linear", p, F.linear(x, m.weight, m.bias) if forward else None
            if isinstance(m, nn.Conv2d):
                p = {"weight": m.weight, "bias": m.bias, "stride": m.stride, "padding": m.padding,
                     "dilation": m.dilation, "groups": m.groups}
                return "conv2d", p, m(x) if forward else None
            if _is_batchnorm(m):
                p = _batchnorm(m, x)
                return "affine", p, x * p["scale"] + p["shift"] if forward else None
            if isinstance(m, nn.ReLU):
                return "relu", {}, F.relu(x) if forward else None
            if isinstance(m, nn.Identity):
                return "identity", {}, x
            if isinstance(m, nn.Flatten):
                y = m(x)
                return "reshape", {"shape": tuple(y.shape[1:])}, y
            p = {"scale": m.scale, "shift": m.shift}  # Normalize: (x - mean) / std as x * scale + shift
            return "affine", p, x * m.scale + m.shift if forward else None
        if n.target in (F.relu, torch.relu, "relu"):
            return "relu", {}, F.relu(x) if forward else None
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


def _channel_major(x: Tensor) -> Tensor:
    """``[B, C, *S]`` -> ``[C, B * prod(S)]`` (a copy): per-channel sums become row sums, which torch reduces
    (and back-propagates through) many times faster on the CPU than sums over dims ``(0, 2, 3)``."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _batch_major(x: Tensor, like: Tensor) -> Tensor:
    """The inverse of ``_channel_major`` for a tensor shaped like ``like``."""
    return x.reshape(like.shape[1], like.shape[0], *like.shape[2:]).transpose(0, 1)


def _batchnorm_box(m: nn.Module, box: Box) -> tuple[str, dict[str, Tensor], Box]:
    """BatchNorm on a box as the engine's ``affine`` op, statistics from the box centres in training mode
    (``BoundModel.interval``): ``(op, params, output box)``, the rule applied in the channel-major layout."""
    if box.lower.dim() <= 2:
        params = _batchnorm(m, torch.lerp(box.lower, box.upper, 0.5))
        return "affine", params, node_box(Node("bn", "affine", ("x",), "bn", params, ()), [box], FAST)[0]
    lo, hi = _channel_major(box.lower), _channel_major(box.upper)
    flat = _batchnorm(m, torch.lerp(lo, hi, 0.5), channel_major=True)  # scale, shift [C, 1]
    out = node_box(Node("bn", "affine", ("x",), "bn", flat, ()), [Box(lo, hi)], FAST)[0]
    shape = (box.lower.shape[1],) + (1,) * (box.lower.dim() - 2)
    params = {k: v.reshape(shape) for k, v in flat.items()}
    return "affine", params, Box(_batch_major(out.lower, box.lower), _batch_major(out.upper, box.lower))


def _batchnorm(m: nn.Module, x: Tensor, channel_major: bool = False) -> dict[str, Tensor]:
    """Scale and shift of a BatchNorm layer as the engine's ``affine`` op (per channel, broadcast over
    ``[B, C, *spatial]``): batch statistics of ``x`` in training mode (running statistics updated), running
    statistics in eval mode."""
    if not channel_major and x.dim() > 2:
        params = _batchnorm(m, _channel_major(x), channel_major=True)
        shape = (x.shape[1],) + (1,) * (x.dim() - 2)
        return {k: v.reshape(shape) for k, v in params.items()}
    shape = (x.shape[0], 1) if channel_major else (x.shape[1],)
    dims = [1] if channel_major else [0]
    if m.training:
        n = x.shape[1] if channel_major else x.shape[0]
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
                      boxes: dict | None = None, env: dict[str, Box] | None = None) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds ``[B, K]`` of ``f_y(x) - f_j(x)`` over the box by IBP with the last layer elided
    (fast mode: float32, differentiable; not a certificate). ``relu_boxes``, if a list, receives the box of
    every ReLU's input (for the warm-up regularisers), and ``boxes``, if a dict, the box of every tensor read
    by a node of ``graph`` (what a CROWN-IBP pass needs), from the same pass. ``env``: the IBP boxes of
    ``graph``'s tensors over ``box`` already computed (``BoundModel.interval``); only the elided last layer
    is then applied."""
    K = graph.n_outputs
    last = graph.nodes[-1]
    if env is not None and last.op == "linear" and last.output == graph.output:
        lower, upper = _label_rows_ibp(last.params["weight"], last.params.get("bias"), env[last.inputs[0]], y)
    else:
        g = elided(graph)
        if env is None:
            env = interval_bounds(g, box, all_nodes=True)
        else:
            env = {**env, g.output: node_box(g.nodes[-1], [env[name] for name in g.nodes[-1].inputs], FAST)[0]}
        idx = (y * K).unsqueeze(1) + torch.arange(K, device=y.device)
        lower, upper = env[g.output].lower.gather(1, idx), env[g.output].upper.gather(1, idx)
    if boxes is not None:
        boxes.update({name: env[name] for n in graph.nodes for name in n.inputs})
    if relu_boxes is not None:
        relu_boxes.extend(env[n.inputs[0]] for n in graph.nodes if n.op == "relu")
    return lower, upper


def _label_rows_ibp(W: Tensor, b: Tensor | None, box: Box, y: Tensor) -> tuple[Tensor, Tensor]:
    """IBP of ``f_y - f_j = (W_y - W_j) h + b_y - b_j`` over the box of ``h``, for each instance's own label ``y``
    only: the elided last layer (``elided``) restricted to the ``K`` rows an instance uses, instead of all
    ``K^2``. Centre-width form as the engine's affine rule: ``c' = D c + d`` (here ``(W c + b)_y - (W c + b)_j``)
    and ``w' = |D| w``, the instances grouped by label so that each group is one matrix product."""
    c, w = torch.lerp(box.lower, box.upper, 0.5), box.upper - box.lower
    logits = F.linear(c, W, b)
    centre = logits.gather(1, y[:, None]) - logits
    K = W.shape[0]
    order = torch.argsort(y)
    counts = torch.bincount(y, minlength=K).tolist()
    groups = w[order].split(counts)
    width = torch.cat([g @ (W[k] - W).abs().t() for k, g in enumerate(groups) if len(g)])
    width = torch.empty_like(width).index_copy(0, order, width)
    return torch.add(centre, width, alpha=-0.5), torch.add(centre, width, alpha=0.5)


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
