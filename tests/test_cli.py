"""The command line, end to end, checked against ground truth computed here: counterexamples are
re-run in onnxruntime (or the eager module) by the test and the property is evaluated directly from
the parsed VNN-LIB tensors; proved verdicts are confronted with sampled points; hashes are recomputed.

Everything runs in-process through ``certify.cli.main`` except one subprocess run of the installed
``certify`` console script.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from certify.cli import ExitCode, main
from certify.vnnlib import read_counterexample, read_vnnlib
from conftest import EXAMPLES, expected_rows

DIGITS = EXAMPLES / "digits"
ONNX = DIGITS / "digits_mlp.onnx"
CKPT = DIGITS / "digits_mlp.pt"
NPZ = DIGITS / "test.npz"
SPECS = sorted(DIGITS.glob("*.vnnlib"))
EXIT_OF = {"proved": 0, "falsified": 1, "unknown": 3}


# --------------------------------------------------------------------------------------------
# helpers: running the CLI, and ground truth computed independently of certify's engine
# --------------------------------------------------------------------------------------------


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``certify *argv`` in-process: (exit code, stdout, stderr); argparse's own exits included."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return int(code), out, err


def cli_captured(*argv) -> tuple[int, str, str]:
    """Like ``cli`` for module-scoped fixtures (no capsys there)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return int(code), out.getvalue(), err.getvalue()


def expected_exit(verdicts: list[str]) -> int:
    if "falsified" in verdicts:
        return 1
    if "unknown" in verdicts:
        return 3
    return 0


@functools.lru_cache(maxsize=None)
def _session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the file, one input at a time (the files fix the batch to 1): ``[n, n_out]``."""
    sess = _session(str(path))
    meta = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in meta.shape]
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return np.stack([sess.run(None, {meta.name: xi.reshape(shape)})[0].reshape(-1) for xi in x]).astype(np.float64)


@functools.lru_cache(maxsize=None)
def _eager_digits() -> torch.nn.Module:
    from certify.examples.digits import DigitsMLP

    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    net = DigitsMLP(**ckpt["arch_kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def run_eager(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _eager_digits()(torch.as_tensor(np.asarray(x, dtype=np.float32))).double().numpy()


def spec_parts(path: Path) -> list[tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]]:
    """(lower, upper, [(C, d), ...]) per input box of the VNN-LIB file."""
    parts = []
    for spec in read_vnnlib(path).specs:
        lo = spec.input.lower.reshape(-1).numpy()
        hi = spec.input.upper.reshape(-1).numpy()
        clauses = [(c.C[0].numpy(), c.d[0].numpy()) for c in spec.unsafe]
        parts.append((lo, hi, clauses))
    return parts


def in_unsafe_set(y: np.ndarray, clauses) -> np.ndarray:
    """For outputs ``y [n, n_out]``: whether some clause has every row ``C y <= d``."""
    y = np.atleast_2d(y)
    hit = np.zeros(len(y), dtype=bool)
    for C, d in clauses:
        hit |= np.all(y @ C.T <= d, axis=1)
    return hit


def check_counterexample(path: Path, x, y_claimed, run, box_tol: float = 0.0, y_tol: float = 1e-5) -> None:
    """``x`` lies in an input box of the file, our own run of the model reproduces ``y_claimed`` and the
    output we computed lies in that box's unsafe set."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y_own = run(x[None])[0]
    np.testing.assert_allclose(y_own, np.asarray(y_claimed, dtype=np.float64).reshape(-1), rtol=y_tol, atol=y_tol)
    ok = [in_unsafe_set(y_own, clauses)[0] for lo, hi, clauses in spec_parts(path)
          if np.all(x >= lo - box_tol) and np.all(x <= hi + box_tol)]
    assert ok, f"counterexample for {path.name} lies outside every input box"
    assert any(ok), f"counterexample for {path.name}: output {y_own} is not in the unsafe set"


def sample_box(lo: np.ndarray, hi: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points of the box: uniform ones, a share of random vertices, and the centre."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, len(lo)))
    u[: n // 10] = u[: n // 10] > 0.5  # vertices, where interval-trained nets are weakest
    pts = lo + u * (hi - lo)
    pts[-1] = (lo + hi) / 2
    return pts


def check_no_sampled_violation(path: Path, run, n: int = 2000) -> None:
    for k, (lo, hi, clauses) in enumerate(spec_parts(path)):
        pts = sample_box(lo, hi, n, seed=k)
        assert np.all(pts >= lo) and np.all(pts <= hi)
        bad = in_unsafe_set(run(pts), clauses)
        assert not bad.any(), f"{path.name} is reported proved, but sampled input {pts[bad][0]} violates it"


def json_lines(out: str) -> tuple[list[dict], dict]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    objs = [json.loads(ln) for ln in lines]  # every stdout line is JSON
    assert "summary" in objs[-1] and all("summary" not in o for o in objs[:-1])
    return objs[:-1], objs[-1]["summary"]


def assert_input_error(code: int, err: str, *facts: str) -> None:
    """Exit 4, one line on stderr, no traceback, every fact named."""
    assert code == ExitCode.INPUT_ERROR == 4, err
    _one_line(err, facts)


def assert_usage_error(code: int, err: str, *facts: str) -> None:
    """Exit 2 (a bad option value or missing argument), one line ``certify <command>: error: ...``."""
    assert code == ExitCode.USAGE == 2, err
    _one_line(err, facts)


def _one_line(err: str, facts) -> None:
    assert "Traceback" not in err and "usage:" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert re.match(r"certify [a-z-]+: error: ", err), err
    for fact in facts:
        assert fact in err, f"{fact!r} not in {err!r}"


# --------------------------------------------------------------------------------------------
# the bundled example
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """``certify verify digits_mlp.onnx *.vnnlib --json --out cert.json --vnncomp-result res.txt``."""
    tmp = tmp_path_factory.mktemp("example")
    cert, vnncomp = tmp / "cert.json", tmp / "result.txt"
    code, out, err = cli_captured("verify", ONNX, *SPECS, "--json", "--out", cert, "--vnncomp-result", vnncomp)
    results, summary = json_lines(out)
    return {"code": code, "results": results, "summary": summary, "cert": cert, "vnncomp": vnncomp, "err": err}


def test_example_has_the_bundled_files():
    assert ONNX.is_file() and CKPT.is_file() and NPZ.is_file()
    assert len(SPECS) >= 4


def test_verify_table(capsys):
    code, out, err = cli(capsys, "verify", ONNX, *SPECS)
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("property"))
    rows = [ln for ln in lines[header + 2:] if ln.strip()][:-1]
    assert [r.split()[0] for r in rows] == [s.stem for s in SPECS]  # one row per property, in order
    verdicts = [r.split()[1] for r in rows]
    assert set(verdicts) <= {"proved", "falsified", "unknown"}
    m = re.search(r"(\d+) proved, (\d+) falsified, (\d+) unknown of (\d+)", lines[-1])
    assert m, lines[-1]
    assert [int(g) for g in m.groups()] == [verdicts.count("proved"), verdicts.count("falsified"),
                                           verdicts.count("unknown"), len(SPECS)]
    assert code == expected_exit(verdicts)
    for row in rows:
        if row.split()[1] == "falsified":
            assert "replayed on onnxruntime" in row


def test_verify_quiet_prints_only_the_summary(capsys):
    code, out, err = cli(capsys, "verify", ONNX, SPECS[0], "--quiet")
    assert [ln for ln in out.splitlines() if ln.strip()] == [out.strip()]
    assert re.search(r"\d+ proved, \d+ falsified, \d+ unknown of 1", out)


def test_verify_json_against_ground_truth(example_run):
    results, summary = example_run["results"], example_run["summary"]
    assert len(results) == len(SPECS)
    assert [Path(r["source"]).name for r in results] == [s.name for s in SPECS]
    verdicts = [r["verdict"] for r in results]
    assert example_run["code"] == expected_exit(verdicts)
    assert summary["total"] == len(SPECS)
    assert [summary["proved"], summary["falsified"], summary["unknown"]] == [
        verdicts.count("proved"), verdicts.count("falsified"), verdicts.count("unknown")]
    # the example is built to have both answers; otherwise the checks below would check nothing
    assert "proved" in verdicts and "falsified" in verdicts, verdicts
    for r, spec in zip(results, SPECS):
        if r["verdict"] == "falsified":
            ce = r["counterexample"]
            assert ce["runtime"] == "onnxruntime" and ce["replayed"] is True
            check_counterexample(spec, ce["x"], ce["y"], functools.partial(run_onnx, ONNX))
        elif r["verdict"] == "proved":
            assert r["counterexample"] is None and r["guarantee"] in ("sound", "probabilistic")
            check_no_sampled_violation(spec, functools.partial(run_onnx, ONNX))
        else:
            assert r["reason"]


def test_json_and_table_agree(capsys, example_run):
    code, out, _ = cli(capsys, "verify", ONNX, *SPECS, "--quiet")
    assert code == example_run["code"]
    s = example_run["summary"]
    assert f"{s['proved']} proved, {s['falsified']} falsified, {s['unknown']} unknown of {s['total']}" in out


def test_certificate(example_run):
    cert = json.loads(example_run["cert"].read_text())
    assert cert["model"]["sha256"] == hashlib.sha256(ONNX.read_bytes()).hexdigest()
    spec_hashes = {Path(s["path"]).name: s["sha256"] for s in cert["specs"]}
    assert spec_hashes == {s.name: hashlib.sha256(s.read_bytes()).hexdigest() for s in SPECS}
    assert len(cert["results"]) == len(SPECS)
    for entry, spec, line in zip(cert["results"], SPECS, example_run["results"]):
        assert Path(entry["source"]).name == spec.name
        assert entry["spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
        assert entry["verdict"] == line["verdict"]
        assert entry["counterexample"] == line["counterexample"]
    assert cert["summary"]["total"] == len(SPECS)
    assert cert["summary"]["falsified"] == sum(r["verdict"] == "falsified" for r in cert["results"])


def test_vnncomp_result_of_many_properties(example_run):
    text = example_run["vnncomp"].read_text()
    verdicts = [r["verdict"] for r in example_run["results"]]
    first = text.splitlines()[0]
    if "falsified" in verdicts:
        assert first == "sat"
    elif set(verdicts) == {"proved"}:
        assert text.split() == ["unsat"]
    else:
        assert text.split() in (["unknown"], ["timeout"])
    if first == "sat":  # the counterexample of some falsified property
        x, y = read_counterexample(example_run["vnncomp"])
        falsified = [s for r, s in zip(example_run["results"], SPECS) if r["verdict"] == "falsified"]
        y_own = run_onnx(ONNX, x[None])[0]
        np.testing.assert_allclose(y_own, y, rtol=1e-5, atol=1e-5)
        assert any(in_unsafe_set(y_own, clauses)[0] for s in falsified for lo, hi, clauses in spec_parts(s)
                   if np.all(x >= lo) and np.all(x <= hi))


def _single(verdict: str, example_run) -> Path:
    for r, spec in zip(example_run["results"], SPECS):
        if r["verdict"] == verdict:
            return spec
    pytest.fail(f"the example has no {verdict} property")


def test_vnncomp_result_sat_replays(capsys, tmp_path, example_run):
    spec = _single("falsified", example_run)
    res = tmp_path / "res.txt"
    code, out, err = cli(capsys, "verify", ONNX, spec, "--vnncomp-result", res)
    assert code == 1
    lines = res.read_text().splitlines()
    assert lines[0] == "sat"
    x, y = read_counterexample(res)
    assert x.shape == (64,) and y.shape == (10,)
    check_counterexample(spec, x, y, functools.partial(run_onnx, ONNX))


def test_vnncomp_result_unsat(capsys, tmp_path, example_run):
    spec = _single("proved", example_run)
    res = tmp_path / "res.txt"
    code, _, _ = cli(capsys, "verify", ONNX, spec, "--vnncomp-result", res)
    assert code == 0
    assert res.read_text().split() == ["unsat"]


def test_unknown_exit_code_and_vnncomp_unknown(capsys, tmp_path, example_run):
    """The attack alone cannot answer a property that holds: unknown, exit 3."""
    spec = _single("proved", example_run)
    res = tmp_path / "res.txt"
    code, out, _ = cli(capsys, "verify", ONNX, spec, "--method", "pgd", "--json", "--vnncomp-result", res)
    results, _ = json_lines(out)
    assert [r["verdict"] for r in results] == ["unknown"] and results[0]["reason"]
    assert code == ExitCode.UNKNOWN == 3
    assert res.read_text().split() == ["unknown"]


def test_vnncomp_result_error_on_bad_input(capsys, tmp_path):
    res = tmp_path / "res.txt"
    code, _, err = cli(capsys, "verify", ONNX, tmp_path / "missing.vnnlib", "--vnncomp-result", res)
    assert_input_error(code, err, "missing.vnnlib")
    assert res.read_text().split() == ["error"]


def test_acasxu_sat_instance_replays_within_vnncomp_tolerance(capsys, tmp_path, acasxu):
    net = acasxu / "onnx" / "ACASXU_run2a_1_2_batch_2000.onnx"
    prop = acasxu / "vnnlib" / "prop_2.vnnlib"
    row = next(r for r in expected_rows("acasxu") if r["onnx"].endswith(net.name) and r["vnnlib"].endswith(prop.name))
    assert row["expected"] == "sat"
    res = tmp_path / "res.txt"
    code, out, err = cli(capsys, "verify", net, prop, "--vnncomp-result", res, "--timeout", "60")
    assert code == 1, out + err
    assert res.read_text().splitlines()[0] == "sat"
    x, y = read_counterexample(res)
    assert x.shape == (5,) and y.shape == (5,)
    # VNN-COMP's check: input inside the box and claimed outputs within 1e-4 of onnxruntime's; and our
    # own onnxruntime output must satisfy the unsafe formula.
    check_counterexample(prop, x, y, functools.partial(run_onnx, net), box_tol=1e-4, y_tol=1e-4)
    check_counterexample(prop, x, y, functools.partial(run_onnx, net), box_tol=0.0, y_tol=1e-6)


# --------------------------------------------------------------------------------------------
# robustness of labelled inputs (--data)
# --------------------------------------------------------------------------------------------


def _data_ground_truth(results: list[dict], x: np.ndarray, y: np.ndarray, eps: float, norm: str,
                       n_samples: int = 1000) -> None:
    """Falsified: the point lies in the clipped ball and onnxruntime misclassifies it; proved: no
    sampled point of the clipped ball is misclassified."""
    rng = np.random.default_rng(0)
    ord_ = np.inf if norm == "inf" else float(norm)
    for i, r in enumerate(results):
        label, x0 = int(y[i]), x[i].astype(np.float64)
        assert f"label={label}" in r["property"] and f"norm={norm}" in r["property"]
        if r["verdict"] == "falsified":
            xc = np.asarray(r["counterexample"]["x"], dtype=np.float64)
            assert np.linalg.norm(xc - x0, ord=ord_) <= eps * (1 + 1e-9)
            assert xc.min() >= 0.0 and xc.max() <= 1.0
            out = run_onnx(ONNX, xc[None])[0]
            assert out[label] <= np.delete(out, label).max()
        elif r["verdict"] == "proved":
            if norm == "inf":
                pts = np.clip(sample_box(x0 - eps, x0 + eps, n_samples, seed=i), 0, 1)
            else:  # uniform in the L2 ball, then clipped (which stays in the ball: x0 is in [0, 1])
                g = rng.standard_normal((n_samples, x0.size))
                g /= np.linalg.norm(g, axis=1, keepdims=True)
                pts = np.clip(x0 + eps * g * rng.random((n_samples, 1)) ** (1 / x0.size), 0, 1)
                assert np.all(np.linalg.norm(pts - x0, axis=1) <= eps * (1 + 1e-9))
            out = run_onnx(ONNX, pts)
            assert np.all(out[:, label] > np.delete(out, label, axis=1).max(axis=1)), r["property"]


@pytest.mark.parametrize("norm,eps", [("inf", 0.01), ("2", 0.01), ("inf", 0.3), ("2", 1.5)])
def test_data_npz(capsys, norm, eps):
    code, out, err = cli(capsys, "verify", ONNX, "--data", NPZ, "--eps", eps, "--norm", norm,
                         "--clip", "0,1", "--limit", "5", "--json")
    results, summary = json_lines(out)
    assert len(results) == 5 and summary["total"] == 5
    assert code == expected_exit([r["verdict"] for r in results]), err
    with np.load(NPZ) as z:
        x, y = z["x"], z["y"]
    _data_ground_truth(results, x, y, eps, norm)
    # make sure both ground-truth branches run: the example is trained to be robust at 0.01, and
    # these large radii are falsified by the attack
    if eps == 0.01:
        assert summary["proved"] >= 1
    else:
        assert summary["falsified"] >= 1


def test_data_pt_file(capsys, tmp_path):
    with np.load(NPZ) as z:
        x, y = z["x"][:3], z["y"][:3]
    data = tmp_path / "three.pt"
    torch.save({"x": torch.tensor(x), "y": torch.tensor(y)}, data)
    code, out, err = cli(capsys, "verify", ONNX, "--data", data, "--eps", "0.3", "--clip", "0,1", "--json")
    results, summary = json_lines(out)
    assert len(results) == 3
    assert code == expected_exit([r["verdict"] for r in results]), err
    _data_ground_truth(results, x, y, 0.3, "inf")
    # the same inputs from the .npz give the same verdicts
    code2, out2, _ = cli(capsys, "verify", ONNX, "--data", NPZ, "--eps", "0.3", "--clip", "0,1", "--limit", "3", "--json")
    assert [r["verdict"] for r in json_lines(out2)[0]] == [r["verdict"] for r in results]


@pytest.mark.parametrize("argv,facts", [
    (["--limit", "0"], ["--limit", "0"]),
    (["--limit", "-2"], ["--limit", "-2"]),
    (["--eps", "nan"], ["--eps", "nan"]),
    (["--clip", "1,0"], ["--clip", "1,0"]),
    (["--clip", "0"], ["--clip"]),
    (["--norm", "7"], ["norm", "7"]),
])
def test_data_bad_flags(capsys, argv, facts):
    base = ["verify", ONNX, "--data", NPZ, "--eps", "0.1", "--limit", "1"]
    code, out, err = cli(capsys, *base, *argv)
    assert_usage_error(code, err, *facts)


def test_data_bad_files(capsys, tmp_path):
    np.savez(tmp_path / "wrong_size.npz", x=np.zeros((2, 10)), y=np.zeros(2))
    code, _, err = cli(capsys, "verify", ONNX, "--data", tmp_path / "wrong_size.npz", "--eps", "0.1")
    assert_input_error(code, err, "wrong_size.npz", "64", "10")
    np.savez(tmp_path / "no_y.npz", x=np.zeros((2, 64)))
    code, _, err = cli(capsys, "verify", ONNX, "--data", tmp_path / "no_y.npz", "--eps", "0.1")
    assert_input_error(code, err, "no_y.npz", "y")
    code, _, err = cli(capsys, "verify", ONNX, "--data", SPECS[0], "--eps", "0.1")  # not a data file
    assert_input_error(code, err, SPECS[0].name)
    code, _, err = cli(capsys, "verify", ONNX, "--data", tmp_path / "none.npz", "--eps", "0.1")
    assert_input_error(code, err, "none.npz")
    np.savez(tmp_path / "label.npz", x=np.zeros((1, 64)), y=np.array([12]))
    code, _, err = cli(capsys, "verify", ONNX, "--data", tmp_path / "label.npz", "--eps", "0.1")
    assert_input_error(code, err, "12")
    code, _, err = cli(capsys, "verify", ONNX, "--data", NPZ, "--limit", "1")
    assert_usage_error(code, err, "--eps")


# --------------------------------------------------------------------------------------------
# PyTorch checkpoints through the CLI
# --------------------------------------------------------------------------------------------


def test_state_dict_checkpoint_same_verdicts_as_onnx(capsys, example_run):
    code, out, err = cli(capsys, "verify", CKPT, *SPECS, "--json")
    results, _ = json_lines(out)
    assert [r["verdict"] for r in results] == [r["verdict"] for r in example_run["results"]]
    assert code == example_run["code"]
    for r, spec in zip(results, SPECS):
        if r["verdict"] == "falsified":
            assert r["counterexample"]["runtime"] == "torch eager"
            check_counterexample(spec, r["counterexample"]["x"], r["counterexample"]["y"], run_eager)
        elif r["verdict"] == "proved":
            check_no_sampled_violation(spec, run_eager)


def test_pickled_module_needs_the_flag(capsys, tmp_path, example_run):
    path = tmp_path / "digits_pickle.pt"
    torch.save(_eager_digits(), path)
    spec = _single("proved", example_run)
    code, _, err = cli(capsys, "verify", path, spec)
    assert_input_error(code, err, "digits_pickle.pt", "--allow-unsafe-pickle")
    assert "\x1b" not in err
    code, out, err = cli(capsys, "verify", path, spec, "--allow-unsafe-pickle", "--json")
    assert code == 0 and json_lines(out)[0][0]["verdict"] == "proved", err


def test_state_dict_without_arch(capsys, tmp_path, example_run):
    path = tmp_path / "bare_state.pt"
    torch.save(_eager_digits().state_dict(), path)
    code, _, err = cli(capsys, "verify", path, SPECS[0])
    assert_input_error(code, err, "bare_state.pt", "--arch")
    code, out, err = cli(capsys, "verify", path, SPECS[0], "--arch", "certify.examples.digits:DigitsMLP", "--json")
    assert code == EXIT_OF[example_run["results"][0]["verdict"]], err


# --------------------------------------------------------------------------------------------
# bad input: exit 4, one line naming the problem, no traceback
# --------------------------------------------------------------------------------------------


def test_missing_model(capsys, tmp_path):
    code, _, err = cli(capsys, "verify", tmp_path / "no_model.onnx", SPECS[0])
    assert_input_error(code, err, "no_model.onnx")
    assert re.search(r"no such file|not found|does not exist", err, re.I)


def test_missing_spec(capsys, tmp_path):
    code, _, err = cli(capsys, "verify", ONNX, tmp_path / "no_prop.vnnlib")
    assert_input_error(code, err, "no_prop.vnnlib")
    assert re.search(r"no such file|not found|does not exist", err, re.I)


def test_truncated_onnx(capsys, tmp_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(ONNX.read_bytes()[:100])
    code, _, err = cli(capsys, "verify", path, SPECS[0])
    assert_input_error(code, err, "truncated.onnx")
    assert "onnx" in err.lower().replace("truncated.onnx", "")


def _onnx_with_unsupported(path: Path, chained: bool) -> None:
    """4 inputs -> MatMul -> {Erf, Softmax, custom FooBar} (in parallel, or chained) -> 3 outputs."""
    W = numpy_helper.from_array(np.random.default_rng(0).random((4, 3)).astype(np.float32), "W")
    if chained:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                 helper.make_node("Erf", ["h"], ["e"], name="the_erf"),
                 helper.make_node("Softmax", ["e"], ["s"], name="the_softmax", axis=1),
                 helper.make_node("FooBar", ["s"], ["y"], name="the_custom", domain="com.example")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                 helper.make_node("Erf", ["h"], ["e"], name="the_erf"),
                 helper.make_node("Softmax", ["h"], ["s"], name="the_softmax", axis=1),
                 helper.make_node("FooBar", ["h"], ["f"], name="the_custom", domain="com.example"),
                 helper.make_node("Add", ["e", "s"], ["a"], name="add1"),
                 helper.make_node("Add", ["a", "f"], ["y"], name="add2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [W])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, path)


def _box_vnnlib(path: Path, n_in: int, n_out: int) -> Path:
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)] + [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(n_in):
        lines += [f"(assert (>= X_{i} 0.0))", f"(assert (<= X_{i} 1.0))"]
    lines.append("(assert (<= Y_0 -100.0))")
    path.write_text("\n".join(lines) + "\n")
    return path


UNSUPPORTED = [("the_erf", "Erf"), ("the_softmax", "Softmax"), ("the_custom", "FooBar")]


def test_unsupported_ops_are_all_named(capsys, tmp_path):
    path = tmp_path / "unsupported.onnx"
    _onnx_with_unsupported(path, chained=False)
    code, _, err = cli(capsys, "verify", path, _box_vnnlib(tmp_path / "p.vnnlib", 4, 3))
    assert_input_error(code, err, "unsupported.onnx", *(s for pair in UNSUPPORTED for s in pair))


def test_unsupported_ops_in_a_chain_are_all_named(capsys, tmp_path):
    path = tmp_path / "unsupported_chain.onnx"
    _onnx_with_unsupported(path, chained=True)
    code, _, err = cli(capsys, "verify", path, _box_vnnlib(tmp_path / "p.vnnlib", 4, 3))
    assert_input_error(code, err, "unsupported_chain.onnx", *(s for pair in UNSUPPORTED for s in pair))


def test_malformed_vnnlib_names_file_and_line(capsys, tmp_path):
    path = tmp_path / "malformed.vnnlib"
    text = _box_vnnlib(tmp_path / "ok.vnnlib", 64, 10).read_text().splitlines()
    n = len(text)
    text.insert(80, "(assert (<= X_3 zero))")  # becomes line 81
    path.write_text("\n".join(text) + "\n")
    assert len(path.read_text().splitlines()) == n + 1
    code, _, err = cli(capsys, "verify", ONNX, path)
    assert_input_error(code, err, f"{path}:81", "zero")


def test_vnnlib_with_wrong_number_of_inputs(capsys, tmp_path):
    code, _, err = cli(capsys, "verify", ONNX, _box_vnnlib(tmp_path / "three_inputs.vnnlib", 3, 10))
    assert_input_error(code, err, "three_inputs.vnnlib", "64", "3")


def test_vnnlib_with_wrong_number_of_outputs(capsys, tmp_path):
    code, _, err = cli(capsys, "verify", ONNX, _box_vnnlib(tmp_path / "seven_outputs.vnnlib", 64, 7))
    assert_input_error(code, err, "seven_outputs.vnnlib", "10", "7")


def test_mnist_property_against_digits_model(capsys, mnist_fc):
    spec = sorted((mnist_fc / "vnnlib").glob("*.vnnlib"))[0]
    code, _, err = cli(capsys, "verify", ONNX, spec)
    assert_input_error(code, err, spec.name, "784", "64")


def test_unknown_method_lists_backends(capsys):
    code, _, err = cli(capsys, "verify", ONNX, SPECS[0], "--method", "magic")
    assert_usage_error(code, err, "magic", "pgd", "ibp")


@pytest.mark.parametrize("timeout", ["-1", "nan", "0", "abc"])
def test_bad_timeout(capsys, timeout):
    code, _, err = cli(capsys, "verify", ONNX, SPECS[0], "--timeout", timeout)
    assert_usage_error(code, err, "--timeout", timeout)


@pytest.mark.parametrize("command", ["verify", "bench"])
@pytest.mark.parametrize("limit", ["0", "-5", "nan"])
def test_bad_memory_limit(capsys, tmp_path, command, limit):
    args = (ONNX, SPECS[0]) if command == "verify" else (tmp_path / "instances.csv",)
    code, _, err = cli(capsys, command, *args, "--memory-limit", limit)
    assert_usage_error(code, err, "--memory-limit", limit)


@pytest.mark.parametrize("flag", ["--out", "--vnncomp-result"])
def test_output_in_missing_directory(capsys, tmp_path, flag):
    target = tmp_path / "no_such_dir" / "file.txt"
    code, out, err = cli(capsys, "verify", ONNX, SPECS[0], flag, target)
    assert_input_error(code, err, flag, "no_such_dir")
    assert not target.parent.exists()


def test_bad_device(capsys):
    code, _, err = cli(capsys, "verify", ONNX, SPECS[0], "--device", "toaster")
    assert_usage_error(code, err, "--device", "toaster")
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, "verify", ONNX, SPECS[0], "--device", "cuda")
        assert_usage_error(code, err, "--device", "cuda")


# --------------------------------------------------------------------------------------------
# usage, backends, help
# --------------------------------------------------------------------------------------------


def test_usage_errors(capsys):
    code, _, err = cli(capsys, "verify", ONNX)
    assert code == ExitCode.USAGE == 2 and "--data" in err and "Traceback" not in err
    code, _, err = cli(capsys, "verify", ONNX, SPECS[0], "--data", NPZ, "--eps", "0.1")
    assert code == 2 and "--data" in err and "Traceback" not in err
    code, _, err = cli(capsys, "verify", ONNX, SPECS[0], "--no-such-flag")
    assert code == 2 and "--no-such-flag" in err
    code, _, _ = cli(capsys)
    assert code == 2


def test_exit_codes_are_the_documented_numbers():
    assert {e.name: e.value for e in ExitCode} == {"PROVED": 0, "FALSIFIED": 1, "USAGE": 2, "UNKNOWN": 3,
                                                  "INPUT_ERROR": 4, "INTERNAL": 5}


def test_backends(capsys):
    code, out, _ = cli(capsys, "backends")
    assert code == 0
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()[2:] if ln.strip()}
    assert rows.get("pgd") == "yes" and rows.get("ibp") == "yes"
    code, out, _ = cli(capsys, "backends", "--json")
    assert code == 0
    info = {b["name"]: b for b in json.loads(out)}
    assert info["pgd"]["available"] is True and info["ibp"]["available"] is True


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--help"]])
def test_help_mentions_exit_codes(capsys, argv):
    code, out, _ = cli(capsys, *argv)
    assert code == 0
    assert "exit codes" in out
    for value, word in [(0, "proved"), (1, "falsified"), (2, "usage"), (3, "unknown"), (4, "bad input"),
                        (5, "internal")]:
        assert re.search(rf"^\s+{value}\s+.*{word}", out, re.M | re.I), (value, word)


# --------------------------------------------------------------------------------------------
# the installed console script
# --------------------------------------------------------------------------------------------


def test_console_script(example_run):
    exe = Path(sys.executable).with_name("certify")
    assert exe.is_file(), f"console script not installed next to {sys.executable}"
    specs = [_single("proved", example_run), _single("falsified", example_run)]
    proc = subprocess.run([str(exe), "verify", str(ONNX), *map(str, specs), "--json"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in proc.stderr
    results, summary = json_lines(proc.stdout)
    assert [r["verdict"] for r in results] == ["proved", "falsified"]
    assert proc.returncode == 1


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_each_bound_method_proves_the_small_eps_properties_and_never_a_falsifiable_one(capsys, method):
    """Each sound backend agrees with the auto verdicts where those are proofs, and where auto found a
    replayed counterexample the backend must not prove (its own PGD step reports falsified)."""
    code, out, _ = cli(capsys, "verify", ONNX, *SPECS, "--json", "--method", method)
    results = [json.loads(line) for line in out.splitlines() if "verdict" in line]
    verdicts = {Path(r["source"]).stem: r["verdict"] for r in results}
    for name, verdict in verdicts.items():
        if "eps0.3" in name:
            assert verdict == "falsified", (method, name)
        if "eps0.02" in name:
            assert verdict == "proved", (method, name)
    assert code == ExitCode.FALSIFIED


def test_unavailable_backend_is_an_input_error_naming_the_missing_module(capsys, monkeypatch):
    import importlib.util

    from certify import registry

    real = importlib.util.find_spec
    # whether or not auto_LiRPA is installed here, make it look absent
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name, *a: None if name == "auto_LiRPA" else real(name, *a))
    code, _, err = cli(capsys, "verify", ONNX, SPECS[0], "--method", "lirpa")
    assert_input_error(code, err, "lirpa", "auto_LiRPA")


@pytest.mark.parametrize("method", ["smt", "milp"])
def test_exact_backend_on_a_sigmoid_network_names_the_op_and_a_backend_that_handles_it(capsys, tmp_path, method):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2)).eval()
    path = tmp_path / "sig.onnx"
    torch.onnx.export(net, torch.zeros(1, 2), path, dynamo=False)
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(declare-const Y_1 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n"
                    "(assert (<= X_1 1))\n(assert (<= Y_0 Y_1))\n")
    code, out, err = cli(capsys, "verify", path, spec, "--method", method, "--json", "--no-attack")
    assert "Traceback" not in err
    assert code == EXIT_OF["unknown"], (out, err)
    reason = json.loads(out.splitlines()[0])["reason"]
    assert "sigmoid" in reason and "node" in reason and "crown" in reason, reason
