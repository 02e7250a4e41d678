"""The suite runner (``certify bench``) and the VNN-COMP tool interface (``vnncomp/*.sh``), checked on
the shared ACAS Xu instances against the published expected results, and with onnxruntime replaying
every counterexample written to a result file."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from certify import bench
from certify.cli import main
from certify.errors import CertifyError
from certify.vnnlib import read_counterexample, read_vnnlib

from conftest import REPO, expected_rows, shared_dir

# two sat and two unsat ACAS Xu instances that the auto chain answers in a few seconds
PICK = [("ACASXU_run2a_2_1_batch_2000.onnx", "prop_2.vnnlib"), ("ACASXU_run2a_1_2_batch_2000.onnx", "prop_2.vnnlib"),
        ("ACASXU_run2a_1_1_batch_2000.onnx", "prop_1.vnnlib"), ("ACASXU_run2a_2_3_batch_2000.onnx", "prop_3.vnnlib")]


def _acas_rows():
    rows = {(r["onnx"].split("/")[-1], r["vnnlib"].split("/")[-1]): r for r in expected_rows("acasxu")}
    return [rows[k] for k in PICK if k in rows]


def _replays(onnx, vnnlib, result_file) -> bool:
    """onnxruntime's output at the written X is the written Y (to 1e-4) and violates the property."""
    text = result_file.read_text()
    assert text.startswith("sat\n")
    x, y = read_counterexample(result_file)
    prop = read_vnnlib(vnnlib)
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    out = sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0].reshape(-1)
    assert np.allclose(out, y, rtol=1e-4, atol=1e-4)
    import torch

    return any(bool(spec.input.contains(torch.tensor(x, dtype=torch.float64).reshape(1, -1), atol=1e-6).all())
               and bool(spec.violated_by(torch.tensor(out, dtype=torch.float64).reshape(1, -1)).any())
               for spec in prop.specs)


def test_read_instances_both_forms_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("net.onnx,p.vnnlib,12\nnet.onnx, q.vnnlib ,3.5,unsat\n")
    got = bench.read_instances(tmp_path / "a.csv")
    assert [(i.onnx.name, i.vnnlib.name, i.timeout) for i in got] == [("net.onnx", "p.vnnlib", 12.0),
                                                                       ("net.onnx", "q.vnnlib", 3.5)]
    assert got[0].onnx.parent == tmp_path
    (tmp_path / "b.csv").write_text("onnx,vnnlib,timeout_s,expected\nn.onnx,p.vnnlib,5,sat\n")
    (only,) = bench.read_instances(tmp_path / "b.csv")
    assert only.expected == "sat" and only.timeout == 5.0
    (tmp_path / "c.csv").write_text("n.onnx,p.vnnlib,12\nn.onnx,p.vnnlib,soon\n")
    with pytest.raises(CertifyError, match=r"c.csv:2: timeout 'soon'"):
        bench.read_instances(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("n.onnx,p.vnnlib\n")
    with pytest.raises(CertifyError, match=r"d.csv:1: expected onnx, vnnlib, timeout"):
        bench.read_instances(tmp_path / "d.csv")


def test_scoring_counts_wrong_answers():
    def o(answer, expected):
        return bench.Outcome("n", "p", 1.0, answer, "auto", 0.1, expected)

    s = bench.summary([o("sat", "sat"), o("unsat", "unsat"), o("unsat", "sat"), o("timeout", "unsat"),
                       o("sat", None), o("error", "sat")])
    assert (s["correct"], s["wrong"], s["unjudged"], s["unsolved"]) == (2, 1, 1, 2)
    assert s["score"] == 2 * 10 - 150


@pytest.mark.slow
def test_bench_cli_on_acasxu_matches_expected_results(tmp_path, capsys):
    root = shared_dir("acasxu")
    rows = _acas_rows()
    suite = tmp_path / "suite.csv"
    with open(suite, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["onnx", "vnnlib", "timeout_s", "expected"])
        for r in rows:
            w.writerow([root / r["onnx"], root / r["vnnlib"], 30, r["expected"]])
    out_csv, out_md = tmp_path / "r.csv", tmp_path / "r.md"
    code = main(["bench", str(suite), "--csv", str(out_csv), "--markdown", str(out_md)])
    assert code == 0, capsys.readouterr().out
    with open(out_csv, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and all(g["wrong"] == "0" for g in got)
    assert all(g["correct"] == "1" for g in got)  # each is answered in a few seconds
    assert "| suite |" in out_md.read_text() and "ACASXU_run2a_1_1_batch_2000.onnx" in out_md.read_text()


@pytest.mark.slow
def test_run_instance_script_writes_replaying_counterexample_and_unsat(tmp_path):
    root = shared_dir("acasxu")
    for r in _acas_rows():
        onnx, vnnlib = root / r["onnx"], root / r["vnnlib"]
        assert subprocess.run(["bash", str(REPO / "vnncomp/prepare_instance.sh"), "v1", "acasxu", onnx, vnnlib],
                              capture_output=True).returncode == 0
        res = tmp_path / f"{onnx.stem}_{vnnlib.stem}.txt"
        env = {"CERTIFY": str(REPO / ".venv/bin/certify")} if (REPO / ".venv/bin/certify").exists() else {}
        import os

        subprocess.run(["bash", str(REPO / "vnncomp/run_instance.sh"), "v1", "acasxu", onnx, vnnlib, res, "30"],
                       check=True, env={**os.environ, **env, "PATH": f"{sys.prefix}/bin:" + os.environ["PATH"]})
        word = res.read_text().split("\n", 1)[0]
        assert word in ("sat", "unsat", "timeout", "unknown")
        if word == "sat":
            assert r["expected"] == "sat" and _replays(onnx, vnnlib, res)
        if word == "unsat":
            assert r["expected"] == "unsat"


def test_run_instance_script_rejects_bad_arguments(tmp_path):
    bad = subprocess.run(["bash", str(REPO / "vnncomp/run_instance.sh"), "v1", "x"], capture_output=True, text=True)
    assert bad.returncode == 1 and "usage" in bad.stderr
    missing = subprocess.run(["bash", str(REPO / "vnncomp/prepare_instance.sh"), "v1", "x", tmp_path / "no.onnx",
                              tmp_path / "no.vnnlib"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_bench_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing.csv")]) == 4
    err = capsys.readouterr().err
    assert "missing.csv: cannot read" in err and "Traceback" not in err
    (tmp_path / "s.csv").write_text("a.onnx,b.vnnlib,10\n")
    assert main(["bench", str(tmp_path / "s.csv"), "--every", "0"]) == 2
