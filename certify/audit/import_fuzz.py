"""Importer fuzzing: random small ONNX graphs over every op the importer handles, checked against onnxruntime.

``random_graph(src)`` builds a graph from a random source ``src`` (hypothesis' ``data`` in the tests,
a seeded numpy generator in ``benchmarks/import_fuzz.py``): a chain of 1-6 ops, each drawn among those
that fit the current tensor (``[1, n]`` or ``[1, C, H, W]``) with random attributes -- Gemm (transB,
alpha, beta, bias shape) and MatMul; Conv (kernel, stride, dilation, symmetric or asymmetric pads,
groups, bias); MaxPool / AveragePool (kernel, stride, pads, dilation, ceil_mode, count_include_pad) and
GlobalAveragePool; BatchNormalization (random statistics, epsilon); Add / Sub / Mul / Div with constants
of every broadcastable shape on either side; Relu, LeakyRelu, Sigmoid, Tanh, Neg, Identity; Flatten,
Reshape, Transpose, Concat (of the tensor and an activation of it) and residual Add / Sub of two data
tensors.

``check_graph(model, points)``: the importer (``onnx_to_graph``) must either refuse the graph with
``ModelError`` / ``UnsupportedOpError`` or produce a graph whose sound interval bounds at a point box
``Box(x, x)`` (which contain both the exact value and every value the runtime may produce) contain what
onnxruntime returns at ``x``, for every random point. Anything else is a finding: a *mismatch* (a silent
import error) or a *crash* (an exception of another type). Graphs onnxruntime itself rejects are
``invalid`` and not judged (unless the importer crashes on them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Source(Protocol):
    def int(self, lo: int, hi: int) -> int: ...  # inclusive
    def float(self, lo: float, hi: float) -> float: ...
    def choice(self, seq: Sequence) -> Any: ...


class NumpySource:
    """A ``Source`` drawing from a seeded numpy generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def int(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def float(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def choice(self, seq: Sequence) -> Any:
        return seq[int(self.rng.integers(0, len(seq)))]


ELEMENTWISE = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Neg", "Identity")
FLAT_OPS = ("Gemm", "MatMul", "BatchNormalization", "elementwise", "arith", "residual", "Concat", "Reshape4d", "Flatten")
IMAGE_OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization", "elementwise", "arith",
             "residual", "Concat", "Transpose", "Flatten", "Reshape")


@dataclass
class _Builder:
    src: Source
    nodes: list
    inits: list
    ops: list
    k: int = 0
    regular_pools: bool = False  # pools: pads <= kernel // 2, no dilation (every window meets the input)

    def name(self, stem: str) -> str:
        self.k += 1
        return f"{stem}{self.k}"

    def const(self, shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0, dtype=np.float32) -> str:
        n = self.name("c")
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        vals = np.array([self.src.float(lo, hi) for _ in range(size)], dtype=np.float64)
        self.inits.append(numpy_helper.from_array(vals.astype(dtype).reshape(shape), n))
        return n

    def int_const(self, values: list[int]) -> str:
        n = self.name("s")
        self.inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), n))
        return n

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        self.ops.append(op + ("(" + ",".join(f"{k}={v}" for k, v in sorted(attrs.items())) + ")" if attrs else ""))
        return out


def _elementwise(b: _Builder, x: str) -> str:
    op = b.src.choice(ELEMENTWISE)
    if op == "LeakyRelu":
        return b.node(op, [x], alpha=b.src.choice([0.01, 0.1, 0.3, b.src.float(0.0, 0.9)]))
    return b.node(op, [x])


def _arith(b: _Builder, x: str, shape: tuple[int, ...]) -> str:
    op = b.src.choice(("Add", "Sub", "Mul", "Div"))
    form = b.src.choice(("scalar", "last", "full", "batch", "channel"))
    if form == "scalar":
        cshape: tuple[int, ...] = ()
    elif form == "last":
        cshape = (shape[-1],)
    elif form == "full":
        cshape = shape[1:]
    elif form == "batch":
        cshape = shape
    else:
        cshape = (shape[1],) + (1,) * (len(shape) - 2)
    if op == "Div":  # divisors away from 0, either sign
        c = b.const(cshape, 0.5, 2.0) if b.src.int(0, 1) else b.const(cshape, -2.0, -0.5)
    else:
        c = b.const(cshape, -2.0, 2.0)
    data_first = b.src.int(0, 7) > 0 if op == "Div" else b.src.int(0, 3) > 0  # const / data: refused
    return b.node(op, [x, c] if data_first else [c, x])


def _flat_step(b: _Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    n = shape[1]
    kind = b.src.choice(FLAT_OPS)
    if kind in ("Gemm", "MatMul"):
        m = b.src.int(1, 6)
        if kind == "MatMul":
            return b.node("MatMul", [x, b.const((n, m))]), (1, m)
        trans_b = b.src.int(0, 1)
        w = b.const((m, n) if trans_b else (n, m))
        attrs: dict[str, Any] = {"transB": trans_b}
        if b.src.int(0, 1):
            attrs["alpha"] = b.src.choice([0.5, 2.0, b.src.float(-1.5, 1.5)])
        ins = [x, w]
        if b.src.int(0, 2):
            ins.append(b.const(b.src.choice([(m,), (1, m), ()])))
            if b.src.int(0, 1):
                attrs["beta"] = b.src.choice([0.5, 2.0, b.src.float(-1.5, 1.5)])
        return b.node("Gemm", ins, **attrs), (1, m)
    if kind == "BatchNormalization":
        return _batchnorm(b, x, n), shape
    if kind == "elementwise":
        return _elementwise(b, x), shape
    if kind == "arith":
        return _arith(b, x, shape), shape
    if kind == "residual":
        y = _elementwise(b, x)
        return b.node(b.src.choice(("Add", "Add", "Sub")), [x, y] if b.src.int(0, 1) else [y, x]), shape
    if kind == "Concat":
        y = _elementwise(b, x)
        return b.node("Concat", [x, y] if b.src.int(0, 1) else [y, x], axis=b.src.choice([1, -1])), (1, 2 * n)
    if kind == "Reshape4d":
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        c = b.src.choice(divisors)
        rest = n // c
        h = b.src.choice([d for d in range(1, rest + 1) if rest % d == 0])
        target = [1, c, h, rest // h]
        if b.src.int(0, 2) == 0:
            target[b.src.int(1, 3)] = -1
        out = (1, c, h, rest // h)
        return b.node("Reshape", [x, b.int_const(target)]), out
    return b.node("Flatten", [x], axis=b.src.choice([1, -1, 0])), shape


def _batchnorm(b: _Builder, x: str, c: int) -> str:
    scale = b.const((c,), -2.0, 2.0)
    bias = b.const((c,), -1.0, 1.0)
    mean = b.const((c,), -1.0, 1.0)
    var = b.const((c,), 0.1, 2.0)
    return b.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=b.src.choice([1e-5, 1e-3, 0.0]))


def _out_size(size: int, k: int, s: int, d: int, p0: int, p1: int, ceil: bool) -> int:
    span = size + p0 + p1 - ((k - 1) * d + 1)
    if span < 0:
        return 0
    return (math.ceil(span / s) if ceil else span // s) + 1


def _image_step(b: _Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    _, C, H, W = shape
    kind = b.src.choice(IMAGE_OPS)
    if kind in ("Conv", "MaxPool", "AveragePool"):
        kh, kw = b.src.int(1, 3), b.src.int(1, 3)
        sh, sw = b.src.int(1, 3), b.src.int(1, 3)
        regular = b.regular_pools and kind != "Conv"
        dil = (b.src.int(1, 2), b.src.int(1, 2)) if kind != "AveragePool" and not regular else (1, 1)
        ph, pw = (kh // 2, kw // 2) if regular else (kh - 1, kw - 1)
        pads = [b.src.int(0, ph), b.src.int(0, pw), b.src.int(0, ph), b.src.int(0, pw)]
        if regular or b.src.int(0, 2) == 0:
            pads = [pads[0], pads[1], pads[0], pads[1]]  # symmetric
        ceil = kind != "Conv" and bool(b.src.int(0, 1))
        oh = _out_size(H, kh, sh, dil[0], pads[0], pads[2], ceil)
        ow = _out_size(W, kw, sw, dil[1], pads[1], pads[3], ceil)
        if oh < 1 or ow < 1:
            return _elementwise(b, x), shape
        attrs: dict[str, Any] = {"strides": [sh, sw], "pads": pads}
        if kind == "Conv":
            group = b.src.choice([1, 1, C])
            cout = group * b.src.int(1, 2) if group > 1 else b.src.int(1, 4)
            ins = [x, b.const((cout, C // group, kh, kw))]
            if b.src.int(0, 1):
                ins.append(b.const((cout,)))
            attrs.update(dilations=list(dil), group=group)
            if b.src.int(0, 1):
                attrs["kernel_shape"] = [kh, kw]
            return b.node("Conv", ins, **attrs), (1, cout, oh, ow)
        attrs.update(kernel_shape=[kh, kw], ceil_mode=int(ceil))
        if kind == "MaxPool":
            if dil != (1, 1):
                attrs["dilations"] = list(dil)
        else:
            attrs["count_include_pad"] = b.src.int(0, 1)
        # with ceil_mode onnxruntime may drop a last window that starts in the padding: the shape tracked
        # here can then be one too large, which only matters for later shape-dependent draws
        return b.node(kind, [x], **attrs), (1, C, oh, ow)
    if kind == "GlobalAveragePool":
        return b.node("GlobalAveragePool", [x]), (1, C, 1, 1)
    if kind == "BatchNormalization":
        return _batchnorm(b, x, C), shape
    if kind == "elementwise":
        return _elementwise(b, x), shape
    if kind == "arith":
        return _arith(b, x, shape), shape
    if kind == "residual":
        y = _elementwise(b, x)
        return b.node(b.src.choice(("Add", "Sub")), [x, y]), shape
    if kind == "Concat":
        axis = b.src.int(1, 3)
        y = _elementwise(b, x)
        out = list(shape)
        out[axis] *= 2
        return b.node("Concat", [x, y], axis=axis), tuple(out)
    if kind == "Transpose":
        perm = [0] + [1 + i for i in b.src.choice([(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])]
        return b.node("Transpose", [x], perm=perm), tuple(shape[p] for p in perm)
    if kind == "Flatten":
        return b.node("Flatten", [x], axis=b.src.choice([1, 1, 0, -3])), (1, C * H * W)
    target = b.src.choice([[1, -1], [1, C * H, W], [0, -1], [1, C, H * W, 1]])
    out = {2: (1, C * H * W), 3: (1, C * H, W), 4: (1, C, H * W, 1)}[len(target)]
    return b.node("Reshape", [x, b.int_const(target)]), out


def random_graph(src: Source, max_ops: int = 6, regular_pools: bool = False
                 ) -> tuple[onnx.ModelProto, tuple[int, ...], list[str]]:
    """A random graph, its input shape (batch 1 first) and the list of its ops with attributes.
    ``regular_pools``: pooling windows with symmetric pads of at most half the kernel and no dilation
    (ceil_mode and count_include_pad still random), which keeps clear of the known findings (module
    docstring of ``benchmarks/import_fuzz.py``)."""
    b = _Builder(src, [], [], [], regular_pools=regular_pools)
    if src.int(0, 1):
        shape: tuple[int, ...] = (1, src.int(1, 3), src.int(2, 6), src.int(2, 6))
    else:
        shape = (1, src.int(1, 8))
    in_shape = shape
    x = "X"
    for _ in range(src.int(1, max_ops)):
        if len(shape) == 4:
            x, shape = _image_step(b, x, shape)
        elif len(shape) == 2:
            x, shape = _flat_step(b, x, shape)
        else:  # a rank-3 reshape: flatten it back
            x, shape = b.node("Flatten", [x]), (1, int(np.prod(shape[1:])))
        if int(np.prod(shape)) > 400:  # keep graphs small
            break
    if x == "X":
        x = b.node("Identity", ["X"])
    b.nodes[-1].output[0] = "Y"
    graph = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, in_shape, b.ops


@dataclass(frozen=True)
class Outcome:
    status: str  # imported | refused | mismatch | crash | invalid
    message: str = ""


def check_graph(model: onnx.ModelProto, in_shape: tuple[int, ...], points: np.ndarray) -> Outcome:
    """Import ``model`` and compare it with onnxruntime at ``points`` (``[P, *in_shape[1:]]``, float32 values)."""
    import onnxruntime as ort
    import torch

    from ..engine.ibp import sound_interval_bounds
    from ..errors import ModelError
    from ..onnx_import import onnx_to_graph
    from ..sets import Box

    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = [np.asarray(sess.run(None, {"X": p.astype(np.float32).reshape(in_shape)})[0]) for p in points]
    except Exception as exc:  # noqa: BLE001 - the generator made a graph onnxruntime rejects
        valid, why = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    else:
        valid, why = True, ""
    try:
        graph = onnx_to_graph(model, "fuzz.onnx")
    except ModelError as exc:  # UnsupportedOpError is a ModelError
        return Outcome("refused" if valid else "invalid", str(exc)[:300])
    except Exception as exc:  # noqa: BLE001 - the finding
        return Outcome("crash", f"{type(exc).__name__}: {exc}")
    if not valid:
        return Outcome("invalid", why)
    for p, y in zip(points, outs):
        x = torch.as_tensor(p.astype(np.float32).astype(np.float64)).reshape(1, *graph.input_shape)
        try:
            box = sound_interval_bounds(graph, Box(x, x))
        except Exception as exc:  # noqa: BLE001
            return Outcome("crash", f"bounds: {type(exc).__name__}: {exc}")
        lo, hi = box.lower.reshape(-1).numpy(), box.upper.reshape(-1).numpy()
        y = y.astype(np.float64).reshape(-1)
        if y.size != lo.size:
            return Outcome("mismatch", f"onnxruntime returns {y.size} outputs (shape {list(outs[0].shape)}), the "
                                       f"imported graph {lo.size} (shape {list(graph.output_shape)})")
        bad = np.nonzero(~((lo <= y) & (y <= hi)))[0]
        if bad.size:
            j = int(bad[0])
            return Outcome("mismatch", f"output {j}: onnxruntime {y[j]!r} outside the sound interval "
                                       f"[{lo[j]!r}, {hi[j]!r}] at a point ({bad.size} of {y.size} outputs)")
    return Outcome("imported")


def fuzz_one(src: Source, n_points: int = 3, regular_pools: bool = False
             ) -> tuple[Outcome, onnx.ModelProto, list[str]]:
    """One random graph checked at ``n_points`` random points in [-2, 2]."""
    model, in_shape, ops = random_graph(src, regular_pools=regular_pools)
    pts = np.array([[src.float(-2.0, 2.0) for _ in range(int(np.prod(in_shape[1:])))] for _ in range(n_points)],
                   dtype=np.float32).reshape(n_points, *in_shape[1:])
    return check_graph(model, in_shape, pts), model, ops
