"""Model loading: every supported file format, checked against the original model's own runtime
(onnxruntime run here by the test, or the eager PyTorch module the test built), and the errors for
files certify must refuse."""
from __future__ import annotations

import copy
import hashlib
import re
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from certify.errors import CertifyError, ModelError
from certify.models import load_model
from conftest import EXAMPLES

DIGITS = EXAMPLES / "digits"
CNN_SHAPE = (2, 10, 10)

# The architecture lives in a real module file (written under tmp_path) so that ``arch="module:Class"``
# and pickles can import it by name, as they would for a user's own package.
ARCH_SRC = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv(stride 1, pad 1) -> BN -> tanh -> residual conv -> LeakyReLU -> MaxPool
    -> Conv(stride 2, pad 1) -> sigmoid -> AvgPool -> Flatten -> Linear."""

    def __init__(self, n_out: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=1, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.sig = nn.Sigmoid()
        self.avg = nn.AvgPool2d(2, stride=1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(24, n_out)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv1(x)))
        h = self.act(self.conv2(h) + h)
        h = self.pool(h)
        h = self.sig(self.conv3(h))
        h = self.avg(h)
        return self.fc(self.flat(h))
'''


@pytest.fixture
def arch(tmp_path, monkeypatch):
    """(module name, module) of a freshly written architecture module importable by name."""
    import importlib

    name = f"certify_test_arch_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(ARCH_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield name, module
    import sys

    sys.modules.pop(name, None)


def _cnn(module, n_out: int = 5) -> torch.nn.Module:
    """A SmallCNN in eval mode whose BatchNorm has non-trivial running statistics and affine terms."""
    torch.manual_seed(1)
    net = module.SmallCNN(n_out)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.3, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.3, 0.3)
    return net.eval()


def _inputs(n: int = 16) -> torch.Tensor:
    return torch.rand(n, *CNN_SHAPE, generator=torch.Generator().manual_seed(7)) * 2 - 1


def _check_against_eager(model, net: torch.nn.Module, kind: str) -> None:
    """The imported graph and the reference runtime both reproduce the eager module (float32), and the
    graph reproduces it computed in float64 (the real-arithmetic network) much more tightly."""
    assert model.kind == kind
    assert model.input_shape == CNN_SHAPE
    assert model.n_outputs == 5
    x = _inputs()
    with torch.no_grad():
        eager32 = net(x).double().numpy()
        eager64 = copy.deepcopy(net).double()(x.double()).numpy()
    assert np.abs(eager32).max() > 0.05  # a non-degenerate network output
    with torch.no_grad():
        graph_out = model.graph.forward(x.double()).detach().double().numpy().reshape(len(x), -1)
    np.testing.assert_allclose(graph_out, eager32, rtol=0, atol=1e-5)
    # float32 rounding only (the exporter folds BatchNorm into the convolution in float32)
    np.testing.assert_allclose(graph_out, eager64, rtol=0, atol=1e-6)
    ref = model.reference(x.numpy())
    assert ref.shape == (len(x), 5) and ref.dtype == np.float64
    np.testing.assert_allclose(ref, eager32, rtol=0, atol=1e-5)
    # a single input works too (the reference loops or batches as the format needs)
    np.testing.assert_allclose(model.reference(x[:1].numpy()), eager32[:1], rtol=0, atol=1e-5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


def test_onnx_example_graph_matches_onnxruntime():
    path = DIGITS / "digits_mlp.onnx"
    model = load_model(path)
    assert model.kind == "onnx" and model.reference_name == "onnxruntime"
    assert model.input_shape == (64,) and model.n_outputs == 10
    assert model.sha256 == _sha(path)

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((64, 64)).astype(np.float32)  # inputs in [0, 1]
    expected = np.concatenate([sess.run(None, {name: xi[None]})[0] for xi in x]).astype(np.float64)
    assert expected.shape == (64, 10) and np.ptp(expected) > 1.0

    with torch.no_grad():
        graph_out = model.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()
    # logits reach |40|: float32 rounding of the file's runtime is ~1e-7 relative
    np.testing.assert_allclose(graph_out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.reference(x), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# PyTorch formats
# --------------------------------------------------------------------------------------------


def test_torchscript_script(tmp_path, arch):
    _, mod = arch
    net = _cnn(mod)
    path = tmp_path / "cnn_script.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    model = load_model(path, input_shape=CNN_SHAPE)
    _check_against_eager(model, net, "torchscript")
    assert model.reference_name == "torch eager"
    assert model.sha256 == _sha(path)


def test_torchscript_trace(tmp_path, arch):
    _, mod = arch
    net = _cnn(mod)
    path = tmp_path / "cnn_trace.ts"
    torch.jit.save(torch.jit.trace(net, _inputs(1)), str(path))
    _check_against_eager(load_model(path, input_shape=CNN_SHAPE), net, "torchscript")


def test_torchscript_without_input_shape_asks_for_it(tmp_path, arch):
    _, mod = arch
    path = tmp_path / "cnn_script.pt"
    torch.jit.save(torch.jit.script(_cnn(mod)), str(path))
    with pytest.raises(ModelError, match="--input-shape"):
        load_model(path)


def test_torchscript_saved_in_training_mode_is_verified_in_eval_mode(tmp_path, arch):
    """A module scripted while in training mode: the graph is imported with inference BatchNorm, so the
    reference that replays counterexamples must run the same (eval) function, not batch statistics."""
    _, mod = arch
    net = _cnn(mod)
    net.train()
    path = tmp_path / "cnn_train_mode.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    net.eval()
    _check_against_eager(load_model(path, input_shape=CNN_SHAPE), net, "torchscript")


def test_torch_export_archive(tmp_path, arch):
    _, mod = arch
    net = _cnn(mod)
    path = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(net, (_inputs(1),)), str(path))
    model = load_model(path)  # the input shape is read from the archive
    _check_against_eager(model, net, "torch.export")


def test_state_dict_with_arch(tmp_path, arch):
    name, mod = arch
    net = _cnn(mod)
    path = tmp_path / "cnn_state.pt"
    torch.save(net.state_dict(), path)
    model = load_model(path, arch=f"{name}:SmallCNN", input_shape=CNN_SHAPE)
    _check_against_eager(model, net, "state_dict")
    assert model.sha256 == _sha(path)


def test_state_dict_with_saved_metadata_and_arch_kwargs(tmp_path, arch):
    """``{'state_dict', 'arch_kwargs', 'input_shape'}``: the kwargs build the right-sized module and the
    saved input shape is used (a user arch still has to be named explicitly)."""
    name, mod = arch
    net = _cnn(mod)
    path = tmp_path / "cnn_meta.pt"
    torch.save({"state_dict": net.state_dict(), "arch": f"{name}:SmallCNN", "arch_kwargs": {"n_out": 5},
                "input_shape": list(CNN_SHAPE)}, path)
    with pytest.raises(ModelError, match="--arch"):  # a non-certify arch is never imported unasked
        load_model(path)
    _check_against_eager(load_model(path, arch=f"{name}:SmallCNN"), net, "state_dict")


def test_bundled_digits_checkpoint_matches_onnx():
    """The example's state dict (arch saved as certify.examples.digits:DigitsMLP) is the same network as
    the example's ONNX file, run in onnxruntime here."""
    model = load_model(DIGITS / "digits_mlp.pt")
    assert model.kind == "state_dict" and model.reference_name == "torch eager"
    assert model.input_shape == (64,) and model.n_outputs == 10
    sess = ort.InferenceSession(str(DIGITS / "digits_mlp.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(1).random((32, 64)).astype(np.float32)
    expected = np.concatenate([sess.run(None, {name: xi[None]})[0] for xi in x]).astype(np.float64)
    np.testing.assert_allclose(model.reference(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(model.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy(),
                                   expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# pickles and errors
# --------------------------------------------------------------------------------------------


def test_pickled_module_refused_unless_allowed(tmp_path, arch):
    _, mod = arch
    net = _cnn(mod)
    path = tmp_path / "cnn_pickle.pt"
    torch.save(net, path)
    with pytest.raises(ModelError) as info:
        load_model(path, input_shape=CNN_SHAPE)
    msg = str(info.value)
    assert "--allow-unsafe-pickle" in msg and str(path) in msg
    assert "\n" not in msg and "\x1b" not in msg  # one clean line (no terminal escape codes)
    _check_against_eager(load_model(path, input_shape=CNN_SHAPE, allow_unsafe_pickle=True), net, "pickle")


def test_pickled_module_that_would_run_code_is_not_executed(tmp_path):
    """The refusal happens before anything in the pickle runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ModelError, match="--allow-unsafe-pickle"):
        load_model(path)
    assert not marker.exists()


def test_state_dict_without_arch(tmp_path, arch):
    _, mod = arch
    path = tmp_path / "cnn_state.pt"
    torch.save(_cnn(mod).state_dict(), path)
    with pytest.raises(ModelError) as info:
        load_model(path, input_shape=CNN_SHAPE)
    assert "--arch" in str(info.value) and str(path) in str(info.value)


def test_state_dict_of_wrong_shape_names_the_architecture(tmp_path, arch):
    name, mod = arch
    path = tmp_path / "cnn_7_outputs.pt"
    torch.save(_cnn(mod, n_out=7).state_dict(), path)
    with pytest.raises(ModelError) as info:
        load_model(path, arch=f"{name}:SmallCNN", input_shape=CNN_SHAPE)
    msg = str(info.value)
    assert f"{name}:SmallCNN" in msg and str(path) in msg
    assert "fc.weight" in msg and "[7, 24]" in msg and "[5, 24]" in msg  # which tensor, both shapes
    assert "\n" not in msg


def test_checkpoint_with_arch_kwargs_the_class_does_not_take(tmp_path):
    from certify.examples.digits import DigitsMLP

    path = tmp_path / "digits_bad_kwargs.pt"
    torch.save({"state_dict": DigitsMLP().state_dict(), "arch": "certify.examples.digits:DigitsMLP",
                "arch_kwargs": {"width": 32}, "input_shape": [64]}, path)
    with pytest.raises(ModelError) as info:
        load_model(path)
    msg = str(info.value)
    assert str(path) in msg and "DigitsMLP" in msg and "width" in msg and "\n" not in msg


def test_bad_arch_names(tmp_path, arch):
    name, mod = arch
    path = tmp_path / "cnn_state.pt"
    torch.save(_cnn(mod).state_dict(), path)
    with pytest.raises(ModelError, match="package.module:Class"):
        load_model(path, arch="SmallCNN", input_shape=CNN_SHAPE)
    with pytest.raises(ModelError, match="no_such_module_xyz"):
        load_model(path, arch="no_such_module_xyz:Net", input_shape=CNN_SHAPE)
    with pytest.raises(ModelError, match="NoSuchClass"):
        load_model(path, arch=f"{name}:NoSuchClass", input_shape=CNN_SHAPE)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ModelError, match=re.escape(str(tmp_path))):
        load_model(tmp_path)
    missing = tmp_path / "nothing_here.onnx"
    with pytest.raises(ModelError, match="nothing_here.onnx"):
        load_model(missing)
    with pytest.raises(ModelError, match="nothing_here.pt"):
        load_model(tmp_path / "nothing_here.pt", arch="x:Y")


def test_garbage_files_are_model_errors(tmp_path):
    """Truncated or unrelated bytes under each suffix: a CertifyError naming the file, never a crash."""
    head = (DIGITS / "digits_mlp.onnx").read_bytes()[:100]
    for name, data in [("cut.onnx", head), ("cut.pt", (DIGITS / "digits_mlp.pt").read_bytes()[:100]),
                       ("text.pt2", b"hello"), ("noext", head)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CertifyError) as info:
            load_model(path)
        assert name in str(info.value)
