"""ONNX -> internal ``Graph``, read with the ``onnx`` package (no onnx2torch, no torchvision).

Data-flow nodes map to the engine's coarse ops; nodes whose inputs are all constants (weights,
``Shape`` of a statically shaped tensor, the ``Gather/Unsqueeze/Concat`` chains exporters emit for
``view``) are folded at import time with ONNX's reference evaluator. Every node that cannot be
handled is collected, and one ``UnsupportedOpError`` lists them all with node names.

Conventions: the first dimension of the model input is the batch (fixed to 1 in most VNN-COMP
files); every data tensor must keep it, and the internal graph replaces it with a free batch.
Initializers that old exporters also list in ``graph.input`` (ACAS Xu) are not inputs.

Faithfulness rules (nothing is dropped silently):

* every handler declares the attributes it understands, and which values (``ATTRS``); any other
  attribute, or an unsupported value, makes the node unsupported, naming node, op and attribute;
* nondeterministic ops (``NONDETERMINISTIC``: random draws) are refused, also with constant inputs:
  folding them would bake one draw into the model while the runtime draws anew on every run;
  Dropout is an identity only in inference mode (``training_mode`` absent or a constant false);
* the element type of every data tensor is tracked: a widening float ``Cast`` is an identity, a
  narrowing one becomes a ``round`` node (``engine.ops.cast``), and each node computing in a type other
  than the model input's records it as ``params["runtime_dtype"]`` (the runtime's precision there).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .engine.ops.linear import interval_pair
from .engine.rules import RULES
from .errors import ModelError, UnsupportedOpError
from .graph import Graph, Node

U64 = 2.0**-53
FOLDED_ONLY = ("Constant", "Shape")  # ops handled without a handler (constant folding, static shapes)
# ops whose value is a fresh random draw on every run: never folded, never imported
NONDETERMINISTIC = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike",
                              "Bernoulli", "Multinomial"})
TP = onnx.TensorProto
FLOAT_TYPES = {TP.FLOAT16: "float16", TP.FLOAT: "float32", TP.DOUBLE: "float64"}
FLOAT_BITS = {TP.FLOAT16: 16, TP.FLOAT: 32, TP.DOUBLE: 64}


class _Unsupported(Exception):
    def __init__(self, why: str):
        self.why = why


def load_onnx_model(path_or_bytes: str | bytes) -> onnx.ModelProto:
    """Parse an ONNX file; a truncated or non-ONNX file gives a ``ModelError`` naming it."""
    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            model = onnx.load_model_from_string(bytes(path_or_bytes))
        else:
            model = onnx.load(str(path_or_bytes))
    except FileNotFoundError:
        raise ModelError(f"{path_or_bytes}: no such file") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path_or_bytes}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ModelError(f"{path_or_bytes}: ONNX model has no nodes (truncated or empty file?)")
    return model


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64).copy())


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str):
        self.model = model
        self.source = source
        g = model.graph
        self.const: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in g.initializer}
        self.shape: dict[str, tuple[int, ...]] = {}  # full shape (batch first) of each data tensor
        self.dummy: dict[str, torch.Tensor] = {}  # a batch-1 random value of each data tensor
        self.nodes: list[Node] = []
        self.problems: list[tuple[str, str]] = []
        self.dead: set[str] = set()  # outputs of nodes that failed (not reported again downstream)
        self.consumers: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        self.graph_output = g.output[0].name if g.output else None
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        inputs = [i for i in g.input if i.name not in self.const]
        if len(inputs) != 1:
            raise ModelError(f"{source}: expected exactly one data input, found {[i.name for i in inputs]}")
        if len(g.output) != 1:
            raise ModelError(f"{source}: expected exactly one output, found {[o.name for o in g.output]}")
        self.input = inputs[0]
        dims = []
        for k, d in enumerate(self.input.type.tensor_type.shape.dim):
            v = d.dim_value if d.HasField("dim_value") else 0
            if v <= 0:
                if k != 0:
                    raise ModelError(f"{source}: input '{self.input.name}' has a symbolic dimension {k}")
                v = 1
            dims.append(v)
        if not dims:
            raise ModelError(f"{source}: input '{self.input.name}' has no static shape")
        if dims[0] != 1:
            dims = [1, *dims]  # no batch dimension in the file: we add one
            self.batch_added = True
        else:
            self.batch_added = False
        self.shape[self.input.name] = tuple(dims)
        # element type of every data tensor; a node computes in the type of its data inputs
        self.default_elem = self.input.type.tensor_type.elem_type
        self.elem: dict[str, int] = {self.input.name: self.default_elem}
        self.out_elem: int | None = None  # the type the node being imported computes in
        gen = torch.Generator().manual_seed(0)
        self.dummy[self.input.name] = torch.randn(tuple(dims), generator=gen, dtype=torch.float64)

    # -- helpers -----------------------------------------------------------------------------
    def fold(self, node: onnx.NodeProto) -> None:
        """Evaluate a node whose inputs are all constants, with onnxruntime (the reference runtime; already
        loaded) or, for what it cannot run, ONNX's reference evaluator (0.7 s to import: only then). A random
        op (also one inside a subgraph) is refused: its folded value would be one draw, fixed forever."""
        random = _random_ops(node)
        if random:
            raise _Unsupported(f"nondeterministic op {random[0]}: each run draws new random values, "
                               "folding it would keep one draw")
        if node.op_type == "Dropout":
            self._dropout_mode(node, _attrs(node))
        ins = [n for n in node.input if n]
        feeds = {n: self.const[n] for n in ins}
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()]
        outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        results = _evaluate_constant(model, feeds)
        for name, value in zip([n for n in node.output if n], results):
            self.const[name] = np.asarray(value)

    def add(self, onnx_node: onnx.NodeProto, op: str, inputs: list[str], params: dict[str, Any]) -> None:
        name = onnx_node.name or onnx_node.output[0]
        out = onnx_node.output[0]
        elem = self.out_elem if self.out_elem is not None else self.default_elem
        self.elem[out] = elem
        if FLOAT_TYPES.get(elem) != FLOAT_TYPES.get(self.default_elem) and elem in FLOAT_TYPES:
            params["runtime_dtype"] = FLOAT_TYPES[elem]  # this node computes in another precision (Cast)
        if self._fuse_bias(onnx_node, op, inputs, params):
            return
        if "weight" in params:
            params["weight_abs"] = params["weight"].abs()  # |W| for interval and linear bounds, once
        _mark_subnormal(params, FLOAT_TYPES.get(elem, "float32"))
        value = RULES[op].forward(params, *[self.dummy[i] for i in inputs])
        if value.shape[0] != 1:
            raise _Unsupported(f"output shape {tuple(value.shape)} does not keep the batch dimension")
        self.dummy[out] = value
        self.shape[out] = tuple(value.shape)
        self.nodes.append(Node(name, op, tuple(inputs), out, params, tuple(value.shape[1:])))

    def _fuse_bias(self, onnx_node, op: str, inputs: list[str], params: dict[str, Any]) -> bool:
        """Fold ``MatMul`` + ``Add(bias)`` into one dense node (one less op per layer). The exact bias is
        ``b + shift``; its float64 sum is rounded once, recorded in ``abs_err``."""
        if op != "affine" or set(params) - {"runtime_dtype"} != {"shift"} or not self.nodes:
            return False
        prev = self.nodes[-1]
        x = inputs[0]
        if prev.params.get("runtime_dtype") != params.get("runtime_dtype"):
            return False
        if prev.op != "linear" or prev.output != x or self.consumers.get(x, 0) != 1 or x == self.graph_output:
            return False
        shift = params["shift"]
        n_out = prev.shape[-1]
        if shift.dim() > 0 and (shift.shape[-1] not in (1, n_out) or shift[..., 0].numel() != 1):
            return False  # not a per-output bias (it varies along other axes)
        bias = prev.params.get("bias")
        new_bias = shift.reshape(-1).expand(n_out) + (bias if bias is not None else 0.0)
        fused = dict(prev.params, bias=new_bias.clone())
        err = new_bias.abs() * U64 + (prev.params.get("abs_err", 0.0))
        fused["abs_err"] = err
        out = onnx_node.output[0]
        self.nodes[-1] = Node(prev.name, "linear", prev.inputs, out, fused, prev.shape)
        self.dummy[out] = RULES["linear"].forward(fused, self.dummy[prev.inputs[0]])
        self.shape[out] = self.shape[x]
        return True

    def const_param(self, name: str, data_shape: tuple[int, ...]) -> torch.Tensor:
        """A constant operand broadcast against a data tensor of full shape ``data_shape``; the
        broadcast must not change the data shape. Returned without a leading batch axis of size 1."""
        c = self.const[name]
        try:
            out = np.broadcast_shapes(c.shape, data_shape)
        except ValueError:
            raise _Unsupported(f"constant '{name}' of shape {c.shape} does not broadcast to {data_shape}") from None
        if tuple(out) != tuple(data_shape):
            raise _Unsupported(f"constant '{name}' of shape {c.shape} would change the data shape {data_shape}")
        if c.ndim == len(data_shape):
            c = c.reshape(c.shape[1:])
        return _t(c)

    # -- the conversion ------------------------------------------------------------------------
    def run(self) -> Graph:
        for index, node in enumerate(self.model.graph.node):
            name = node.name or f"{node.op_type}_{index}"
            ins = [n for n in node.input if n]
            if any(n in self.dead for n in ins):
                if node.op_type not in self.HANDLERS and node.op_type not in FOLDED_ONLY:
                    self.problems.append((name, node.op_type))  # unsupported in its own right, too
                self.dead.update(node.output)
                continue
            try:
                if node.op_type in NONDETERMINISTIC:
                    raise _Unsupported("nondeterministic: the runtime draws new random values on every run")
                if node.op_type == "Constant":
                    self.fold(node)
                    continue
                data = [n for n in ins if n in self.shape]
                if not data:
                    self.fold(node)
                    continue
                attrs = self.check_attrs(node)
                if node.op_type == "Shape":
                    self.shape_of(node)
                    continue
                handler = self.HANDLERS.get(node.op_type)
                if handler is None:
                    raise _Unsupported("")
                self.out_elem = self.elem.get(data[0], self.default_elem)
                handler(self, node, ins, attrs)
            except _Unsupported as exc:
                label = node.op_type + (f" ({exc.why})" if exc.why else "")
                self.problems.append((name, label))
                self.dead.update(node.output)
            except Exception as exc:  # a malformed node: report it like an unsupported one
                self.problems.append((name, f"{node.op_type} ({type(exc).__name__}: {exc})"))
                self.dead.update(node.output)
        if self.problems:
            raise UnsupportedOpError(self.problems, self.source)
        out = self.model.graph.output[0].name
        if out not in self.shape:
            raise ModelError(f"{self.source}: output '{out}' does not depend on the input")
        for node in self.nodes:  # cached like weight_abs: the stacked weights of fast interval bounds
            if node.op == "linear":
                node.params["pair_weight"], node.params["pair_bias"] = interval_pair(node.params)
        return Graph(
            input=self.input.name,
            input_shape=self.shape[self.input.name][1:],
            nodes=tuple(self.nodes),
            output=out,
            output_shape=self.shape[out][1:],
            meta={"source": self.source, "onnx_input_shape": self.shape[self.input.name],
                  "batch_added": self.batch_added, "opset": self.opset,
                  # the precision the file's runtime computes in (the graph's own parameters are float64)
                  "runtime_dtype": {onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.FLOAT16: "float16"}.get(
                      self.input.type.tensor_type.elem_type, "float32")},
        )

    def used(self, outputs) -> bool:
        """Whether any of these tensor names is read by a node or is the graph's output."""
        return any(o and (self.consumers.get(o, 0) or o == self.graph_output) for o in outputs)

    def check_attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        """The node's attributes, after checking each against ``ATTRS[op]``: an attribute not declared
        there, or a value its check rejects, makes the node unsupported (no attribute is ignored)."""
        attrs = _attrs(node)
        declared = ATTRS.get(node.op_type)
        if declared is None:
            return attrs  # no handler either: reported as an unsupported op
        for key, value in attrs.items():
            shown = value.decode() if isinstance(value, bytes) else value
            if key not in declared:
                raise _Unsupported(f"attribute {key}={shown!r} is not understood by the importer")
            check = declared[key]
            if check is not None and not check(value, self.opset):
                raise _Unsupported(f"attribute {key}={shown!r} is not supported")
        return attrs

    def shape_of(self, node: onnx.NodeProto) -> None:
        shape = np.array(self.shape[node.input[0]], dtype=np.int64)
        a = _attrs(node)
        start, end = a.get("start", 0), a.get("end", None)
        self.const[node.output[0]] = shape[start:end]

    def _unary(op: str, param_fn: Callable[[dict], dict] | None = None):  # noqa: N805
        def handle(self, node, ins, attrs):
            self.add(node, op, [ins[0]], param_fn(attrs) if param_fn else {})

        return handle

    def _reshape_like(self, node, ins, attrs):
        x = ins[0]
        full = self.shape[x]
        dummy = np.empty(full)
        op = node.op_type
        if op == "Flatten":
            axis = attrs.get("axis", 1)
            axis = axis + len(full) if axis < 0 else axis
            out = (int(np.prod(full[:axis], dtype=np.int64)), int(np.prod(full[axis:], dtype=np.int64)))
        elif op == "Reshape":
            target = [int(v) for v in self.const_of(ins[1], node)]
            if not attrs.get("allowzero", 0):
                target = [full[i] if v == 0 else v for i, v in enumerate(target)]
            out = dummy.reshape(target).shape
        elif op in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes")
            if axes is None and len(ins) > 1:
                axes = [int(v) for v in self.const_of(ins[1], node)]
            if op == "Squeeze":
                out = np.squeeze(dummy, axis=tuple(axes) if axes is not None else None).shape
            else:
                out = dummy
                for ax in sorted(a + len(full) + len(axes) if a < 0 else a for a in axes):
                    out = np.expand_dims(out, ax)
                out = out.shape
        else:
            raise _Unsupported("")
        if len(out) == 0 or out[0] != 1:
            raise _Unsupported(f"reshape to {tuple(out)} does not keep the batch dimension")
        self.add(node, "reshape", [x], {"shape": tuple(int(v) for v in out[1:])})

    def const_of(self, name: str, node) -> np.ndarray:
        if name not in self.const:
            raise _Unsupported(f"input '{name}' must be a constant")
        return self.const[name]

    def _matmul(self, node, ins, attrs):
        a, b = ins
        if a in self.shape and b in self.const and self.const[b].ndim == 2:
            W = self.const[b].T
            self.add(node, "linear", [a], {"weight": _t(W)})
        else:
            raise _Unsupported("only data @ constant matrix is supported")

    def _gemm(self, node, ins, attrs):
        a, b = ins[0], ins[1]
        if a not in self.shape or b not in self.const or (len(ins) > 2 and ins[2] not in self.const):
            raise _Unsupported("only Gemm(data, constant, constant) is supported")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        B = self.const[b].astype(np.float64)
        W = B if attrs.get("transB", 0) else B.T
        params = {"weight": _t(W) * alpha}
        rel = 0.0
        if alpha != 1.0:
            rel += U64  # the product alpha * W is rounded once
        if len(ins) > 2:
            c = self.const[ins[2]].astype(np.float64)
            bias = np.broadcast_to(c.reshape(-1), (W.shape[0],)) if c.size in (1, W.shape[0]) and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1) else None
            if bias is None:
                raise _Unsupported(f"bias of shape {self.const[ins[2]].shape}")
            params["bias"] = _t(bias) * beta
            if beta != 1.0:
                params["abs_err"] = params["bias"].abs() * U64
        if rel:
            params["rel_err"] = rel
        self.add(node, "linear", [a], params)

    def _conv(self, node, ins, attrs):
        x, w = ins[0], ins[1]
        if w not in self.const or (len(ins) > 2 and ins[2] not in self.const):
            raise _Unsupported("weights and bias must be constants")
        W = self.const[w]
        if W.ndim != 4:
            raise _Unsupported(f"only 2-D convolution is supported (weight rank {W.ndim})")
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != tuple(W.shape[2:]):
            raise _Unsupported(f"kernel_shape={list(attrs['kernel_shape'])} differs from the weight's {list(W.shape[2:])}")
        params = self._window(attrs, self.shape[x], tuple(W.shape[2:]))
        params.update(weight=_t(W), groups=int(attrs.get("group", 1)))
        if len(ins) > 2:
            params["bias"] = _t(self.const[ins[2]])
        self.add(node, "conv2d", [x], params)

    def _window(self, attrs, full_shape, kernel) -> dict:
        """stride/padding/dilation for a 2-D window op; asymmetric pads become ``pre_pad``."""
        if len(full_shape) != 4:
            raise _Unsupported(f"only 2-D (NCHW) inputs are supported, got shape {full_shape}")
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        strides = tuple(attrs.get("strides", (1, 1)))
        dil = tuple(attrs.get("dilations", (1, 1)))
        pads = list(attrs.get("pads", (0, 0, 0, 0)))
        if len(strides) != 2 or len(dil) != 2 or len(pads) != 4 or len(kernel) != 2:
            raise _Unsupported(f"window attributes of the wrong rank (strides {strides}, dilations {dil}, pads {pads})")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for i in range(2):
                size = full_shape[2 + i]
                out = math.ceil(size / strides[i])
                total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
                small, big = total // 2, total - total // 2
                pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
            pads = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto != "NOTSET":
            raise _Unsupported(f"auto_pad={auto}")
        top, left, bottom, right = pads
        params: dict[str, Any] = {"stride": strides, "dilation": dil}
        if top == bottom and left == right:
            params["padding"] = (top, left)
        else:
            params["padding"] = (0, 0)
            params["pre_pad"] = (left, right, top, bottom)
        params["kernel"] = tuple(kernel)
        return params

    def _pool(self, node, ins, attrs):
        x = ins[0]
        if len([o for o in node.output if o]) > 1:
            raise _Unsupported("the indices output is not supported")
        full = self.shape[x]
        if node.op_type.startswith("Global"):
            kernel = tuple(full[2:])
            attrs = {}
        else:
            kernel = tuple(attrs["kernel_shape"])
        params = self._window(attrs, full, kernel)
        _check_pool_windows(params, full, kernel, bool(attrs.get("ceil_mode", 0)))
        params["ceil_mode"] = False  # only accepted where it changes nothing (see _check_pool_windows)
        if node.op_type in ("MaxPool",):
            if attrs.get("storage_order", 0):
                raise _Unsupported("storage_order=1")
            self.add(node, "maxpool2d", [x], params)
        else:
            if params.get("dilation", (1, 1)) != (1, 1):
                raise _Unsupported("dilated average pooling")
            include = bool(attrs.get("count_include_pad", 0))
            if "pre_pad" in params and not include:
                raise _Unsupported("asymmetric pads with count_include_pad=0")
            params["count_include_pad"] = include
            self.add(node, "avgpool2d", [x], params)

    def _batchnorm(self, node, ins, attrs):
        x = ins[0]
        if any(n not in self.const for n in ins[1:5]):
            raise _Unsupported("statistics must be constants (inference mode)")
        if self.opset < 7 and not attrs.get("is_test", 0):
            raise _Unsupported("is_test=0 (training mode: batch statistics) in opset < 7")
        if self.used(node.output[1:]):
            raise _Unsupported("the running-statistics outputs (training mode) are consumed")
        gamma, beta, mean, var = (self.const[n].astype(np.float64) for n in ins[1:5])
        eps = float(attrs.get("epsilon", 1e-5))
        full = self.shape[x]
        shape = (full[1],) + (1,) * (len(full) - 2)
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        # scale: three roundings (add, sqrt, divide); shift: two more on top of scale's error
        params = {"scale": _t(scale.reshape(shape)), "shift": _t(shift.reshape(shape)),
                  "rel_err": 4 * U64,
                  "abs_err": _t((6 * U64 * (np.abs(beta) + np.abs(mean * scale))).reshape(shape)),
                  # the runtime computes with the file's constants (subtract, add, square root, divide,
                  # multiply, add; possibly folded first): its error is against |beta| + |mean scale|
                  "runtime_bias_abs": _t(((np.abs(beta) + np.abs(mean * scale)) * (1 + 8 * U64)).reshape(shape)),
                  "runtime_ops": 6}
        self.add(node, "affine", [x], params)

    def _arith(self, node, ins, attrs):
        a, b = ins
        op = node.op_type
        if a in self.shape and b in self.shape:
            if self.shape[a] != self.shape[b]:
                raise _Unsupported(f"broadcasting between data tensors of shapes {self.shape[a]} and {self.shape[b]}")
            if op in ("Add", "Sub"):
                self.add(node, op.lower(), [a, b], {})
                return
            raise _Unsupported("product or quotient of two data tensors")
        x, c = (a, b) if a in self.shape else (b, a)
        cval = self.const_param(c, self.shape[x])
        params: dict[str, Any] = {}
        if op == "Add":
            params["shift"] = cval
        elif op == "Sub":
            if x == a:
                params["shift"] = -cval
            else:
                params["scale"], params["shift"] = -torch.ones_like(cval), cval
        elif op == "Mul":
            params["scale"] = cval
        elif op == "Div":
            if x != a:
                raise _Unsupported("division by a data tensor")
            params["scale"] = 1.0 / cval
            params["rel_err"] = U64  # 1/c is rounded once
        self.add(node, "affine", [x], params)

    def _concat(self, node, ins, attrs):
        if any(n not in self.shape for n in ins):
            raise _Unsupported("concatenation with constants")
        rank = len(self.shape[ins[0]])
        axis = attrs["axis"] + rank if attrs["axis"] < 0 else attrs["axis"]
        if axis == 0:
            raise _Unsupported("concatenation along the batch axis")
        self.add(node, "concat", ins, {"axis": axis - 1})

    def _transpose(self, node, ins, attrs):
        rank = len(self.shape[ins[0]])
        perm = list(attrs.get("perm", reversed(range(rank))))
        if perm[0] != 0:
            raise _Unsupported(f"permutation {perm} moves the batch axis")
        self.add(node, "transpose", [ins[0]], {"perm": tuple(p - 1 for p in perm[1:])})

    def _leaky(self, node, ins, attrs):
        alpha = float(attrs.get("alpha", 0.01))
        if alpha < 0:
            raise _Unsupported(f"negative slope alpha={alpha} (not monotone)")
        self.add(node, "leaky_relu", [ins[0]], {"alpha": alpha})

    def _identity(self, node, ins, attrs):
        self.add(node, "identity", [ins[0]], {})

    def _cast(self, node, ins, attrs):
        """A float cast of data. Widening (or to the same type): exact, an identity; the nodes after it
        compute in the wider type. Narrowing: a ``round`` node (round to nearest in the target, see
        ``engine.ops.cast``); the nodes after it compute in the narrower type. Casts to integer or bool
        types are not supported (a step function)."""
        to = attrs.get("to")
        src = self.out_elem
        if to not in FLOAT_TYPES:
            name = TP.DataType.Name(to) if to in TP.DataType.values() else to
            raise _Unsupported(f"cast of data to type {name} (only float16, float32 and float64)")
        if src not in FLOAT_TYPES:
            raise _Unsupported(f"cast of data of type {src}")
        self.out_elem = to
        if FLOAT_BITS[to] >= FLOAT_BITS[src]:
            self.add(node, "identity", [ins[0]], {})
            return
        from .engine.ops.cast import round_params

        via = "float32" if (src, to) == (TP.DOUBLE, TP.FLOAT16) else None  # a runtime may round twice
        self.add(node, "round", [ins[0]], round_params(FLOAT_TYPES[to], via))

    def _dropout_mode(self, node, attrs) -> None:
        """Refuse a Dropout that is not an inference-mode identity: ``training_mode`` (third input, opset
        >= 12) must be absent or a constant false; opset < 7 needs ``is_test=1``; the mask must be unused."""
        name = node.name or node.output[0]
        if self.opset < 7 and not attrs.get("is_test", 0):
            raise _Unsupported(f"Dropout '{name}' without is_test=1 (opset {self.opset}) is in training mode: "
                               "training-mode Dropout is random")
        if len(node.input) > 2 and node.input[2]:
            mode = node.input[2]
            if mode not in self.const:
                raise _Unsupported(f"Dropout '{name}': training_mode '{mode}' is not a constant "
                                   "(training-mode Dropout is random)")
            if bool(np.asarray(self.const[mode]).any()):
                raise _Unsupported(f"training-mode Dropout is random (node '{name}', training_mode={mode} is true)")
        if self.used(node.output[1:]):
            raise _Unsupported(f"Dropout '{name}': its mask output is consumed")

    def _dropout(self, node, ins, attrs):
        self._dropout_mode(node, attrs)
        self.add(node, "identity", [ins[0]], {})

    def _neg(self, node, ins, attrs):
        self.add(node, "affine", [ins[0]], {"scale": torch.tensor(-1.0, dtype=torch.float64)})

    HANDLERS = {
        "Relu": _unary("relu"),
        "Sigmoid": _unary("sigmoid"),
        "Tanh": _unary("tanh"),
        "LeakyRelu": _leaky,
        "Identity": _identity,
        "Dropout": _dropout,
        "Cast": _cast,
        "Neg": _neg,
        "Flatten": _reshape_like,
        "Reshape": _reshape_like,
        "Squeeze": _reshape_like,
        "Unsqueeze": _reshape_like,
        "MatMul": _matmul,
        "Gemm": _gemm,
        "Conv": _conv,
        "MaxPool": _pool,
        "AveragePool": _pool,
        "GlobalAveragePool": _pool,
        "BatchNormalization": _batchnorm,
        "Add": _arith,
        "Sub": _arith,
        "Mul": _arith,
        "Div": _arith,
        "Concat": _concat,
        "Transpose": _transpose,
    }


def _random_ops(node: onnx.NodeProto) -> list[str]:
    """Names of the nondeterministic ops in ``node`` and in its subgraphs (If, Loop, Scan bodies)."""
    found = [f"{node.op_type} '{node.name}'" if node.name else node.op_type] if node.op_type in NONDETERMINISTIC else []
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for inner in g.node:
                found += _random_ops(inner)
    return found


def _any(value, opset) -> bool:
    return True


def _is(*allowed):
    """A check accepting only the listed values (bytes compared as text)."""
    def check(value, opset) -> bool:
        v = value.decode() if isinstance(value, bytes) else value
        return v in allowed

    return check


def _all_ones(value, opset) -> bool:
    return all(int(v) == 1 for v in value)


_WINDOW = {"auto_pad": _is("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"), "strides": _any, "pads": _any}
# Per op: the attributes its handler reads (check: does the handler support this value?). Attributes
# with no effect at inference are listed as such; anything else is refused by ``check_attrs``.
ATTRS: dict[str, dict[str, Callable[[Any, int], bool]]] = {
    "Relu": {}, "Sigmoid": {}, "Tanh": {}, "Identity": {}, "Neg": {}, "MatMul": {},
    "Add": {}, "Sub": {}, "Mul": {}, "Div": {},  # opset < 7 broadcast/axis: refused
    "LeakyRelu": {"alpha": _any},
    "Dropout": {"ratio": _any,  # no effect at inference
                "seed": _any,  # no effect at inference
                "is_test": _is(1)},  # opset < 7: 0 (the default) is training mode
    "Cast": {"to": _any,  # checked by the handler
             "saturate": _any},  # only affects float8 targets, which are refused
    "Flatten": {"axis": _any}, "Reshape": {"allowzero": _any},
    "Squeeze": {"axes": _any}, "Unsqueeze": {"axes": _any},
    "Gemm": {"alpha": _any, "beta": _any, "transB": _any, "transA": _is(0),
             "broadcast": _any},  # opset < 7: the bias broadcast, which the handler does anyway
    "Conv": {**_WINDOW, "dilations": _any, "group": _any, "kernel_shape": _any},
    "MaxPool": {**_WINDOW, "dilations": _any, "kernel_shape": _any, "ceil_mode": _any, "storage_order": _is(0)},
    "AveragePool": {**_WINDOW, "dilations": _all_ones, "kernel_shape": _any, "ceil_mode": _any,
                    "count_include_pad": _any},
    "GlobalAveragePool": {},
    "BatchNormalization": {"epsilon": _any,
                           "momentum": _any,  # updates running statistics in training only
                           "training_mode": _is(0), "spatial": _is(1),
                           "is_test": _is(1)},  # opset < 7: 0 (the default) is training mode
    "Concat": {"axis": _any}, "Transpose": {"perm": _any},
    "Shape": {"start": _any, "end": _any},
}


def _mark_subnormal(params: dict[str, Any], runtime: str) -> None:
    """Weights (or scales) that are subnormal in the runtime's precision may be read as zero by a runtime
    that flushes subnormal operands: ``params["subnormal_abs"]`` holds their magnitudes, so that
    ``rules.affine_runtime_error`` charges ``|W_sub| |x|`` for them."""
    tiny = torch.finfo(getattr(torch, runtime)).tiny
    for key, target in (("weight", "weight_abs"), ("scale", "scale")):
        w = params.get(key)
        if isinstance(w, torch.Tensor) and w.is_floating_point():
            a = w.abs()
            sub = (a > 0) & (a < tiny)
            if bool(sub.any()):
                params["subnormal_abs"] = {target: torch.where(sub, a, torch.zeros_like(a))}


def _check_pool_windows(params: dict, full_shape, kernel, ceil_mode: bool) -> None:
    """Refuse pooling whose windows the runtimes place differently: ``ceil_mode=1`` where it adds windows
    (onnxruntime and PyTorch disagree on windows that overhang the padding, and on their count with
    asymmetric pads), and any window whose taps all land in padding (possible with dilation: onnxruntime
    then returns -FLT_MAX or skips the window, PyTorch -inf)."""
    pre = params.get("pre_pad")
    for i in range(2):
        size, k, s, d = full_shape[2 + i], kernel[i], params["stride"][i], params["dilation"][i]
        if pre is not None:
            before, after = (pre[2], pre[3]) if i == 0 else (pre[0], pre[1])
        else:
            before = after = params["padding"][i]
        span = size + before + after - ((k - 1) * d + 1)
        if span < 0:
            raise _Unsupported("the pooling window is larger than the padded input")
        n_floor, n_ceil = span // s + 1, -(-span // s) + 1
        if ceil_mode and n_ceil != n_floor:
            raise _Unsupported("ceil_mode=1 where it adds a window that overhangs the input (runtimes differ there)")
        for o in range(n_floor):
            taps = [o * s - before + j * d for j in range(k)]
            if not any(0 <= t < size for t in taps):
                raise _Unsupported(f"a pooling window (output {o} along axis {i + 2}) covers only padding")


def onnx_to_graph(model: onnx.ModelProto, source: str = "model.onnx") -> Graph:
    """Import an ONNX model into the engine's graph (float64 parameters, exact copies of the file's)."""
    return _Importer(model, source).run()


def _evaluate_constant(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list:
    """Run a one-node model on constant inputs: onnxruntime, else ONNX's reference evaluator."""
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)
