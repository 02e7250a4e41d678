"""Result invariants and counterexample replay (the only way to a FALSIFIED verdict)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certify import replay
from certify.models import load_model
from certify.results import Counterexample, Guarantee, Result, Verdict
from certify.spec import robustness
from certify.vnnlib import read_counterexample, read_vnnlib

from conftest import EXAMPLES, expected_rows, shared_dir


@pytest.fixture(scope="module")
def digits():
    return load_model(EXAMPLES / "digits" / "digits_mlp.onnx")


def test_invariants_block_unreplayed_or_unsound_results():
    with pytest.raises(TypeError):
        Counterexample(np.zeros(2), np.zeros(2), 0, 0, -1.0, "onnxruntime")
    with pytest.raises(ValueError):
        Result(Verdict.FALSIFIED, "x", 0.1)
    with pytest.raises(ValueError):
        Result(Verdict.PROVED, "x", 0.1)  # no guarantee
    with pytest.raises(ValueError):
        Result(Verdict.UNKNOWN, "x", 0.1)  # no reason
    ok = Result(Verdict.PROVED, "ibp", 0.1, guarantee=Guarantee.SOUND, bounds=((1.0, float("inf")),))
    assert json.loads(ok.to_json())["bounds"] == [[1.0, "inf"]]


def test_replay_accepts_only_genuine_counterexamples(digits):
    data = np.load(EXAMPLES / "digits" / "test.npz")
    x, y = data["x"][:20], data["y"][:20]
    pred = digits.reference(x).argmax(1)
    wrong = [i for i in range(20) if pred[i] != y[i]]
    right = [i for i in range(20) if pred[i] == y[i]]
    i = right[0]
    spec = robustness(torch.tensor(x[i:i + 1]), [int(y[i])], 0.05, "inf", n_classes=10, clip=(0, 1))
    spec = spec.reshape_input(digits.input_shape)
    assert replay.check(digits, spec, x[i]) is None  # correctly classified centre: not a counterexample
    assert replay.check(digits, spec, np.clip(x[i] + 0.5, 0, 1)) is None  # outside the ball
    # a point of the ball that the runtime misclassifies, when the true label is replaced by a wrong one
    fake_label = int((pred[i] + 1) % 10)
    spec2 = robustness(torch.tensor(x[i:i + 1]), [fake_label], 0.05, "inf", n_classes=10, clip=(0, 1))
    cex = replay.check(digits, spec2.reshape_input(digits.input_shape), x[i])
    assert cex is not None and cex.margin <= 0 and cex.runtime == "onnxruntime"
    # the counterexample is what the runtime really computes
    np.testing.assert_allclose(digits.reference(cex.x[None]).reshape(-1), cex.y)
    if wrong:
        j = wrong[0]
        spec3 = robustness(torch.tensor(x[j:j + 1]), [int(y[j])], 0.0, "inf", n_classes=10)
        assert replay.check(digits, spec3.reshape_input(digits.input_shape), x[j]) is not None


def test_replay_rounds_into_the_box_in_float32():
    """A float64 candidate on the box boundary must be rounded to a float32 point inside the box."""
    root = shared_dir("acasxu")
    model = load_model(root / "onnx" / "ACASXU_run2a_1_2_batch_2000.onnx")
    prop = read_vnnlib(root / "vnnlib" / "prop_2.vnnlib")
    spec = prop.specs[0].reshape_input(model.input_shape)
    x, _ = read_counterexample(root / "counterexamples" / "ACASXU_run2a_1_2_batch_2000_prop_2.counterexample")
    cex = replay.check(model, spec, x)
    assert cex is not None, "the published counterexample, moved into the box, should still replay"
    assert bool(spec.input.contains(torch.tensor(cex.x).reshape(1, *model.input_shape)).all())
    assert cex.x.astype(np.float32).astype(np.float64).tolist() == cex.x.tolist()


@pytest.mark.parametrize("bench", ["acasxu", "mnist_fc"])
def test_published_counterexamples_replay(bench):
    root = shared_dir(bench)
    count = 0
    for row in expected_rows(bench):
        if row["expected"] != "sat" or not row["counterexample"]:
            continue
        model = load_model(root / row["onnx"])
        prop = read_vnnlib(root / row["vnnlib"])
        x, _ = read_counterexample(root / row["counterexample"])
        hits = [replay.check(model, s.reshape_input(model.input_shape), x, atol=1e-6) for s in prop.specs]
        assert any(h is not None for h in hits), row["counterexample"]
        count += 1
    assert count == {"acasxu": 47, "mnist_fc": 18}[bench]
