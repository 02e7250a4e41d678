"""ONNX import against onnxruntime (the file's own semantics): the shared benchmark models on
random inputs from every property's box, and one small synthetic model per supported operator
pattern; bad files give one clear error."""
from __future__ import annotations

import csv
from functools import lru_cache

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from certify.engine import sound_interval_bounds
from certify.errors import ModelError, UnsupportedOpError
from certify.models import load_model
from certify.sets import Box
from certify.vnnlib import read_vnnlib

from conftest import EXAMPLES, shared_dir

RNG = np.random.default_rng(0)


@lru_cache(maxsize=None)
def _model(path: str):
    return load_model(path)


def _agree_on_box(model, box: Box, n: int = 100):
    x = box.sample(n, generator=torch.Generator().manual_seed(0))[:, 0].reshape(n, *model.input_shape)
    x32 = x.float().double()  # the reference runs in float32: compare on the same points
    ours = model.graph.forward(x32).detach().numpy().reshape(n, -1)
    ref = model.reference(x32.numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bench", ["acasxu", "mnist_fc"])
def test_shared_models_agree_with_onnxruntime_on_every_property_box(bench):
    root = shared_dir(bench)
    with open(root / "instances.csv") as f:
        rows = [r for r in csv.reader(f) if r]
    assert len(rows) == {"acasxu": 186, "mnist_fc": 90}[bench]
    specs = {}
    for onnx_path, vnnlib_path, _ in rows:
        model = _model(str(root / onnx_path.strip()))
        if vnnlib_path not in specs:
            specs[vnnlib_path] = read_vnnlib(root / vnnlib_path.strip())
        for spec in specs[vnnlib_path].specs:
            _agree_on_box(model, spec.input.bounds().reshape(model.input_shape))


# --- synthetic one-op models ---------------------------------------------------------------------
def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _model_proto(nodes, inits, shape, out="y", opset=17):
    y_info = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    y_info.type.tensor_type.ClearField("shape")
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [y_info], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _r(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _cases():
    N = helper.make_node
    yield "conv_asym_pads_dilation_groups", _model_proto(
        [N("Conv", ["x", "w", "b"], ["c"], strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2], group=2),
         N("Relu", ["c"], ["y"])], [_init("w", _r(4, 1, 3, 3)), _init("b", _r(4))], [1, 2, 7, 7])
    yield "conv_same_upper", _model_proto(
        [N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], [_init("w", _r(3, 2, 3, 3))], [1, 2, 6, 5])
    yield "batchnorm_relu", _model_proto(
        [N("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], epsilon=1e-3), N("Relu", ["n"], ["y"])],
        [_init("g", _r(3)), _init("b", _r(3)), _init("m", _r(3)), _init("v", np.abs(_r(3)) + 0.1)], [1, 3, 4, 4])
    yield "maxpool_asym_ceil", _model_proto(
        [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1)], [], [1, 2, 7, 6])
    yield "avgpool_exclude_pad", _model_proto(
        [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1], count_include_pad=0)],
        [], [1, 2, 6, 6])
    yield "avgpool_include_pad_global", _model_proto(
        [N("AveragePool", ["x"], ["a"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
         N("GlobalAveragePool", ["a"], ["y"])], [], [1, 2, 5, 5])
    yield "sigmoid_tanh_leaky", _model_proto(
        [N("Sigmoid", ["x"], ["s"]), N("Tanh", ["s"], ["t"]), N("LeakyRelu", ["t"], ["y"], alpha=0.2)], [], [1, 6])
    yield "const_arith_broadcast", _model_proto(
        [N("Mul", ["x", "c1"], ["a"]), N("Div", ["a", "c2"], ["b"]), N("Sub", ["c3", "b"], ["c"]),
         N("Add", ["c", "c4"], ["d"]), N("Neg", ["d"], ["y"])],
        [_init("c1", _r(3, 1, 1)), _init("c2", np.abs(_r(1, 3, 1, 1)) + 0.5), _init("c3", _r(4)), _init("c4", 0.5)],
        [1, 3, 2, 4])
    yield "concat_branches_transpose_flatten", _model_proto(
        [N("Relu", ["x"], ["a"]), N("Sigmoid", ["x"], ["b"]), N("Concat", ["a", "b"], ["c"], axis=1),
         N("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]), N("Flatten", ["t"], ["y"], axis=1)], [], [1, 2, 3, 3])
    yield "reshape_via_shape_chain", _model_proto(
        [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i0"], ["n"], axis=0), N("Unsqueeze", ["n", "ax"], ["nu"]),
         N("Concat", ["nu", "m1"], ["shape"], axis=0), N("Reshape", ["x", "shape"], ["r"]),
         N("MatMul", ["r", "w"], ["mm"]), N("Add", ["mm", "b"], ["y"])],
        [numpy_helper.from_array(np.array(0, dtype=np.int64), "i0"), numpy_helper.from_array(np.array([0], dtype=np.int64), "ax"),
         numpy_helper.from_array(np.array([-1], dtype=np.int64), "m1"), _init("w", _r(12, 5)), _init("b", _r(5))],
        [1, 3, 2, 2])
    yield "gemm_transb_alpha_beta", _model_proto(
        [N("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)], [_init("w", _r(4, 6)), _init("b", _r(4))], [1, 6])
    yield "residual_add_sub", _model_proto(
        [N("MatMul", ["x", "w1"], ["h"]), N("Relu", ["h"], ["r"]), N("Add", ["r", "x"], ["s"]),
         N("Sub", ["s", "h"], ["y"])], [_init("w1", _r(5, 5))], [1, 5])
    yield "squeeze_unsqueeze", _model_proto(
        [N("Unsqueeze", ["x", "ax"], ["u"]), N("Relu", ["u"], ["r"]), N("Squeeze", ["r", "ax"], ["y"])],
        [numpy_helper.from_array(np.array([2], dtype=np.int64), "ax")], [1, 4])


CASES = dict(_cases())


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_operator_pattern_agrees_with_onnxruntime_and_ibp_contains_it(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    onnx.save(CASES[name], path)
    model = load_model(path)
    lo = torch.rand(1, *model.input_shape, dtype=torch.float64) * 4 - 2
    box = Box(lo, lo + torch.rand_like(lo))
    _agree_on_box(model, box)
    # IBP soundness with respect to the file's own runtime, 10,000 points including corners
    x = torch.cat([box.sample(5000)[:, 0], box.sample(5000, corners=True)[:, 0]])
    x = x.float().double()
    y = torch.as_tensor(model.reference(x.numpy()))
    out = sound_interval_bounds(model.graph, box)
    tol = 1e-5 * (1 + y.abs())
    assert bool((y >= out.lower.reshape(1, -1) - tol).all()) and bool((y <= out.upper.reshape(1, -1) + tol).all())


def test_unsupported_operators_are_all_listed(tmp_path):
    N = helper.make_node
    m = _model_proto([N("Softmax", ["x"], ["a"], name="soft"), N("Erf", ["a"], ["b"], name="erf1"),
                      N("Relu", ["b"], ["c"]), N("Mul", ["c", "c"], ["y"], name="square")], [], [1, 4])
    path = tmp_path / "bad.onnx"
    onnx.save(m, path)
    with pytest.raises(UnsupportedOpError) as info:
        load_model(path)
    msg = str(info.value)
    assert "Softmax at node 'soft'" in msg and str(path) in msg
    # Erf depends on the unsupported Softmax output and is unsupported itself: both are named;
    # Relu and Mul(c, c) are supported ops fed by a dropped value and are not reported
    assert [n for n, _ in info.value.ops] == ["soft", "erf1"], info.value.ops


def test_unsupported_independent_operators_are_all_listed(tmp_path):
    N = helper.make_node
    m = _model_proto([N("Relu", ["x"], ["a"]), N("Mul", ["a", "x"], ["b"], name="prod"),
                      N("Erf", ["x"], ["c"], name="erf1"), N("Add", ["b", "c"], ["y"])], [], [1, 4])
    path = tmp_path / "bad2.onnx"
    onnx.save(m, path)
    with pytest.raises(UnsupportedOpError) as info:
        load_model(path)
    names = {n for n, _ in info.value.ops}
    assert names == {"prod", "erf1"}, info.value.ops
    assert "Mul" in str(info.value) and "Erf" in str(info.value)


def test_truncated_and_missing_files(tmp_path):
    data = (EXAMPLES / "digits" / "digits_mlp.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert "cut.onnx" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "absent.onnx")


def test_acasxu_initializers_listed_as_inputs_are_not_inputs():
    root = shared_dir("acasxu")
    model = load_model(root / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    assert model.input_shape == (1, 1, 5) and model.n_outputs == 5
    assert set(model.graph.ops) == {"affine", "linear", "relu", "reshape"}
