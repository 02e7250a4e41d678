"""The audit runner: one verifier on a suite, judged against known answers.

A verifier is one of our backends (by registry name, or ``auto``) or an external tool behind the
VNN-COMP interface (``external:PATH/run_instance.sh``, called as ``run_instance.sh v1 audit ONNX
VNNLIB RESULT TIMEOUT``, after ``prepare_instance.sh`` when one sits beside it).

Judgement per instance, *independently of certify's own checks*: a ``sat`` answer's counterexample
(ours: the replayed one; external: the result file's) is re-run in a fresh onnxruntime session and
checked against the input box and unsafe clauses stored in the suite's ``manifest.json`` (or, for a
plain instances file, the VNN-LIB as parsed). Statuses:

* ``unsound``: ``unsat`` (proved) on an instance with a known counterexample -- the worst bug;
* ``bad_counterexample``: ``sat`` whose counterexample is outside the box or does not reach an unsafe
  clause on replay;
* ``contradiction``: a replayed counterexample on an instance expected ``unsat`` (the expectation is wrong);
* ``correct``: the expected answer (with a replaying counterexample for ``sat``);
* ``unknown``: timeout, unknown, error, or no expectation to judge against.
"""
from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CertifyError

UNSOUND, BAD_CEX, CONTRADICTION, CORRECT, UNKNOWN = "unsound", "bad_counterexample", "contradiction", "correct", "unknown"
STATUSES = (UNSOUND, BAD_CEX, CONTRADICTION, CORRECT, UNKNOWN)


@dataclass(frozen=True)
class AuditRow:
    instance: str
    expected: str | None
    answer: str
    status: str
    time_s: float
    note: str = ""


@dataclass(frozen=True)
class Truth:
    """What the auditor checks a counterexample against: the input box and the unsafe clauses."""

    lower: np.ndarray
    upper: np.ndarray
    clauses: list[tuple[np.ndarray, np.ndarray]]

    def check(self, onnx_path: Path, x: np.ndarray, input_shape: tuple[int, ...] | None = None) -> str:
        """"" when ``x`` is a genuine counterexample, else why not."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size != self.lower.size:
            return f"counterexample has {x.size} inputs, the property {self.lower.size}"
        if not (np.all(x >= self.lower) and np.all(x <= self.upper)):
            worst = float(np.max(np.maximum(self.lower - x, x - self.upper)))
            return f"counterexample lies outside the input box (by {worst:.3g})"
        y = onnx_output(onnx_path, x.astype(np.float32), input_shape)
        margins = [float((C @ y - d).max()) for C, d in self.clauses]
        if min(margins) > 0:
            return f"replayed output reaches no unsafe clause (smallest clause margin {min(margins):.3g})"
        return ""


def onnx_output(path: Path, x: np.ndarray, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = input_shape or tuple(int(s) if isinstance(s, int) else 1 for s in inp.shape[1:])
    out = sess.run(None, {inp.name: x.astype(np.float32).reshape(1, *shape)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def _truths(suite_csv: Path) -> dict[str, tuple[Truth, tuple[int, ...]]]:
    manifest = suite_csv.parent / "manifest.json"
    if not manifest.exists():
        return {}
    out = {}
    for r in json.loads(manifest.read_text())["instances"]:
        clauses = [(np.array(c["C"], dtype=np.float64), np.array(c["d"], dtype=np.float64)) for c in r["clauses"]]
        truth = Truth(np.array(r["lower"]), np.array(r["upper"]), clauses)
        out[str((suite_csv.parent / r["vnnlib"]).resolve())] = (truth, tuple(r["input_shape"]))
    return out


def _truth_from_vnnlib(path: Path) -> Truth:
    from ..vnnlib import read_vnnlib

    prop = read_vnnlib(path)
    if len(prop.specs) != 1 or prop.specs[0].batch_size != 1:
        raise CertifyError(f"{path}: the auditor checks single-box properties only")
    spec = prop.specs[0]
    box = spec.input.bounds()
    return Truth(box.lower.reshape(-1).numpy(), box.upper.reshape(-1).numpy(),
                 [(c.C[0].numpy(), c.d[0].numpy()) for c in spec.unsafe])


def _ours(verifier: str, onnx: Path, vnnlib: Path, timeout: float, cache: dict) -> tuple[str, np.ndarray | None, str]:
    from .. import api
    from ..models import load_model
    from ..results import Verdict
    from ..vnncomp import answer
    from ..vnnlib import read_vnnlib

    if onnx not in cache:
        cache[onnx] = load_model(onnx)
    result = api.verify(cache[onnx], read_vnnlib(vnnlib), verifier, timeout=timeout)
    cex = result.counterexample.x if result.verdict is Verdict.FALSIFIED else None
    return answer([result]), cex, result.reason or result.claim


def _external(script: Path, onnx: Path, vnnlib: Path, timeout: float) -> tuple[str, np.ndarray | None, str]:
    from ..vnnlib import read_counterexample

    prepare = script.parent / "prepare_instance.sh"
    grace = 30.0
    if prepare.exists():
        subprocess.run(["bash", str(prepare), "v1", "audit", str(onnx), str(vnnlib)], capture_output=True,
                       timeout=timeout + grace)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.txt"
        try:
            proc = subprocess.run(["bash", str(script), "v1", "audit", str(onnx), str(vnnlib), str(result),
                                   f"{timeout:g}"], capture_output=True, text=True, timeout=timeout + grace)
        except subprocess.TimeoutExpired:
            return "timeout", None, f"killed {grace:g}s after the timeout"
        if not result.exists():
            return "error", None, f"no result file (exit {proc.returncode}: {proc.stderr.strip()[-200:]})"
        text = result.read_text()
        word = text.strip().split()[0].lower() if text.strip() else "error"
        if word in ("violated",):
            word = "sat"
        if word in ("holds",):
            word = "unsat"
        if word != "sat":
            return word, None, ""
        try:
            x, _ = read_counterexample(result)
        except CertifyError as exc:
            return "sat", None, f"unreadable counterexample: {exc}"
        return "sat", x, ""


def judge(expected: str | None, word: str, cex: np.ndarray | None, truth: Truth | None, onnx: Path,
          shape: tuple[int, ...] | None) -> tuple[str, str]:
    """``(status, note)`` for one answer (module docstring)."""
    if word == "unsat":
        if expected == "sat":
            return UNSOUND, "proved, but the instance has a known counterexample"
        return (CORRECT, "") if expected == "unsat" else (UNKNOWN, "no expected answer")
    if word == "sat":
        if cex is None:
            return BAD_CEX, "sat without a readable counterexample"
        why = truth.check(onnx, cex, shape) if truth is not None else ""
        if why:
            return BAD_CEX, why
        if expected == "unsat":
            return CONTRADICTION, "a replayed counterexample on an instance expected to hold"
        return (CORRECT, "") if expected == "sat" else (UNKNOWN, "no expected answer")
    return UNKNOWN, ""  # the row keeps the verifier's own reason


def audit(suite: str | Path, verifier: str, timeout: float | None = None,
          on_row: Callable[[AuditRow], None] | None = None) -> list[AuditRow]:
    """Run ``verifier`` on every instance of ``suite`` (an instances CSV, or a folder holding one)."""
    from ..bench import read_instances

    path = Path(suite)
    csv_path = path / "instances.csv" if path.is_dir() else path
    instances = read_instances(csv_path)
    truths = _truths(csv_path)
    external = Path(verifier.split(":", 1)[1]) if verifier.startswith("external:") else None
    if external is not None and not external.exists():
        raise CertifyError(f"--verifier {verifier}: no such script {external}")
    if external is None:
        from .. import registry

        if verifier != "auto":
            registry.get(verifier)
    rows, cache = [], {}
    for inst in instances:
        limit = inst.timeout if timeout is None else timeout
        key = str(Path(inst.vnnlib).resolve())
        truth, shape = truths.get(key, (None, None))
        if truth is None:
            truth = _truth_from_vnnlib(inst.vnnlib)
        t0 = time.perf_counter()
        try:
            if external is not None:
                word, cex, note = _external(external, inst.onnx, inst.vnnlib, limit)
            else:
                word, cex, note = _ours(verifier, inst.onnx, inst.vnnlib, limit, cache)
        except CertifyError as exc:
            word, cex, note = "error", None, str(exc)
        dt = time.perf_counter() - t0
        status, why = judge(inst.expected, word, cex, truth, inst.onnx, shape)
        row = AuditRow(Path(inst.vnnlib).stem, inst.expected, word, status, dt, why or note)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def totals(rows: list[AuditRow]) -> dict:
    out = {s: sum(r.status == s for r in rows) for s in STATUSES}
    out.update(instances=len(rows), time_s=round(sum(r.time_s for r in rows), 3),
               median_s=round(float(np.median([r.time_s for r in rows])), 3) if rows else math.nan)
    return out


def as_dicts(rows: list[AuditRow]) -> list[dict]:
    return [asdict(r) for r in rows]
