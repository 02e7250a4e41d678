"""The imported graph must be the model the runtime runs: nothing random is folded, nothing cast is
dropped, no attribute is ignored, no traced branch stands for both, and a self-check against the model's
own runtime catches what slips through. Each test fails on an importer that is silently unfaithful."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import certify
from certify.engine import sound_interval_bounds
from certify.engine.fp import OverflowRisk
from certify.errors import ModelError, UnsupportedOpError
from certify.models import from_module, load_model
from certify.onnx_import import _Importer
from certify.results import Verdict
from certify.selfcheck import check_import
from certify.sets import Box
from certify.vnnlib import read_vnnlib

from conftest import EXAMPLES

N = helper.make_node
NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}


def _init(name, array, elem=TensorProto.FLOAT):
    return numpy_helper.from_array(np.asarray(array, dtype=NP[elem]), name)


def _save(tmp_path, nodes, inits, shape, *, elem=TensorProto.FLOAT, out_elem=None, opset=17, name="m"):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", out_elem or elem, None)], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(m, path)
    return path


def _prop(tmp_path, lo, hi, unsafe_le):
    """x_0 in [lo, hi]; unsafe when y_0 <= unsafe_le."""
    path = tmp_path / "p.vnnlib"
    path.write_text(f"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 {lo}))\n"
                    f"(assert (<= X_0 {hi}))\n(assert (<= Y_0 {unsafe_le}))\n")
    return read_vnnlib(path)


def _refused(path, *words):
    with pytest.raises(ModelError) as info:
        load_model(path)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg
    return msg


# --- 1. nondeterministic ops ---------------------------------------------------------------------
RANDOM = {
    "RandomUniform": ([N("RandomUniform", [], ["r"], name="draw", shape=[1, 4])], []),
    "RandomNormal": ([N("RandomNormal", [], ["r"], name="draw", shape=[1, 4])], []),
    "RandomUniformLike": ([N("RandomUniformLike", ["c"], ["r"], name="draw")], [_init("c", np.zeros((1, 4)))]),
    "RandomNormalLike": ([N("RandomNormalLike", ["c"], ["r"], name="draw")], [_init("c", np.zeros((1, 4)))]),
    "Bernoulli": ([N("Bernoulli", ["c"], ["r"], name="draw")], [_init("c", np.full((1, 4), 0.5))]),
    "Multinomial": ([N("Multinomial", ["c"], ["i"], name="draw", sample_size=4),
                     N("Cast", ["i"], ["r"], to=TensorProto.FLOAT)], [_init("c", np.zeros((1, 3)))]),
}


@pytest.mark.parametrize("op", sorted(RANDOM))
def test_random_ops_with_constant_inputs_are_refused_not_folded(op, tmp_path):
    nodes, inits = RANDOM[op]
    path = _save(tmp_path, [*nodes, N("Add", ["x", "r"], ["y"])], inits, [1, 4])
    _refused(path, "draw", op, "nondeterministic")


def test_random_like_of_data_is_refused_as_nondeterministic(tmp_path):
    path = _save(tmp_path, [N("RandomNormalLike", ["x"], ["r"], name="noise"), N("Add", ["x", "r"], ["y"])], [], [1, 4])
    _refused(path, "noise", "RandomNormalLike", "nondeterministic")


# --- 2. Dropout ----------------------------------------------------------------------------------
def _bool(name, v):
    return numpy_helper.from_array(np.array(v, dtype=bool), name)


def test_dropout_in_training_mode_is_refused(tmp_path):
    inits = [_init("ratio", 0.5), _bool("train", True)]
    path = _save(tmp_path, [N("Dropout", ["x", "ratio", "train"], ["y"], name="drop")], inits, [1, 4])
    _refused(path, "training-mode Dropout is random", "drop")
    # all-constant inputs (folded by the reference evaluator): refused too, not one mask baked in
    path = _save(tmp_path, [N("Dropout", ["c", "ratio", "train"], ["d"], name="cdrop"), N("Add", ["x", "d"], ["y"])],
                 [*inits, _init("c", np.ones((1, 4)))], [1, 4], name="c")
    _refused(path, "training-mode Dropout is random", "cdrop")


def test_dropout_with_a_data_dependent_training_mode_is_refused(tmp_path):
    # ill-typed on purpose (the importer does not type-check): training_mode is the data itself
    path = _save(tmp_path, [N("Dropout", ["x", "ratio", "x"], ["y"], name="drop")], [_init("ratio", 0.5)], [1, 4])
    _refused(path, "drop", "not a constant", "training-mode Dropout is random")


def test_dropout_inference_is_identity_and_a_consumed_mask_is_refused(tmp_path):
    for i, extra in enumerate(([], ["ratio"], ["ratio", "train"])):
        path = _save(tmp_path, [N("Dropout", ["x", *extra], ["y"], seed=3)], [_init("ratio", 0.3), _bool("train", False)],
                     [1, 4], name=f"d{i}")
        model = load_model(path)
        assert [n.op for n in model.graph.nodes] == ["identity"]
    path = _save(tmp_path, [N("Dropout", ["x"], ["d", "mask"], name="drop"), N("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
                            N("Mul", ["d", "m"], ["y"])], [], [1, 4], name="mask")
    _refused(path, "mask", "drop")


# --- 3. Cast ---------------------------------------------------------------------------------------
def _float16_cast_model(tmp_path, fp16_op: bool = False):
    """y = float32(fp16(x + 2048)) - 2048. Without the cast y = x, in [0.9, 1.1]; with it, fp16 has spacing
    2 at 2048: x + 2048 rounds to 2048 for x < 1 (and at the tie x = 1), so y = 0.

    ``fp16_op``: the subtraction in float16 instead. onnxruntime (CPU) has no float16 Sub: it computes it
    in float32 and removes the Cast pair, so that model does *not* round; the graph must cover both."""
    if fp16_op:
        nodes = [N("Add", ["x", "big"], ["h"]), N("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16, name="narrow"),
                 N("Sub", ["h16", "big16"], ["d16"]), N("Cast", ["d16"], ["y"], to=TensorProto.FLOAT, name="widen")]
    else:
        nodes = [N("Add", ["x", "big"], ["h"]), N("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16, name="narrow"),
                 N("Cast", ["h16"], ["h32"], to=TensorProto.FLOAT, name="widen"), N("Sub", ["h32", "big"], ["y"])]
    return _save(tmp_path, nodes, [_init("big", [2048.0]), _init("big16", [2048.0], TensorProto.FLOAT16)], [1, 1],
                 name=f"cast{int(fp16_op)}")


def test_cast_to_float16_is_rounding_not_identity(tmp_path):
    model = load_model(_float16_cast_model(tmp_path))
    ops = [n.op for n in model.graph.nodes]
    assert ops == ["affine", "round", "identity", "affine"], ops
    assert not any("runtime_dtype" in n.params for n in model.graph.nodes[2:])  # back in float32
    # the runtime itself violates the property at x = 1 (the tie rounds to even: 2048) and below
    np.testing.assert_array_equal(model.reference(np.array([[1.0], [0.95]]))[:, 0], [0.0, 0.0])
    prop = _prop(tmp_path, 0.9, 1.1, 0.5)
    for method in ("ibp", "crown", "alpha-crown"):
        r = certify.verify(model, prop, method=method, attack=False)
        assert r.verdict is not Verdict.PROVED, (method, r)
        assert "backend_error" not in (r.reason or ""), (method, r.reason)
    # the exact encodings refuse the op by name
    from certify.pwl import unsupported_reason
    assert "'round'" in unsupported_reason(model.graph)
    # graph.forward rounds like the runtime
    x = torch.tensor([[0.95], [1.0], [1.04]], dtype=torch.float64)
    np.testing.assert_array_equal(model.graph.forward(x).numpy(), model.reference(x.numpy()))


def test_float16_ops_after_a_cast_compute_in_float16_or_unrounded(tmp_path):
    model = load_model(_float16_cast_model(tmp_path, fp16_op=True))
    assert [n.op for n in model.graph.nodes] == ["affine", "round", "affine", "identity"]
    assert model.graph.nodes[2].params["runtime_dtype"] == "float16"  # Sub(float16) errs as float16 at most
    assert "runtime_dtype" not in model.graph.nodes[0].params
    x = np.array([[0.95], [1.0], [1.05]])
    y = model.reference(x)  # onnxruntime skips the rounding here (float32 Sub, the Cast pair removed)
    out = sound_interval_bounds(model.graph, Box(torch.as_tensor(x), torch.as_tensor(x)))
    assert bool((torch.as_tensor(y) >= out.lower).all() and (torch.as_tensor(y) <= out.upper).all())
    assert check_import(model, _prop(tmp_path, 0.9, 1.1, 0.5)) > 0
    r = certify.verify(model, _prop(tmp_path, 0.9, 1.1, 0.5), method="crown", attack=False)
    assert r.verdict is not Verdict.PROVED  # a rounding runtime (the ONNX semantics) violates it


def test_cast_types(tmp_path):
    # float16 input widened to float32: an identity, the ops after it compute in float32
    path = _save(tmp_path, [N("Cast", ["x"], ["w"], to=TensorProto.FLOAT), N("Relu", ["w"], ["y"])], [], [1, 3],
                 elem=TensorProto.FLOAT16, out_elem=TensorProto.FLOAT, name="wide")
    g = load_model(path).graph
    assert g.meta["runtime_dtype"] == "float16" and [n.op for n in g.nodes] == ["identity", "relu"]
    assert g.nodes[1].params["runtime_dtype"] == "float32"
    # float64 to float16: rounded (possibly twice, through float32)
    path = _save(tmp_path, [N("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)], [], [1, 3], elem=TensorProto.DOUBLE,
                 out_elem=TensorProto.FLOAT16, name="d16")
    (node,) = load_model(path).graph.nodes
    assert node.op == "round" and node.params["dtype"] == "float16" and node.params["via"] == "float32"
    # integers stay refused
    path = _save(tmp_path, [N("Cast", ["x"], ["i"], to=TensorProto.INT32, name="toint"),
                            N("Cast", ["i"], ["y"], to=TensorProto.FLOAT)], [], [1, 3], name="int")
    _refused(path, "toint", "INT32")


def test_cast_that_may_overflow_float16_is_inconclusive(tmp_path):
    path = _save(tmp_path, [N("Mul", ["x", "k"], ["h"]), N("Cast", ["h"], ["y"], to=TensorProto.FLOAT16)],
                 [_init("k", [40000.0])], [1, 1], out_elem=TensorProto.FLOAT16)
    model = load_model(path)
    with pytest.raises(OverflowRisk):
        sound_interval_bounds(model.graph, Box(torch.tensor([[1.0]]), torch.tensor([[2.0]])))
    r = certify.verify(model, _prop(tmp_path, 1.0, 2.0, -1.0), method="crown", attack=False)
    assert r.verdict is Verdict.UNKNOWN and "inconclusive" in r.reason


# --- 4. attributes ---------------------------------------------------------------------------------
def _bn(**attrs):
    return N("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn", **attrs)


BN_INITS = [_init("g", [1.0, 2.0]), _init("b", [0.0, 1.0]), _init("m", [0.5, 0.0]), _init("v", [1.0, 4.0])]
ATTR_CASES = {
    "unknown": ([N("Relu", ["x"], ["y"], name="act", fancy=1)], [], [1, 4], 17, "fancy"),
    "gemm_transA": ([N("Gemm", ["x", "w"], ["y"], name="fc", transA=1)], [_init("w", np.ones((1, 3)))], [1, 1], 17, "transA"),
    "bn_training": ([_bn(training_mode=1)], BN_INITS, [1, 2, 3, 3], 15, "training_mode"),
    "bn_spatial0": ([_bn(spatial=0)], BN_INITS, [1, 2, 3, 3], 7, "spatial"),
    "maxpool_storage": ([N("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], storage_order=1)], [], [1, 1, 4, 4],
                        17, "storage_order"),
    "avgpool_dilated": ([N("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], dilations=[2, 2])], [],
                        [1, 1, 6, 6], 19, "dilations"),
    "conv_kernel_shape": ([N("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])], [_init("w", np.ones((1, 1, 2, 2)))],
                          [1, 1, 5, 5], 17, "kernel_shape"),
    "add_legacy_broadcast": ([N("Add", ["x", "c"], ["y"], name="plus", broadcast=1, axis=1)], [_init("c", [1.0, 2.0])],
                             [1, 2, 3], 6, "axis"),
}


@pytest.mark.parametrize("case", sorted(ATTR_CASES))
def test_attributes_not_understood_are_refused_by_name(case, tmp_path):
    nodes, inits, shape, opset, attr = ATTR_CASES[case]
    path = _save(tmp_path, nodes, inits, shape, opset=opset)
    msg = _refused(path, nodes[0].name, nodes[0].op_type, attr)
    assert "\n" not in msg


def test_attributes_without_effect_at_inference_are_accepted(tmp_path):
    path = _save(tmp_path, [_bn(momentum=0.7, epsilon=1e-3, training_mode=0)], BN_INITS, [1, 2, 3, 3], opset=15)
    assert [n.op for n in load_model(path).graph.nodes] == ["affine"]


# --- 5. the self-check ------------------------------------------------------------------------------
def test_self_check_catches_a_dropped_node(monkeypatch):
    prop = read_vnnlib(EXAMPLES / "digits" / "digit0_label6_eps0.02.vnnlib")
    model = load_model(EXAMPLES / "digits" / "digits_mlp.onnx")
    assert check_import(model, prop) > 0 and check_import(model, prop) == 0  # checked once, then cached
    monkeypatch.setitem(_Importer.HANDLERS, "Relu", _Importer._identity)  # an importer that drops ReLUs
    broken = load_model(EXAMPLES / "digits" / "digits_mlp.onnx")
    with pytest.raises(ModelError) as info:
        certify.verify(broken, prop, method="ibp", attack=False)
    msg = str(info.value)
    assert "digits_mlp.onnx" in msg and "does not reproduce onnxruntime" in msg and "output" in msg and "\n" not in msg


def test_self_check_passes_the_float16_cast_model(tmp_path):
    model = load_model(_float16_cast_model(tmp_path))
    assert check_import(model, _prop(tmp_path, 0.9, 1.1, 0.5)) > 0
    # a Cast imported as an identity (the old importer) is caught at the check points
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as mp:
        mp.setitem(_Importer.HANDLERS, "Cast", _Importer._identity)
        old = load_model(_float16_cast_model(tmp_path))
        with pytest.raises(ModelError, match="does not reproduce onnxruntime"):
            check_import(old, _prop(tmp_path, 0.9, 1.1, 0.5))


# --- 6. PyTorch data-dependent control flow ----------------------------------------------------------
class Branchy(torch.nn.Module):
    """y = x0 + x1 + 10 where x0 + x1 <= 0 (the branch a trace at zeros keeps), y = -10 elsewhere."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        with torch.no_grad():
            self.a.weight.zero_(), self.a.bias.fill_(-10.0)
            self.b.weight.fill_(1.0), self.b.bias.fill_(10.0)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


class TraceOnly(torch.nn.Module):
    """Traces to y = x, runs y = -x: no tracer warning, the self-check must see it."""

    def forward(self, x):
        return x * 1.0 if torch.jit.is_tracing() else -x


def test_pytorch_data_dependent_branch_is_refused(tmp_path):
    """Traced at zeros, the graph is the ``b`` branch alone, which satisfies y > 0 on [-1, 1]^2 (it used to
    be proved); the module itself returns -10 wherever x0 + x1 > 0."""
    net = Branchy()
    with torch.no_grad():
        assert float(net(torch.tensor([[0.5, 0.5]]))) == -10.0
    path = tmp_path / "branchy.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
                    "(assert (<= Y_0 0))\n")
    prop = read_vnnlib(path)
    with pytest.raises(ModelError) as info:
        model = from_module(net, (2,))
        certify.verify(model, prop, method="crown", attack=False)
    assert "data-dependent control flow in Branchy.forward" in str(info.value)
    assert "would keep one branch" in str(info.value)


def test_pytorch_trace_that_differs_from_eager_is_caught_by_the_self_check(tmp_path):
    model = from_module(TraceOnly(), (1,))
    with pytest.raises(ModelError, match="does not reproduce torch eager"):
        certify.verify(model, _prop(tmp_path, 0.5, 1.0, 0.0), method="ibp", attack=False)


# --- 7. the runtime's precision ------------------------------------------------------------------------
def test_float16_onnx_model_is_fed_float16(tmp_path):
    path = _save(tmp_path, [N("Mul", ["x", "k"], ["y"])], [_init("k", [3.0], TensorProto.FLOAT16)], [1, 1],
                 elem=TensorProto.FLOAT16)
    model = load_model(path)
    assert model.graph.runtime_dtype == torch.float16
    x = np.array([[1.0001], [2049.0]])
    np.testing.assert_array_equal(model.reference(x)[:, 0], (x.astype(np.float16) * np.float16(3)).astype(np.float64)[:, 0])


def test_pytorch_double_module_runs_and_is_covered_in_double():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    model = from_module(net, (3,))
    assert model.graph.runtime_dtype == torch.float64
    x = np.random.default_rng(0).random((4, 3)) + 1e-9  # not representable in float32
    with torch.no_grad():
        np.testing.assert_array_equal(model.reference(x), net(torch.as_tensor(x)).numpy())
