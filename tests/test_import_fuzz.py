"""Importer fuzzing (certify.audit.import_fuzz): random small ONNX graphs over every op the importer
handles, with random attributes, imported by ``onnx_to_graph`` and compared with onnxruntime at random
points -- the runtime's output must lie in the sound interval bounds of the imported graph at the point
box ``Box(x, x)``; a graph the importer does not take must be refused with ``ModelError`` /
``UnsupportedOpError``. The CI subset; ``benchmarks/import_fuzz.py`` runs 1000+ graphs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.audit.import_fuzz import NumpySource, check_graph, fuzz_one, random_graph
from certify.errors import ModelError
from certify.onnx_import import onnx_to_graph


class HypSource:
    """The fuzzer's random source drawn from hypothesis (shrinkable, derandomised)."""

    def __init__(self, data):
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def float(self, lo: float, hi: float) -> float:
        return self.data.draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))

    def choice(self, seq):
        return self.data.draw(st.sampled_from(list(seq)))


def _points(src, in_shape, n=3) -> np.ndarray:
    size = int(np.prod(in_shape[1:]))
    return np.array([[src.float(-2.0, 2.0) for _ in range(size)] for _ in range(n)],
                    dtype=np.float32).reshape(n, *in_shape[1:])


@settings(derandomize=True, deadline=None, max_examples=80)
@given(st.data())
def test_imported_graphs_contain_what_onnxruntime_computes(data):
    src = HypSource(data)
    model, in_shape, ops = random_graph(src, regular_pools=True)
    outcome = check_graph(model, in_shape, _points(src, in_shape))
    assert outcome.status in ("imported", "refused", "invalid"), (outcome, ops)


def _corrupt(model: onnx.ModelProto, src) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = m.graph.node
    what = src.choice(["drop_init", "unknown_op", "bad_attr", "swap_inputs", "rank", "drop_node"])
    k = src.int(0, len(nodes) - 1)
    if what == "drop_init" and len(m.graph.initializer):
        del m.graph.initializer[src.int(0, len(m.graph.initializer) - 1)]
    elif what == "unknown_op":
        nodes[k].op_type = src.choice(["Foo", "Softmax", "Pow", "Gather", "Resize"])
    elif what == "bad_attr" and len(nodes[k].attribute):
        a = nodes[k].attribute[src.int(0, len(nodes[k].attribute) - 1)]
        if a.type == onnx.AttributeProto.INTS and len(a.ints):
            a.ints[src.int(0, len(a.ints) - 1)] = src.choice([0, -1, 7, 100])
        elif a.type == onnx.AttributeProto.INT:
            a.i = src.choice([-3, 2, 99])
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = src.choice([-1.0, float("nan"), 1e30])
    elif what == "swap_inputs" and len(nodes[k].input) >= 2:
        ins = list(nodes[k].input)
        nodes[k].input[0], nodes[k].input[1] = ins[1], ins[0]
    elif what == "rank" and len(m.graph.initializer):
        init = m.graph.initializer[src.int(0, len(m.graph.initializer) - 1)]
        init.dims.append(1)
    elif what == "drop_node" and len(nodes) > 1:
        del nodes[k]
    return m


@settings(derandomize=True, deadline=None, max_examples=40)
@given(st.data())
def test_corrupted_graphs_are_refused_with_model_errors_or_imported_correctly(data):
    """Broken graphs (a missing constant, an unknown op, a bad attribute, swapped inputs, a constant of the
    wrong rank, a dangling input): the importer refuses with ModelError, or what it imports still contains
    onnxruntime's values wherever onnxruntime runs the graph. Never another exception."""
    src = HypSource(data)
    model, in_shape, _ = random_graph(src, max_ops=4, regular_pools=True)
    bad = _corrupt(model, src)
    try:
        onnx_to_graph(bad, "fuzz.onnx")
    except ModelError:
        pass
    outcome = check_graph(bad, in_shape, _points(src, in_shape, 2))
    assert outcome.status in ("imported", "refused", "invalid"), outcome


def test_every_supported_op_is_drawn():
    seen = set()
    for seed in range(300):
        _, _, ops = random_graph(NumpySource(seed))
        seen.update(op.split("(")[0] for op in ops)
    assert seen >= {"Gemm", "MatMul", "Conv", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu",
                    "Sigmoid", "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
                    "Transpose", "Concat", "Neg", "Identity"}


# Findings of benchmarks/import_fuzz.py (seeds of NumpySource, unrestricted pools), fixed by refusing pooling
# whose windows the runtimes place differently (onnx_import._check_pool_windows): now imported faithfully or
# refused, never a silent mismatch.
KNOWN = {
    2: "MaxPool ceil_mode=1 with dilation: the last window lies in the padding only; the imported graph's "
       "bounds raise OverflowRisk (-inf) where onnxruntime returns a finite value",
    87: "AveragePool ceil_mode=1, asymmetric pads, count_include_pad=1: the imported output has 3 rows, "
        "onnxruntime's 1 (its kernel drops windows starting in the end padding)",
    273: "MaxPool (ceil_mode=0) with dilation 2 and pads: a window meets only padding; onnxruntime returns "
         "-FLT_MAX (-3.4e38), the imported graph's interval is [-inf, -1.8e308]",
    526: "MaxPool ceil_mode=1, asymmetric pads [0,0,1,2]: the imported output has 8 values, onnxruntime's 2",
    784: "AveragePool ceil_mode=1, count_include_pad=1, pads [2,1,2,0]: onnxruntime's 0.0777 lies outside the "
         "imported interval [0.05180, 0.05180] (a different divisor for the clipped last window)",
}


@pytest.mark.parametrize("seed", sorted(KNOWN))
def test_known_pooling_findings(seed):
    outcome, _, ops = fuzz_one(NumpySource(seed))
    assert outcome.status in ("imported", "refused", "invalid"), (KNOWN[seed], outcome, ops)
