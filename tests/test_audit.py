"""The soundness audit against ground truth: planted counterexamples are re-run here in a fresh
onnxruntime session against the manifest's box and clauses (not certify's parser); a verifier that lies
is caught by ``certify audit`` (exit 1); the mutation catalogue is caught by the audit's checks while the
unmutated checks pass. This is the small audit that runs in CI; the full one is in benchmarks/RESULTS.md."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from certify.audit.generate import GauntletOptions, generate_suite, plan
from test_cli import assert_input_error, assert_usage_error, cli, json_lines

REPO = Path(__file__).resolve().parents[1]
QUICK = GauntletOptions(restarts=128, steps=60, samples=20_000, rounds=1)


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit_suite")
    records = generate_suite(out, 8, seed=3, timeout=10, gauntlet_options=QUICK, unsat_fraction=0.25, log=lambda s: None)
    assert len(records) == 8
    return out


def manifest(suite: Path) -> list[dict]:
    return json.loads((suite / "manifest.json").read_text())["instances"]


def run_onnx(path: Path, x: np.ndarray, shape) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x.astype(np.float32).reshape(1, *shape)})[0].reshape(-1).astype(np.float64)


def test_every_planted_counterexample_replays_in_onnxruntime(suite):
    rows = manifest(suite)
    assert {r["expected"] for r in rows} == {"sat", "unsat"}
    for r in rows:
        if r["expected"] != "sat":
            continue
        x = np.array(r["x_star"])
        assert np.all(x >= r["lower"]) and np.all(x <= r["upper"]), r["name"]
        y = run_onnx(suite / r["onnx"], x, r["input_shape"])
        margins = [float((np.array(c["C"]) @ y - np.array(c["d"])).max()) for c in r["clauses"]]
        assert min(margins) <= -0.05, (r["name"], margins)
        # and the centre of the box is safe: the property is nearly true
        centre = (np.array(r["lower"]) + np.array(r["upper"])) / 2
        yc = run_onnx(suite / r["onnx"], centre, r["input_shape"])
        assert min(float((np.array(c["C"]) @ yc - np.array(c["d"])).max()) for c in r["clauses"]) > 0


def test_the_suite_varies_architectures_and_property_shapes():
    kinds = {(a, k) for _, a, k in plan(50)}
    assert {a for a, _ in kinds} >= {"mlp_relu", "mlp_tanh", "mlp_sigmoid", "cnn", "cnn_bn", "residual", "mlp_bn"}
    assert {k for _, k in kinds} == {"robustness", "targeted", "conjunction", "coefficients"}


def test_unsat_instances_are_proved_by_an_exact_backend_and_the_audit_passes_for_ours(capsys, suite):
    code, out, err = cli(capsys, "audit", suite, "--verifier", "milp", "--timeout", "10", "--json")
    rows, summary = json_lines(out)
    assert code == 0, err
    assert summary["unsound"] == summary["bad_counterexample"] == summary["contradiction"] == 0
    for r in rows:
        if r["expected"] == "unsat":
            assert r["status"] == "correct", r
    code, out, _ = cli(capsys, "audit", suite, "--verifier", "crown", "--timeout", "5", "--json")
    assert code == 0 and json_lines(out)[1]["unsound"] == 0


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "run_instance.sh"
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_verifier_that_always_proves_is_caught(capsys, suite, tmp_path):
    liar = _script(tmp_path, 'echo unsat > "$5"\n')
    code, out, _ = cli(capsys, "audit", suite, "--verifier", f"external:{liar}", "--json")
    rows, summary = json_lines(out)
    assert code == 1
    assert summary["unsound"] == sum(r["expected"] == "sat" for r in manifest(suite)) > 0
    assert all(r["status"] == ("unsound" if r["expected"] == "sat" else "correct") for r in rows)


def test_a_counterexample_that_does_not_replay_is_caught(capsys, suite, tmp_path):
    """A tool answering sat with the box's lower corner (safe: the pocket is elsewhere) is judged by
    re-running that point, not by believing the word."""
    r0 = manifest(suite)[0]
    pairs = " ".join([f"(X_{i} {v!r})" for i, v in enumerate(r0["lower"])]
                     + [f"(Y_{j} 0.0)" for j in range(r0["n_outputs"])])
    fake = _script(tmp_path, f'printf "sat\\n({pairs})\\n" > "$5"\n')
    code, out, _ = cli(capsys, "audit", suite / "instances.csv", "--verifier", f"external:{fake}", "--json")
    rows, summary = json_lines(out)
    assert code == 1 and summary["bad_counterexample"] >= 1
    assert rows[0]["status"] == "bad_counterexample" and "no unsafe clause" in rows[0]["note"]


def test_our_run_instance_script_through_the_external_interface(capsys, suite, tmp_path):
    small = tmp_path / "two.csv"
    lines = (suite / "instances.csv").read_text().splitlines()
    small.write_text("\n".join([lines[0]] + [ln.replace("onnx/", f"{suite}/onnx/").replace("vnnlib/", f"{suite}/vnnlib/")
                                             for ln in lines[1:3]]) + "\n")
    code, out, err = cli(capsys, "audit", small, "--verifier", f"external:{REPO / 'vnncomp' / 'run_instance.sh'}",
                         "--timeout", "20", "--json")
    rows, summary = json_lines(out)
    assert code == 0, err
    assert summary["unsound"] == 0 and summary["bad_counterexample"] == 0 and len(rows) == 2


@pytest.mark.slow
def test_the_mutation_audit_catches_the_whole_catalogue(capsys, suite):
    code, out, err = cli(capsys, "audit-mutations", suite, "--json")
    rows, summary = json_lines(out)
    missed = [r["name"] for r in rows if not r["caught"]]
    assert summary["control_failures"] == []  # the checks pass on the unmutated code
    assert not missed and summary["catch_rate"] == 1.0 and code == 0, missed


def test_generation_is_reproducible(tmp_path):
    a = generate_suite(tmp_path / "a", 2, seed=5, gauntlet_options=QUICK, log=lambda s: None)
    b = generate_suite(tmp_path / "b", 2, seed=5, gauntlet_options=QUICK, log=lambda s: None)
    assert [r.x_star for r in a] == [r.x_star for r in b] and [r.name for r in a] == [r.name for r in b]
    assert (tmp_path / "a" / a[0].vnnlib).read_text() == (tmp_path / "b" / b[0].vnnlib).read_text()


def test_audit_input_errors(capsys, tmp_path, suite):
    code, _, err = cli(capsys, "audit", suite, "--verifier", "nope")
    assert_usage_error(code, err, "nope")
    code, _, err = cli(capsys, "audit", suite, "--verifier", "external:/no/such/run_instance.sh")
    assert_input_error(code, err, "/no/such/run_instance.sh")
    code, _, err = cli(capsys, "audit-mutations", tmp_path)
    assert_input_error(code, err, "manifest.json")
    code, _, err = cli(capsys, "audit-mutations", suite, "--only", "bogus")
    assert_usage_error(code, err, "bogus")
