"""The command line's contract, walked as a table: every documented exit code with the one-line message
that goes with it, progress when stderr is not a terminal, answers that carry what they certified, eps
sweeps, the audit suite's unsat share, the README agreeing with all of it, and a start-up that does not
import what the command does not use."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import certify
from certify.cli import ExitCode
from test_cli import NPZ, ONNX, SPECS, cli, json_lines

ROOT = Path(__file__).resolve().parents[1]
PROVED_SPEC = SPECS[0]  # digit0_label6_eps0.02: proved by IBP
FALSIFIED_SPEC = next(s for s in SPECS if "eps0.3" in s.name)


@pytest.fixture(scope="module")
def pickled_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pickled.pt"
    torch.save({"x": np.zeros((2, 64)), "y": [object()]}, path)  # needs full unpickling
    return path


# (argv, exit code, facts the one-line message names); {npz} {onnx} {spec} {tmp} are filled in
USAGE = [
    (["verify", "{onnx}", "--data", "{npz}", "--eps", "-0.05"], ["--eps", "-0.05"]),
    (["verify", "{onnx}", "--data", "{npz}", "--eps", "abc"], ["--eps", "abc"]),
    (["verify", "{onnx}", "--data", "{npz}"], ["--eps"]),
    (["verify", "{onnx}", "{spec}", "--method", "foo"], ["--method", "foo", "crown"]),
    (["verify", "{onnx}", "--data", "{npz}", "--eps", "0.1", "--clip", "1,0"], ["--clip", "1,0"]),
    (["verify", "{onnx}", "{spec}", "--timeout", "0"], ["--timeout", "0", "positive"]),
    (["verify", "{onnx}", "{spec}", "--timeout", "-3"], ["--timeout", "-3"]),
    (["verify", "{onnx}", "{spec}", "--eps", "0.1"], ["--eps", "--data"]),
    (["verify", "{onnx}", "{spec}", "--threads", "0"], ["--threads", "0"]),
    (["verify", "{onnx}", "{spec}", "--plot", "{tmp}/p.png"], ["--plot", "--data"]),
    (["verify", "{onnx}"], ["--data"]),
    (["verify"], ["required", "model"]),
    (["verify", "{onnx}", "{spec}", "--no-such-flag"], ["--no-such-flag"]),
    (["smooth", "{onnx}", "--data", "{npz}", "--sigma", "-1"], ["--sigma"]),
    (["bench", "{tmp}/x.csv", "--timeout", "0"], ["--timeout"]),
    (["bench", "{tmp}/x.csv", "--method", "foo"], ["--method", "foo"]),
    (["audit-suite", "{tmp}/suite", "--instances", "0"], ["--instances"]),
    (["train", "--data", "digits:train", "--out", "{tmp}/m.pt", "--loss", "nope"], ["--loss", "nope"]),
    (["nonsense"], ["invalid choice", "nonsense"]),
]
INPUT = [
    (["verify", "{tmp}/missing.onnx", "{spec}"], ["missing.onnx"]),
    (["verify", "{onnx}", "{tmp}/missing.vnnlib"], ["missing.vnnlib"]),
    (["verify", "{onnx}", "--data", "{tmp}/some.csv", "--eps", "0.1"], ["some.csv", ".npz"]),
    (["verify", "{onnx}", "--data", "{pickled}", "--eps", "0.1"], ["pickled.pt", "weights_only=True"]),
    (["verify", "{onnx}", "{spec}", "--out", "{tmp}/no/dir/c.json"], ["--out", "does not exist"]),
    (["bench", "{tmp}/missing.csv"], ["missing.csv"]),
]


def _fill(argv: list[str], tmp_path: Path, pickled: Path) -> list[str]:
    values = {"onnx": str(ONNX), "npz": str(NPZ), "spec": str(PROVED_SPEC), "tmp": str(tmp_path),
              "pickled": str(pickled)}
    return [a.format(**values) for a in argv]


def _one_line_error(err: str, command: str, facts: list[str]) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"certify {command}: error: "), err
    assert "Traceback" not in err and "usage:" not in err, err
    for fact in facts:
        assert fact in err, f"{fact!r} not in {err!r}"
    for leak in ("Weights only load failed", "PyTorch 2.6", "Warning:"):  # library text never reaches the user
        assert leak not in err, err


@pytest.mark.parametrize("argv, facts", USAGE, ids=[" ".join(a[:1] + a[-2:]) for a, _ in USAGE])
def test_usage_errors_exit_2_with_one_line(capsys, tmp_path, pickled_data, argv, facts):
    (tmp_path / "some.csv").write_text("a,b\n1,2\n")
    code, _, err = cli(capsys, *_fill(argv, tmp_path, pickled_data))
    assert code == ExitCode.USAGE == 2, err
    command = argv[0] if argv[0] != "nonsense" else ""
    if command:
        _one_line_error(err, command, facts)
    else:  # no command: the top-level parser's prefix
        assert err.strip().startswith("certify: error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, facts", INPUT, ids=[a[1].split("/")[-1] + " " + a[-1].split("/")[-1] for a, _ in INPUT])
def test_bad_files_exit_4_with_one_line(capsys, tmp_path, pickled_data, argv, facts):
    (tmp_path / "some.csv").write_text("a,b\n1,2\n")
    code, _, err = cli(capsys, *_fill(argv, tmp_path, pickled_data))
    assert code == ExitCode.INPUT_ERROR == 4, err
    _one_line_error(err, argv[0], facts)
    assert "Weights only load failed" not in err


def test_answers_exit_0_1_3(capsys):
    assert cli(capsys, "verify", ONNX, PROVED_SPEC)[0] == ExitCode.PROVED == 0
    assert cli(capsys, "verify", ONNX, FALSIFIED_SPEC)[0] == ExitCode.FALSIFIED == 1
    # the attack alone never proves: unknown
    assert cli(capsys, "verify", ONNX, PROVED_SPEC, "--method", "pgd")[0] == ExitCode.UNKNOWN == 3


@pytest.mark.parametrize("exc, code", [(RuntimeError("boom"), ExitCode.INTERNAL), (KeyboardInterrupt(), 130)])
def test_internal_error_and_interrupt(capsys, monkeypatch, exc, code):
    def explode(*a, **k):
        raise exc

    monkeypatch.setattr(certify.api, "verify", explode)
    got, _, err = cli(capsys, "verify", ONNX, PROVED_SPEC)
    assert got == code
    assert len(err.strip().splitlines()) == 1 and err.startswith("certify verify: ") and "Traceback" not in err
    if code == ExitCode.INTERNAL:
        assert "internal error" in err and "RuntimeError: boom" in err and "--debug" in err


def test_library_warnings_do_not_reach_the_user(capsys, monkeypatch):
    import warnings

    real = certify.api.verify

    def noisy(*a, **k):
        warnings.warn("some library's deprecation notice", UserWarning)
        return real(*a, **k)

    monkeypatch.setattr(certify.api, "verify", noisy)
    code, _, err = cli(capsys, "verify", ONNX, PROVED_SPEC, "--quiet")
    assert code == 0 and "deprecation notice" not in err


def test_readme_lists_the_exit_codes_the_tests_check():
    text = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\|\s*`(\d+)`\s*\|\s*([^|]+?)\s*\|", text, re.M))
    expected = {"0": "proved", "1": "falsified", "2": "usage", "3": "unknown", "4": "bad input", "5": "internal",
                "130": "interrupted"}
    assert set(table) == set(expected), table
    for code, word in expected.items():
        assert word in table[code].lower(), (code, table[code])
    assert {e.value for e in ExitCode} | {130} == {int(c) for c in table}
    assert re.search(r"test suite takes about\s+\d+\s+minutes", text), "the README gives the suite's duration"
    assert re.search(r"certify verify \S+ --data \S+ --eps [\d.]+(,[\d.]+)+ .*--plot \S+\.png", text)


# --------------------------------------------------------------------------------------------
# progress off a terminal
# --------------------------------------------------------------------------------------------


def test_progress_lines_when_stderr_is_not_a_terminal(capsys):
    code, _, err = cli(capsys, "verify", ONNX, "--data", NPZ, "--eps", "0.01", "--limit", "3", "--method", "ibp",
                       "--no-attack")
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("certify verify: ")]
    assert lines, err
    assert re.search(r"certify verify: 3/3 properties: proved 3; [\d.]+ s elapsed$", lines[-1]), lines
    code, out, err = cli(capsys, "verify", ONNX, "--data", NPZ, "--eps", "0.01", "--limit", "3", "--method", "ibp",
                         "--no-attack", "--quiet")
    assert code == 0 and err == ""
    assert out.splitlines()[0].strip(), "--quiet starts with the summary, not a blank line"


def test_progress_is_throttled_and_estimates_the_rest():
    import io

    from certify.cli.common import Progress

    class Log(io.StringIO):
        def isatty(self) -> bool:
            return False

    log = Log()
    p = Progress(100, "properties", label="certify verify", every=3600, stream=log)
    for i in range(100):
        p.step("proved" if i % 2 else "unknown")
    p.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2  # the first finished item, then the end
    assert lines[0].startswith("certify verify: 1/100 properties: unknown 1;") and "left" in lines[0]
    assert lines[1].startswith("certify verify: 100/100 properties: unknown 50, proved 50;")


# --------------------------------------------------------------------------------------------
# every answer carries what it certified
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bab", "milp", "auto"])
def test_proofs_carry_certified_bounds_below_every_sampled_margin(method):
    """Ground truth: the certified lower bound of each clause is at most the margin at every sampled input,
    and positive for a proof; a falsification carries its counterexample's (non-positive) margin."""
    model = certify.load_model(str(ONNX))
    prop = certify.read_vnnlib(str(PROVED_SPEC))
    result = certify.verify(model, prop, method, timeout=60)
    assert result.verdict is certify.Verdict.PROVED
    assert result.bounds and all(len(b) == len(s.unsafe) for b, s in zip(result.bounds, prop.specs))
    assert result.margin_lower is not None and result.margin_lower >= 0
    spec = prop.specs[0]
    box = spec.input.bounds()
    rng = np.random.default_rng(0)
    lo, hi = box.lower[0].numpy().reshape(-1), box.upper[0].numpy().reshape(-1)
    pts = lo + rng.random((500, lo.size)) * (hi - lo)
    y = torch.as_tensor(model.reference(pts.reshape(500, *model.input_shape).astype(np.float32)), dtype=torch.float64)
    margins = spec.clause_margins(y.unsqueeze(1))[:, 0]  # [N, K]
    assert (margins.min(0).values.numpy() >= np.asarray(result.bounds[0]) - 1e-9).all()
    d = result.to_dict()
    assert d["margin"]["lower"] == result.margin_lower and d["margin"]["upper"] is None

    falsified = certify.verify(model, certify.read_vnnlib(str(FALSIFIED_SPEC)), method, timeout=60)
    assert falsified.verdict is certify.Verdict.FALSIFIED
    assert falsified.margin_upper is not None and falsified.margin_upper <= 0
    assert falsified.to_dict()["margin"]["upper"] == falsified.margin_upper


def test_table_and_certificate_show_the_margin(capsys, tmp_path):
    cert = tmp_path / "c.json"
    code, out, _ = cli(capsys, "verify", ONNX, PROVED_SPEC, "--method", "bab", "--out", cert)
    assert code == 0
    row = next(ln for ln in out.splitlines() if PROVED_SPEC.stem in ln)
    assert re.search(r">= \+\d", row), row
    saved = json.loads(cert.read_text())["results"][0]
    assert saved["bounds"] and saved["margin"]["lower"] > 0
    code, out, _ = cli(capsys, "verify", ONNX, FALSIFIED_SPEC, "--method", "bab")
    assert re.search(r"<= -[\d.]+ \(cex\)", out), out


# --------------------------------------------------------------------------------------------
# eps sweeps
# --------------------------------------------------------------------------------------------


def test_eps_sweep_table_json_and_plot(capsys, tmp_path):
    png = tmp_path / "acc.png"
    code, out, err = cli(capsys, "verify", ONNX, "--data", NPZ, "--limit", "4", "--eps", "0.005,0.05,0.3",
                         "--method", "ibp,crown", "--clip", "0,1", "--timeout", "5", "--plot", png, "--json")
    lines, summary = json_lines(out)
    assert len(lines) == 4 * 2 * 3 and {ln["eps"] for ln in lines} == {"0.005", "0.05", "0.3"}
    sweep = summary["sweep"]
    assert [s["eps"] for s in sweep] == ["0.005", "0.05", "0.3"]
    for s in sweep:
        for m in ("ibp", "crown"):
            assert s["methods"][m]["certified"] <= s["pgd_upper_bound"] <= 1.0
        assert s["pgd_upper_bound"] <= s["clean"] + 1e-12 or s["clean"] == 1.0
    ibp = [s["methods"]["ibp"]["certified"] for s in sweep]
    assert ibp == sorted(ibp, reverse=True)  # interval bounds only loosen as the ball grows
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = cli(capsys, "verify", ONNX, "--data", NPZ, "--limit", "2", "--eps", "0.005,0.3", "--method", "ibp",
                       "--quiet")
    assert "against eps" in out and re.search(r"^0\.3\s", out, re.M), out


def test_sweep_refuses_single_run_outputs(capsys, tmp_path):
    code, _, err = cli(capsys, "verify", ONNX, "--data", NPZ, "--eps", "0.1,0.2", "--out", tmp_path / "c.json")
    assert code == 2 and "one --eps" in err


# --------------------------------------------------------------------------------------------
# audit-suite, bench markdown, start-up
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 9, 50])
def test_audit_suite_plans_unsat_instances_at_every_size(n):
    from certify.audit.generate import plan

    kinds = [expected for expected, _, _ in plan(n)]
    assert kinds.count("unsat") >= 1 and kinds.count("sat") >= 1
    assert kinds.count("unsat") == max(1, round(0.2 * n))


def test_bench_markdown_has_no_empty_header():
    from certify.bench import Outcome, markdown

    o = Outcome(onnx="a.onnx", vnnlib="p.vnnlib", timeout=1.0, answer="unsat", expected="unsat", method="ibp",
                time_s=0.1, note="")
    for line in markdown([o], per_instance=True).splitlines():
        if line.startswith("|"):
            assert "||" not in line.replace(" ", ""), line


@pytest.mark.parametrize("argv", [["--help"], ["backends"], ["verify", "--help"]])
def test_startup_imports_no_torch_for_help_and_backends(argv):
    code = ("import sys\nfrom certify.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'onnx', 'scipy', 'cvxpy', 'z3', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "HEAVY []" in out.stderr, out.stderr[-500:]


def test_verify_imports_no_solver_or_plotting_it_does_not_use():
    code = ("import sys\nfrom certify.cli import main\nmain(['verify', %r, %r, '--method', 'crown', '--quiet'])\n"
            "print('HEAVY', [m for m in ('cvxpy', 'z3', 'matplotlib', 'onnx.reference') if m in sys.modules], "
            "file=sys.stderr)" % (str(ONNX), str(PROVED_SPEC)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "HEAVY []" in out.stderr, out.stderr[-500:]


def test_readme_python_snippet_prints_certified_bounds(tmp_path):
    """The README's Python example, run on the bundled model: it prints a verdict and non-empty bounds."""
    text = (ROOT / "README.md").read_text()
    snippet = text.split("From Python:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    snippet = snippet.replace('"net.onnx"', repr(str(ONNX))).replace('"prop.vnnlib"', repr(str(PROVED_SPEC)))
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-800:]
    first = out.stdout.splitlines()[0]
    assert first.startswith("Verdict.PROVED ") and "()" not in first, first
    assert float(first.split()[1]) > 0


def test_setup_announces_every_install_step():
    """A first setup takes minutes: every pip install in scripts/setup.sh is announced on stderr first."""
    lines = (ROOT / "scripts" / "setup.sh").read_text().splitlines()
    for i, line in enumerate(lines):
        if "pip install" in line and not line.strip().startswith(("#", "||")):
            before = " ".join(lines[max(0, i - 2):i])
            assert 'echo "setup: ' in before, line


def test_threads_flag_sets_torch_threads(capsys, monkeypatch):
    before = torch.get_num_threads()
    try:
        assert cli(capsys, "verify", ONNX, PROVED_SPEC, "--threads", "1", "--quiet")[0] == 0
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # default: the usable cores nothing else runs on
        from certify.cli import common

        monkeypatch.setattr(common, "busy_cores", lambda: 0)
        assert cli(capsys, "verify", ONNX, PROVED_SPEC, "--quiet")[0] == 0
        assert torch.get_num_threads() == common.usable_cores()
        monkeypatch.setattr(common, "busy_cores", lambda: 64)  # a loaded machine: one thread, never zero
        assert cli(capsys, "verify", ONNX, PROVED_SPEC, "--quiet")[0] == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
