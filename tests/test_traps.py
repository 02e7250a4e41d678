"""The floating-point and import trap suite (certify.audit.traps) and the audit's exact judging.

The traps are generated into a temporary folder (the truth of each is re-established there: sat traps
replay their recorded counterexample in onnxruntime, unsat traps enumerate every float32 input of a 1-D
box or rest on a stated IEEE argument), then our backends are audited on them *together*: no unsound
claim, no counterexample failing exact replay, no contradiction between backends, no crash."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from certify.audit.run import (BAD_CEX, CONTRADICTION, CORRECT, CRASH, UNSOUND, AuditRow, _truth_from_vnnlib,
                               audit, cross_check, onnx_output, truth_of_record)
from certify.audit.traps import generate_traps, traps
from test_cli import cli, json_lines

BACKENDS = ("ibp", "crown", "alpha-crown", "milp", "auto")


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traps")
    records = generate_traps(out, timeout=2.0, log=lambda s: None)
    assert len(records) == len(traps())
    return out


@pytest.fixture(scope="module")
def records(suite) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((suite / "manifest.json").read_text())["instances"]}


@pytest.fixture(scope="module")
def rows(suite) -> list[AuditRow]:
    return audit(suite, list(BACKENDS), timeout=2.0)  # attack on (the API's default)


def test_the_catalogue_covers_every_family_with_sat_and_unsat_traps(records):
    families = {r["family"] for r in records.values()}
    assert families == {"cancellation", "subnormal", "tiny_huge", "runtime_rounding", "batchnorm", "cast",
                        "vnnlib_constants", "strict"}
    for fam in families:
        assert {r["expected"] for r in records.values() if r["family"] == fam} == {"sat", "unsat"}, fam
    for r in records.values():
        assert r["argument"] and r["expected"] in r["acceptable"] and "unsat" not in r["acceptable"][1:]
        assert (r["x_star"] is not None) == (r["expected"] == "sat")
    assert records["subnormal_f64_weight_sat"]["dtype"] == "float64"
    assert records["cancel_2p24_unsat"]["notes"]["enumerated_inputs"] == 2 ** 23 + 1


def test_sat_traps_replay_in_a_fresh_onnxruntime_session(suite, records):
    for r in records.values():
        if r["expected"] != "sat":
            continue
        x = np.array(r["x_star"])
        dtype = np.float64 if r["dtype"] == "float64" else np.float32
        sess = ort.InferenceSession(str(suite / r["onnx"]), providers=["CPUExecutionProvider"])
        y = float(sess.run(None, {"X": x.astype(dtype).reshape(1, 1)})[0].reshape(-1)[0])
        assert y == r["notes"]["runtime_output_at_x_star"], r["name"]
        assert truth_of_record(r).check(suite / r["onnx"], x, (1,)) == "", r["name"]
        assert _truth_from_vnnlib(suite / r["vnnlib"]).check(suite / r["onnx"], x, (1,)) == "", r["name"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_on_the_traps(rows, backend):
    mine = [r for r in rows if r.verifier == backend]
    assert len(mine) == len(traps())
    bad = [(r.instance, r.answer, r.status, r.note) for r in mine if r.status in (UNSOUND, BAD_CEX, CONTRADICTION, CRASH)]
    assert not bad, bad
    # the sat traps whose counterexample the attack finds trivially are found by every backend
    for name in ("cancel_2p24_sat", "strict_input_sat", "strict_output_sat", "vnnlib_cancel_sat"):
        assert next(r for r in mine if r.instance == name).status == CORRECT, (backend, name)


def test_the_judge_is_exact_on_the_traps(suite, records):
    def check(name, x):
        r = records[name]
        return truth_of_record(r).check(suite / r["onnx"], np.array([x]), (1,))

    # strict input bound: x = 0 is outside (> X_0 0), although y = -0 >= 0 there
    assert "outside the input box" in check("strict_input_unsat", 0.0)
    assert check("strict_input_sat", 0.0) == ""
    # strict output row: y = 0 is not > 0
    assert "no unsafe clause" in check("strict_output_unsat", -0.5)
    # y = 3.5: 1e16 + y <= 1e16 + 3 in float64, not exactly
    assert 1e16 + 3.5 <= 1e16 + 3
    assert "no unsafe clause" in check("vnnlib_cancel_unsat", 3.5)
    assert "outside the input box" in check("vnnlib_cancel_unsat", 3.0000001)  # float32: 3.0 < 3.0000002
    # float64 models run in float64: 1e-310 x is not flushed by a float32 cast
    y = onnx_output(suite / records["subnormal_f64_weight_sat"]["onnx"], np.array([2.0]), (1,))
    assert 1e-310 < y[0] < 3e-310
    # a counterexample given in float64 is judged as the float32 input the model is fed
    assert "as the float32 input" in check("cancel_2p24_unsat", 1.0 + 1e-12)


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name / "run_instance.sh"
    path.parent.mkdir()
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_boundary_counterexamples_of_strict_traps_are_bad(capsys, suite, tmp_path):
    """A tool treating > as >= answers sat at the boundary: the audit re-runs the point and rejects it."""
    csv = tmp_path / "strict.csv"
    csv.write_text("onnx,vnnlib,timeout_s,expected\n"
                   f"{suite}/onnx/strict_input_unsat.onnx,{suite}/vnnlib/strict_input_unsat.vnnlib,5,unsat\n")
    fake = _script(tmp_path, "fake", 'printf "sat\\n((X_0 0.0) (Y_0 -0.0))\\n" > "$5"\n')
    code, out, _ = cli(capsys, "audit", csv, "--verifier", f"external:{fake}", "--json")
    rows, summary = json_lines(out)
    assert code == 1 and summary["bad_counterexample"] == 1 and "outside" in rows[0]["note"]


def test_disagreeing_backends_are_a_contradiction_and_exit_1(capsys, suite, tmp_path):
    """Without any expectation, a tool proving what crown refutes with a replayed counterexample is caught by
    running both over the same instances."""
    csv = tmp_path / "plain.csv"
    csv.write_text("onnx,vnnlib,timeout_s\n"
                   f"{suite}/onnx/cancel_2p24_sat.onnx,{suite}/vnnlib/cancel_2p24_sat.vnnlib,5\n"
                   f"{suite}/onnx/tiny_huge_unsat.onnx,{suite}/vnnlib/tiny_huge_unsat.vnnlib,5\n")
    liar = _script(tmp_path, "liar", 'echo unsat > "$5"\n')
    code, out, err = cli(capsys, "audit", csv, "--verifier", f"crown,external:{liar}", "--json")
    rows, summary = json_lines(out)
    assert code == 1, err
    assert summary["contradiction"] == 2 and summary["unsound"] == 0
    assert summary["per_verifier"]["crown"]["contradiction"] == 1
    first = [r for r in rows if r["instance"] == "cancel_2p24_sat"]
    assert {r["status"] for r in first} == {"contradiction"} and "crown" in first[1]["note"]
    second = [r for r in rows if r["instance"] == "tiny_huge_unsat"]
    assert {r["status"] for r in second} == {"unknown"}  # both prove, no expectation: nothing to contradict
    # the same tool alone, with the traps' expectations: an unsound claim
    code, out, _ = cli(capsys, "audit", suite, "--verifier", f"external:{liar}", "--json")
    assert code == 1 and json_lines(out)[1]["unsound"] == sum(r.expected == "sat" for r in traps())


def test_cross_check_keeps_the_worse_finding():
    rows = [AuditRow("i", "sat", "unsat", UNSOUND, 0.1, "", "a"), AuditRow("i", "sat", "sat", CORRECT, 0.1, "", "b"),
            AuditRow("i", "sat", "sat", BAD_CEX, 0.1, "", "c")]
    out = cross_check(rows)
    assert [r.status for r in out] == [UNSOUND, CONTRADICTION, BAD_CEX]


def test_audit_suite_cli_writes_the_trap_family(capsys, tmp_path):
    code, out, err = cli(capsys, "audit-suite", tmp_path / "t", "--family", "traps", "--timeout", "3")
    assert code == 0, err and "traps" in out
    assert (tmp_path / "t" / "manifest.json").exists()
    lines = (tmp_path / "t" / "instances.csv").read_text().splitlines()
    assert lines[0] == "onnx,vnnlib,timeout_s,expected" and len(lines) == len(traps()) + 1
    assert all(",3," in ln for ln in lines[1:])


def test_the_trap_vnnlib_states_the_manifest_exactly(suite):
    from certify.audit.differential import vnnlib_against_manifest

    assert vnnlib_against_manifest(suite) == []
