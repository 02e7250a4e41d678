"""``certify smooth`` and ``certify train`` end to end. Ground truth computed here: the summary's
certified accuracy is recomputed from the rows; the plot is a PNG; noise-trained base classifiers are
more accurate under that noise than clean-trained ones (measured on held-out digits); a checkpoint
written by ``train`` loads and predicts what the trained module predicts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certify.models import load_model
from conftest import EXAMPLES
from test_cli import assert_input_error, assert_usage_error, cli, json_lines

ONNX = EXAMPLES / "digits" / "digits_mlp.onnx"
NPZ = EXAMPLES / "digits" / "test.npz"


def test_smooth_json_rows_summary_and_plot(capsys, tmp_path):
    png, csv = tmp_path / "curves.png", tmp_path / "rows.csv"
    code, out, err = cli(capsys, "smooth", ONNX, "--data", NPZ, "--sigma", "0.12", "0.25", "--n", "2000",
                         "--limit", "4", "--radii", "0,0.1,0.3", "--json", "--plot", png, "--csv", csv)
    assert code == 0, err
    rows, summary = json_lines(out)
    assert len(rows) == 8 and {r["sigma"] for r in rows} == {0.12, 0.25}
    labels = np.load(NPZ)["y"][:4]
    for r in rows:
        assert r["label"] == int(labels[r["index"]])
        assert r["correct"] == (r["prediction"] == r["label"]) and r["abstained"] == (r["prediction"] is None)
        assert r["radius"] >= 0 and r["time_s"] > 0
    for group in summary:
        mine = [r for r in rows if r["sigma"] == group["sigma"]]
        for radius, acc in group["certified_accuracy"].items():
            want = np.mean([r["correct"] and r["radius"] >= float(radius) for r in mine])
            assert acc == pytest.approx(want)
        assert group["alpha"] == 0.001
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(csv.read_text().splitlines()) == 9


def test_smooth_is_reproducible_and_the_table_says_what_it_certifies(capsys):
    args = ("smooth", ONNX, "--data", NPZ, "--sigma", "0.25", "--n", "1000", "--limit", "2", "--json")
    first = json_lines(cli(capsys, *args)[1])[0]
    again = json_lines(cli(capsys, *args)[1])[0]
    assert [r["radius"] for r in first] == [r["radius"] for r in again]
    code, out, _ = cli(capsys, *args[:-1])
    assert code == 0 and "about the smoothed classifier g" in out and "alpha=0.001" in out


def test_smooth_compare_reports_a_sound_radius_that_crown_proves(capsys):
    from certify import api
    from certify.results import Verdict
    from certify.spec import Property, robustness

    code, out, err = cli(capsys, "smooth", ONNX, "--data", NPZ, "--sigma", "0.25", "--n", "1000", "--limit", "2",
                         "--compare", "crown", "--json")
    assert code == 0, err
    rows, summary = json_lines(out)
    model = load_model(ONNX)
    x = np.load(NPZ)["x"]
    for r in rows:
        assert r["det_radius"] is not None and "deterministic_certified_accuracy" in summary[0]
        if r["det_radius"] > 0:  # the reported radius really is proved, and it is sound for f: no sample breaks it
            xi = torch.as_tensor(x[r["index"]], dtype=torch.float64).reshape(1, 64)
            spec = robustness(xi, [r["label"]], r["det_radius"], 2, n_classes=10)
            assert api.verify(model, Property("p", (spec,)), "crown", attack=False).verdict is Verdict.PROVED
            pts = spec.input.sample(2000, generator=torch.Generator().manual_seed(0)).reshape(-1, 64)
            assert (model.reference(pts.numpy()).argmax(1) == r["label"]).all()


@pytest.mark.parametrize("argv, facts", [
    (["--sigma", "0.1", "0.2", "0.3"], ["2 models", "3 sigmas"]),
    (["--sigma", "0"], ["--sigma", "positive"]),
    (["--sigma", "0.1", "--alpha", "2"], ["--alpha", "2"]),
    (["--sigma", "0.1", "--radii", "a,b"], ["--radii", "a,b"]),
    (["--sigma", "0.1", "--n", "0"], ["--n", "positive"]),
    (["--sigma", "0.1", "--compare", "nope"], ["nope", "unknown backend"]),
])
def test_smooth_bad_arguments_are_one_line_errors(capsys, argv, facts):
    models = [ONNX, ONNX] if "0.2" in argv else [ONNX]
    code, _, err = cli(capsys, "smooth", *models, "--data", NPZ, *argv)
    assert_usage_error(code, err, *facts)


def test_smooth_data_that_does_not_fit_the_model(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 10)), y=np.zeros(2, dtype=np.int64))
    code, _, err = cli(capsys, "smooth", ONNX, "--data", bad, "--sigma", "0.1")
    assert_input_error(code, err, "64", "10")
    code, _, err = cli(capsys, "smooth", ONNX, "--data", tmp_path / "none.npz", "--sigma", "0.1")
    assert_input_error(code, err, "none.npz", "no such file")


def test_noise_training_makes_the_base_classifier_robust_to_that_noise(capsys, tmp_path):
    """The point of ``--noise-sigma``: on held-out digits under N(0, 0.5^2) noise, the noise-trained
    network is clearly more accurate than the same network trained on clean inputs."""
    from certify.data import load_labelled
    from certify.training import accuracy

    xt, yt = load_labelled("digits:test")
    acc = {}
    for sigma in ("0", "0.5"):
        out = tmp_path / f"m{sigma}.pt"
        code, stdout, err = cli(capsys, "train", "--data", "digits:train", "--arch", "certify.examples.digits:DigitsMLP",
                                "--noise-sigma", sigma, "--epochs", "30", "--lr", "3e-3", "--test", "digits:test", "--out", out)
        assert code == 0, err
        ckpt = torch.load(out, weights_only=True)
        assert ckpt["training"]["noise_sigma"] == float(sigma) and ckpt["input_shape"] == [64]
        model = load_model(out)  # the checkpoint is self-describing
        module = model.module
        acc[sigma] = np.mean([accuracy(module, xt, yt, (64,), 0.5, seed) for seed in range(5)])
        # the loaded graph predicts what the module predicts
        assert (model.graph.forward(torch.as_tensor(xt[:50])).argmax(1) == module(torch.as_tensor(xt[:50],
                dtype=torch.float32)).argmax(1)).all()
    assert acc["0.5"] > acc["0"] + 0.1, acc


def test_train_cnn_with_an_input_shape_and_onnx_export(capsys, tmp_path):
    out, onnx_path = tmp_path / "cnn.pt", tmp_path / "cnn.onnx"
    code, stdout, err = cli(capsys, "train", "--data", NPZ, "--arch", "certify.examples.digits:DigitsCNN",
                            "--arch-kwargs", '{"channels": 4, "hidden": 16}', "--input-shape", "1,8,8",
                            "--epochs", "2", "--out", out, "--onnx", onnx_path)
    assert code == 0, err
    assert "train_accuracy=" in stdout
    a, b = load_model(out), load_model(onnx_path)
    x = np.load(NPZ)["x"][:5].reshape(5, 1, 8, 8)
    assert np.allclose(a.reference(x), b.reference(x), atol=1e-5)


@pytest.mark.parametrize("argv, facts", [
    (["--arch-kwargs", "{nope"], ["--arch-kwargs", "not JSON"]),
    (["--arch-kwargs", "[1]"], ["--arch-kwargs", "JSON object"]),
    (["--input-shape", "1,9,9"], ["--input-shape", "81", "64"]),
    (["--noise-sigma", "-1"], ["--noise-sigma", "-1"]),
    (["--epochs", "0"], ["epochs"]),
    (["--arch", "certify.examples.digits:Nope"], ["Nope"]),
])
def test_train_bad_arguments_are_one_line_errors(capsys, tmp_path, argv, facts):
    base = {"--arch": "certify.examples.digits:DigitsMLP"}
    args = ["train", "--data", NPZ, "--out", tmp_path / "m.pt"]
    if "--arch" not in argv:
        args += ["--arch", base["--arch"]]
    code, _, err = cli(capsys, *args, *argv)
    if "--arch" in argv:  # a class that does not exist in its module: a bad input, like a missing file
        assert_input_error(code, err, *facts)
    else:  # a bad option value: a usage error
        assert_usage_error(code, err, *facts)


def test_help_teaches(capsys):
    for command, words in (("smooth", ["Cohen", "not a statement about the network", "abstain"]),
                           ("train", ["--noise-sigma", "Gaussian"])):
        code, out, _ = cli(capsys, command, "--help")
        assert code == 0 and all(w in out for w in words), out
    code, out, _ = cli(capsys, "backends", "--json")
    assert "smoothing" in [b["name"] for b in json.loads(out)]


def test_verify_with_the_smoothing_backend_says_its_proofs_are_probabilistic(capsys):
    code, out, err = cli(capsys, "verify", ONNX, "--data", NPZ, "--eps", "0.05", "--norm", "2", "--limit", "2",
                         "--method", "smoothing", "--json")
    results, summary = json_lines(out)
    for r in results:
        if r["verdict"] == "proved":
            assert r["guarantee"] == "probabilistic" and "smoothed classifier g" in r["claim"]
    assert summary.get("proved_probabilistic", 0) == summary["proved"] > 0
