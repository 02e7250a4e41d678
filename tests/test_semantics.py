"""The declared semantics (``engine.fp``): a *proved* answer covers the exact network and its runtime's
floating-point evaluation. Each case below was answered wrongly before runtime rounding, subnormals and
solver tolerances were covered; the truth of each is decided by onnxruntime, never by our own code."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import certify
from certify.results import Verdict

SOUND_BACKENDS = ("ibp", "crown", "alpha-crown", "bab", "milp", "smt", "auto")


def _model(path, nodes, inits, dtype=TensorProto.FLOAT, n_in=1, n_out=1):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [1, n_in])],
                          [helper.make_tensor_value_info("y", dtype, [1, n_out])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 8
    onnx.save(m, path)
    return str(path)


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _vnnlib(path, lo, hi, unsafe):
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
    text += f"(assert (>= X_0 {lo}))\n(assert (<= X_0 {hi}))\n(assert {unsafe})\n"
    path.write_text(text)
    return str(path)


def _ort_max(model_path, lo, hi, dtype=np.float32, n=20001):
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    xs = np.linspace(lo, hi, n).astype(dtype)
    xs = np.concatenate([xs, np.array([lo, hi], dtype=dtype), np.nextafter(np.array([hi], dtype=dtype), dtype(0))])
    ys = np.array([sess.run(None, {"x": x.reshape(1, 1)})[0].item() for x in xs[:: max(1, len(xs) // 2000)]])
    return float(ys.max())


def _answers(model_path, spec_path, methods=SOUND_BACKENDS, semantics="runtime"):
    model = certify.load_model(model_path)
    prop = certify.read_vnnlib(spec_path)
    out = {}
    for m in methods:
        # no attack first: the bounds themselves must refuse to prove (auto keeps its attack)
        r = certify.verify(model, prop, method=m, timeout=10, semantics=semantics, attack=m == "auto")
        out[m] = r
    return out


def _assert_never_proved(results):
    for m, r in results.items():
        assert r.verdict is not Verdict.PROVED, f"{m} proved a property the runtime violates"
        if r.verdict is Verdict.FALSIFIED:  # and every falsification replays (Result guarantees it)
            assert r.counterexample is not None


@pytest.fixture
def cancel24(tmp_path):
    """``y = ((x + 2^24) - 2^24) - x``: exactly 0, but onnxruntime returns ~1 at x = 1.0000001."""
    c = 2.0**24
    path = _model(tmp_path / "cancel.onnx", [
        helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Sub", ["a", "c"], ["b"]),
        helper.make_node("Sub", ["b", "x"], ["y"])], [_const("c", [[c]])])
    return path


def test_runtime_rounding_is_covered_by_every_sound_backend(cancel24, tmp_path):
    hi = "1.0000001"
    assert _ort_max(cancel24, 0.0, np.float32(1.0000001)) > 0.5  # the truth: the runtime violates y < 0.5
    spec = _vnnlib(tmp_path / "p.vnnlib", "0.0", hi, "(>= Y_0 0.5)")
    results = _answers(cancel24, spec)
    _assert_never_proved(results)
    # --semantics real: the exact network is 0 everywhere, and that is provable
    real = _answers(cancel24, spec, methods=("crown", "milp"), semantics="real")
    assert real["crown"].verdict is Verdict.PROVED  # backward substitution cancels x exactly
    assert real["milp"].verdict is not Verdict.FALSIFIED  # HiGHS, at 2^24 scale, may stay undecided
    assert all(r.semantics == "real" for r in real.values()) and results["crown"].semantics == "runtime"


def test_batchnorm_cancellation_against_large_statistics(tmp_path):
    """mean 8e6 and beta ~ mean * scale: the exact output is ``(x - mean) s + beta`` in [1.27, 2.48] on
    [0.3, 0.7], but float32 cannot hold ``mean * s`` (spacing 2) and onnxruntime lands ~1.6 higher."""
    var, mean = np.float32(0.11), np.float32(8e6)
    s = 1 / np.sqrt(np.float64(var))
    beta = np.float32(np.float64(mean) * s)
    inits = [_const("s", [1.0]), _const("b", [beta]), _const("m", [mean]), _const("v", [var]),
             _const("ax", [2, 3], np.int64)]
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["x4"]),
             helper.make_node("BatchNormalization", ["x4", "s", "b", "m", "v"], ["bn"], epsilon=0.0),
             helper.make_node("Flatten", ["bn"], ["y"])]
    path = _model(tmp_path / "bn.onnx", nodes, inits)
    exact_max = (0.7 - float(mean)) * s + float(beta)
    worst = _ort_max(path, 0.3, 0.7)
    assert worst > exact_max + 0.5  # the truth: the runtime reaches far beyond the exact network
    spec = _vnnlib(tmp_path / "p.vnnlib", "0.3", "0.7", f"(>= Y_0 {worst - 0.01})")
    results = _answers(path, spec)
    _assert_never_proved(results)
    # the exact network never gets there (the attack would find the runtime's point: it replays on it)
    real = certify.verify(certify.load_model(path), certify.read_vnnlib(spec), method="crown", attack=False,
                          semantics="real")
    assert real.verdict is Verdict.PROVED


def test_subnormal_weight_in_a_float64_model(tmp_path):
    """``y = 1e-310 x`` on ``[0, 1e300]`` reaches 1e-10: a flushed weight would make it 0."""
    path = _model(tmp_path / "sub.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [_const("w", [[1e-310]], np.float64)], dtype=TensorProto.DOUBLE)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.array([[1e300]])})[0].item() >= 1e-11  # the truth
    spec = _vnnlib(tmp_path / "p.vnnlib", "0.0", "1e300", "(>= Y_0 1e-11)")
    results = _answers(path, spec, methods=("ibp", "crown", "alpha-crown", "smt", "auto"))
    _assert_never_proved(results)
    assert results["auto"].verdict is Verdict.FALSIFIED


def test_milp_does_not_trust_coefficients_the_solver_drops(tmp_path):
    """``1e4 relu(1e-10 x - 0.19999) < 0.05`` on ``[1e9, 2e9]`` is false at 2e9 (HiGHS drops 1e-10)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Add", ["a", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    path = _model(tmp_path / "tiny.onnx", nodes, [_const("w", [[1e-10]]), _const("b", [-0.19999]),
                                                   _const("w2", [[1e4]])])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.array([[2e9]], np.float32)})[0].item() >= 0.05  # the truth
    spec = _vnnlib(tmp_path / "p.vnnlib", "1e9", "2e9", "(>= Y_0 0.05)")
    results = _answers(path, spec, methods=("milp", "smt", "crown"))
    _assert_never_proved(results)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_parameter_free_graphs_get_answers_not_crashes(tmp_path, dtype):
    """``y = relu(x) - x`` has no floating-point parameter: alpha-crown raised KeyError and bab a dtype
    mismatch. Both properties are decided by the closed form ``y = max(-x, 0)`` on [-1, 1]."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["r", "x"], ["y"])]
    path = _model(tmp_path / "free.onnx", nodes, [], dtype=dtype)
    holds = _vnnlib(tmp_path / "holds.vnnlib", "-1", "1", "(>= Y_0 1.5)")
    fails = _vnnlib(tmp_path / "fails.vnnlib", "-1", "1", "(>= Y_0 0.75)")
    for m, r in _answers(path, holds, methods=("ibp", "crown", "alpha-crown", "bab", "milp", "smt")).items():
        assert "backend_error" not in r.reason, (m, r.reason)
        assert r.verdict is not Verdict.FALSIFIED
        if m != "ibp":  # interval arithmetic loses the correlation of relu(x) and x
            assert r.verdict is Verdict.PROVED, (m, r.reason)
    model = certify.load_model(path)
    for m in ("alpha-crown", "bab", "milp", "auto"):
        r = certify.verify(model, certify.read_vnnlib(fails), method=m, timeout=10)
        assert "backend_error" not in r.reason and r.verdict is not Verdict.PROVED, (m, r.reason)


def test_cli_semantics_flag_is_recorded(cancel24, tmp_path):
    import json
    import subprocess
    import sys

    spec = _vnnlib(tmp_path / "p.vnnlib", "0.0", "1.0000001", "(>= Y_0 0.5)")
    cmd = [sys.executable, "-m", "certify.cli", "verify", cancel24, spec, "--method", "crown", "--no-attack", "--json"]
    runtime = subprocess.run(cmd, capture_output=True, text=True)
    real = subprocess.run(cmd + ["--semantics", "real"], capture_output=True, text=True)
    rows_rt = [json.loads(line) for line in runtime.stdout.splitlines()]
    rows_real = [json.loads(line) for line in real.stdout.splitlines()]
    assert rows_rt[0]["semantics"] == "runtime" and rows_rt[0]["verdict"] == "unknown" and runtime.returncode == 3
    assert rows_real[0]["semantics"] == "real" and rows_real[0]["verdict"] == "proved" and real.returncode == 0
    assert rows_real[-1]["summary"]["semantics"] == "real"
    bad = subprocess.run(cmd + ["--semantics", "float"], capture_output=True, text=True)
    assert bad.returncode == 2


def test_subnormal_float32_weight_read_as_zero_by_a_flushing_runtime(tmp_path):
    """``y = -1e-40 x`` on [1e30, 2e30]: the exact network is about -1e-10, but a runtime that flushes
    subnormal operands (DAZ) reads the weight as 0 and returns y = 0, inside the unsafe ``y >= 0``."""
    path = _model(tmp_path / "daz.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [_const("w", [[-1e-40]])])
    spec = _vnnlib(tmp_path / "p.vnnlib", "1e30", "2e30", "(>= Y_0 0)")
    _assert_never_proved(_answers(path, spec, methods=("ibp", "crown", "alpha-crown", "milp")))
    real = certify.verify(certify.load_model(path), certify.read_vnnlib(spec), method="crown", attack=False,
                          semantics="real")
    assert real.verdict is Verdict.PROVED  # the exact network stays below 0


def test_output_coefficient_that_rounds_in_the_subnormal_range(tmp_path):
    """``c y <= d`` with ``c = (2024.6) 2^-1074``: float64 rounds c *up* by 0.4 of the smallest subnormal, an
    absolute (not relative) error. At ``y = x = 1e300`` (the only input) ``c y = d`` exactly, so the unsafe
    row is reached; with c's float the margin looks like +2e-24, far above the relative terms (~1e-36)."""
    from fractions import Fraction

    from certify.vnnlib import _num

    x = Fraction(1e300)
    c = Fraction(20246, 10) * Fraction(1, 2**1074)
    d = c * x
    path = _model(tmp_path / "id.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [_const("w", [[1.0]], np.float64)], dtype=TensorProto.DOUBLE)
    assert float(c) > c  # the representation error lies on the unsafe side
    spec = _vnnlib(tmp_path / "p.vnnlib", _num(x), _num(x), f"(<= (* {_num(c)} Y_0) {_num(d)})")
    results = _answers(path, spec, methods=("ibp", "crown", "alpha-crown", "milp", "smt", "auto"))
    _assert_never_proved(results)
