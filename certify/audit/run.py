"""The audit runner: verifiers on a suite, judged against known answers and against each other.

A verifier is one of our backends (by registry name, or ``auto``) or an external tool behind the
VNN-COMP interface (``external:PATH/run_instance.sh``, called as ``run_instance.sh v1 audit ONNX
VNNLIB RESULT TIMEOUT``, after ``prepare_instance.sh`` when one sits beside it). Several verifiers
(``crown,milp,bab,auto``) run over the same suite, instance by instance.

Judgement per instance, *independently of certify's own checks*: a ``sat`` answer's counterexample
(ours: the replayed one; external: the result file's) is converted to the model's declared input type
(float64 for ``TensorProto.DOUBLE`` inputs, else float32/float16), re-run in a fresh onnxruntime session
and judged *exactly* (rational arithmetic, strict bounds and rows strictly; ``Spec.exact_contains`` and
``Spec.exact_reached``) against the input set and unsafe clauses stored in the suite's ``manifest.json``
(its rational ``exact`` statement when present, else its floats taken exactly) or, for a plain instances
file, the exact rational statement of the VNN-LIB as read. Statuses:

* ``unsound``: ``unsat`` (proved) on an instance with a known counterexample -- the worst bug;
* ``bad_counterexample``: ``sat`` whose counterexample is outside the input set or does not reach an
  unsafe clause on replay;
* ``contradiction``: a replayed counterexample on an instance expected ``unsat`` (the expectation is
  wrong), or, with several verifiers, one proving an instance on which another has a replayed
  counterexample (both rows);
* ``correct``: the expected answer (with a replaying counterexample for ``sat``);
* ``crash``: the verifier raised (other than certify's input errors) or reported ``backend_error``;
* ``unknown``: timeout, unknown, a refused model, or no expectation to judge against.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from fractions import Fraction
from typing import Callable

import numpy as np
import torch

from ..errors import CertifyError, UsageError
from ..sets import Box
from ..spec import Clause, ExactBox, Spec

UNSOUND, BAD_CEX, CONTRADICTION, CORRECT, UNKNOWN, CRASH = (
    "unsound", "bad_counterexample", "contradiction", "correct", "unknown", "crash")
STATUSES = (UNSOUND, BAD_CEX, CONTRADICTION, CORRECT, UNKNOWN, CRASH)
#: Statuses that make ``certify audit`` exit 1.
FAILURES = (UNSOUND, BAD_CEX, CONTRADICTION)


@dataclass(frozen=True)
class AuditRow:
    instance: str
    expected: str | None
    answer: str
    status: str
    time_s: float
    note: str = ""
    verifier: str = ""


@dataclass(frozen=True)
class Truth:
    """What the auditor checks a counterexample against: the *exact* input set and unsafe clauses, as a
    ``Spec`` whose ``exact_input`` / ``Clause.exact`` hold the rational statement (strict bounds and rows
    kept strict). Membership and the unsafe region are decided in rational arithmetic on the float
    values actually fed to and returned by onnxruntime (``Spec.exact_contains`` / ``exact_reached``)."""

    spec: Spec

    @property
    def lower(self) -> np.ndarray:
        return self.spec.input.bounds().lower.reshape(-1).numpy()

    @property
    def upper(self) -> np.ndarray:
        return self.spec.input.bounds().upper.reshape(-1).numpy()

    def check(self, onnx_path: Path, x: np.ndarray, input_shape: tuple[int, ...] | None = None) -> str:
        """"" when ``x`` is a genuine counterexample, else why not.

        ``x`` is first converted to the model's declared input type (float64 for a ``TensorProto.DOUBLE``
        input, float16 for FLOAT16, else float32): the point judged is the one the runtime is fed."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        n = self.spec.n_inputs
        if x.size != n:
            return f"counterexample has {x.size} inputs, the property {n}"
        if not np.all(np.isfinite(x)):
            return "counterexample has a non-finite input"
        sess, dtype = _session(onnx_path)
        with np.errstate(over="ignore"):
            fed = x.astype(dtype)
        rounded = "" if np.array_equal(fed.astype(np.float64), x) else f" (as the {np.dtype(dtype).name} input fed to the model)"
        if not np.all(np.isfinite(fed)) or not self.spec.exact_contains(fed.astype(np.float64)):
            lo, hi = self.lower, self.upper
            worst = float(np.max(np.maximum(lo - fed, fed - hi))) if np.all(np.isfinite(fed)) else math.inf
            return (f"counterexample lies outside the input box{rounded} (by {worst:.3g}; "
                    "judged exactly, strict bounds strictly)")
        y = _run(sess, fed, input_shape)
        if self.spec.exact_reached(y) is None:
            with np.errstate(all="ignore"):
                margins = [float(m) for m in self.spec.clause_margins(
                    torch.as_tensor(y, dtype=torch.float64).reshape(1, -1))[0]]
            return (f"replayed output reaches no unsafe clause (exactly, strict rows strictly; smallest clause "
                    f"margin in floats {min(margins):.3g}){rounded}")
        return ""


_DTYPES = {"tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(float)": np.float32}


def _session(path: Path):
    """A fresh onnxruntime session and the numpy type of the model's declared input."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if inp.type not in _DTYPES:
        raise CertifyError(f"{path}: the auditor feeds float inputs only, the model declares {inp.type}")
    return sess, _DTYPES[inp.type]


def _run(sess, x: np.ndarray, input_shape: tuple[int, ...] | None) -> np.ndarray:
    inp = sess.get_inputs()[0]
    shape = input_shape or tuple(int(s) if isinstance(s, int) else 1 for s in inp.shape[1:])
    out = sess.run(None, {inp.name: x.reshape(1, *shape)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def onnx_input_dtype(path: Path) -> type:
    """The numpy type of the model's declared input (float64 / float16 / float32)."""
    return _session(path)[1]


def onnx_output(path: Path, x: np.ndarray, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The model's output at ``x`` in a fresh onnxruntime session, ``x`` converted to the model's declared
    input type (float64 models are run in float64, not float32)."""
    sess, dtype = _session(path)
    return _run(sess, np.asarray(x, dtype=np.float64).astype(dtype), input_shape)


def _fractions(values: list) -> tuple:
    return tuple(Fraction(v) if isinstance(v, str) else (v if math.isinf(v) else Fraction(v)) for v in values)


def truth_of_record(r: dict) -> Truth:
    """The exact truth of one manifest entry, independently of the VNN-LIB parser: ``r["exact"]`` (rational
    strings with strictness, written by the trap generator) when present, else the manifest's float
    ``lower``, ``upper``, ``C``, ``d`` taken as exact, closed bounds and rows."""
    lower = np.array(r["lower"], dtype=np.float64).reshape(1, -1)
    upper = np.array(r["upper"], dtype=np.float64).reshape(1, -1)
    box = Box(torch.as_tensor(lower), torch.as_tensor(upper))
    ex = r.get("exact")
    exact_box = None
    exact_clauses = [None] * len(r["clauses"])
    if ex is not None:
        exact_box = ExactBox((_fractions(ex["lower"]),), (_fractions(ex["upper"]),),
                             (tuple(bool(v) for v in ex["lower_strict"]),), (tuple(bool(v) for v in ex["upper_strict"]),))
        exact_clauses = [((tuple((_fractions(row["coefs"]), Fraction(row["bound"]), bool(row["strict"])) for row in rows)),)
                         for rows in ex["clauses"]]
    clauses = tuple(Clause(torch.tensor(c["C"], dtype=torch.float64).reshape(1, len(c["d"]), -1),
                           torch.tensor(c["d"], dtype=torch.float64).reshape(1, -1), e)
                    for c, e in zip(r["clauses"], exact_clauses))
    return Truth(Spec(box, clauses, r.get("name", ""), exact_box))


def _truths(suite_csv: Path) -> dict[str, tuple[Truth, tuple[int, ...], list[str] | None]]:
    manifest = suite_csv.parent / "manifest.json"
    if not manifest.exists():
        return {}
    out = {}
    for r in json.loads(manifest.read_text())["instances"]:
        out[str((suite_csv.parent / r["vnnlib"]).resolve())] = (truth_of_record(r), tuple(r["input_shape"]),
                                                               r.get("acceptable"))
    return out


def _truth_from_vnnlib(path: Path) -> Truth:
    """The property as the VNN-LIB states it: the reader's exact rational box (strict bounds kept) and
    exact clause rows (not the float boxes and rows rounded from them)."""
    from ..vnnlib import read_vnnlib

    prop = read_vnnlib(path)
    if len(prop.specs) != 1 or prop.specs[0].batch_size != 1:
        raise CertifyError(f"{path}: the auditor checks single-box properties only")
    return Truth(prop.specs[0])


def _ours(verifier: str, onnx, vnnlib, timeout: float) -> tuple[str, np.ndarray | None, str]:
    """One of our backends on an instance (``onnx``, ``vnnlib``: ``certify.scale`` file references; each
    is read once per worker)."""
    from .. import api
    from ..results import Verdict
    from ..scale.worker import load_model_ref, read_vnnlib_ref
    from ..vnncomp import answer

    result = api.verify(load_model_ref(onnx), read_vnnlib_ref(vnnlib), verifier, timeout=timeout)
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


def _verifier_list(verifier: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"crown,milp"`` -> ``["crown", "milp"]`` (an ``external:`` path may itself hold no comma)."""
    names = [v.strip() for v in verifier.split(",")] if isinstance(verifier, str) else [str(v).strip() for v in verifier]
    names = [v for v in names if v]
    if not names:
        raise UsageError("--verifier: no verifier named")
    if len(set(names)) != len(names):
        raise UsageError(f"--verifier: a verifier is named twice in {','.join(names)}")
    return names


def _check_verifier(verifier: str) -> Path | None:
    external = Path(verifier.split(":", 1)[1]) if verifier.startswith("external:") else None
    if external is not None and not external.exists():
        raise CertifyError(f"--verifier {verifier}: no such script {external}")
    if external is None and verifier != "auto":
        from .. import registry

        if verifier not in registry.names():
            raise UsageError(f"--verifier: unknown backend {verifier!r}; registered: {', '.join(registry.names())}")
        registry.get(verifier)
    return external


def cross_check(rows: list[AuditRow]) -> list[AuditRow]:
    """The rows of one instance (one per verifier), with disagreements marked ``contradiction``: one
    verifier proves (``unsat``) while another gave a counterexample that replays in onnxruntime. Every row
    involved is marked (an ``unsound`` row stays ``unsound``, the worse finding), the note naming the other
    side. A ``sat`` whose counterexample does not replay is a ``bad_counterexample`` of its own and
    contradicts nothing."""
    proved = [r for r in rows if r.answer == "unsat"]
    refuted = [r for r in rows if r.answer == "sat" and r.status != BAD_CEX]
    if not proved or not refuted:
        return rows
    out = []
    for r in rows:
        if r in proved and r.status != UNSOUND:
            others = ",".join(o.verifier for o in refuted)
            out.append(dataclasses.replace(r, status=CONTRADICTION,
                                           note=f"proved, but {others} gave a counterexample that replays in onnxruntime"))
        elif r in refuted and r.status != UNSOUND:
            others = ",".join(o.verifier for o in proved)
            out.append(dataclasses.replace(r, status=CONTRADICTION,
                                           note=f"a replayed counterexample, but {others} proved the instance"))
        else:
            out.append(r)
    return out


def _instance_rows(shared: dict, inst: dict) -> list[dict]:
    """Every verifier on one instance, judged (and cross-checked): the instance's rows, where a worker runs it."""
    onnx, vnnlib = inst["onnx_file"].local(), inst["vnnlib_file"].local()
    truth, shape = inst["truth"], inst["shape"]
    if truth is None:
        truth = _truth_from_vnnlib(vnnlib)
    group = []
    for v in shared["names"]:
        t0 = time.perf_counter()
        crashed = False
        try:
            if shared["externals"][v] is not None:
                word, cex, note = _external(shared["externals"][v], onnx, vnnlib, inst["timeout"])
            else:
                word, cex, note = _ours(v, inst["onnx_file"], inst["vnnlib_file"], inst["timeout"])
        except CertifyError as exc:
            word, cex, note = "error", None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a crash is a finding, not the end of the audit
            word, cex, note, crashed = "error", None, f"{type(exc).__name__}: {exc}", True
        dt = time.perf_counter() - t0
        status, why = judge(inst["expected"], word, cex, truth, onnx, shape)
        if status == UNKNOWN and (crashed or str(note).startswith("backend_error")):
            status = CRASH
        group.append(AuditRow(inst["name"], inst["expected"], word, status, dt, why or note, v))
    return [asdict(r) for r in (cross_check(group) if len(group) > 1 else group)]


def audit(suite: str | Path, verifier: str | list[str], timeout: float | None = None,
          on_row: Callable[[AuditRow], None] | None = None, executor=None, journal=None,
          on_event: Callable[[str], None] | None = None) -> list[AuditRow]:
    """Run every verifier of ``verifier`` (a name, a comma-separated list or a list) on every instance of
    ``suite`` (an instances CSV, or a folder holding one), one task per instance (serially, or on
    ``executor``: ``certify.scale.make_executor``; rows ``journal`` holds are kept and not rerun), and
    judge each answer; with several verifiers, disagreements between them are ``contradiction`` rows
    (:func:`cross_check`). Rows come back in the suite's order.

    A verifier that crashes (an exception other than certify's own input errors, or a result whose reason
    is ``backend_error: ...``), or whose worker died or overran, gets status ``crash``; a model certify
    refuses to import (``ModelError``/``UnsupportedOpError``) is an ``error`` answer, judged ``unknown``."""
    from ..bench import instance_key, read_instances
    from ..scale import FileRef, Serial, Task, deadline_for, execute

    path = Path(suite)
    csv_path = path / "instances.csv" if path.is_dir() else path
    instances = read_instances(csv_path)
    truths = _truths(csv_path)
    names = _verifier_list(verifier)
    externals = {v: _check_verifier(v) for v in names}
    tasks = []
    for i, inst in enumerate(instances):
        limit = inst.timeout if timeout is None else timeout
        truth, shape, _acceptable = truths.get(str(Path(inst.vnnlib).resolve()), (None, None, None))
        tasks.append(Task(i, instance_key(i, inst),
                          dict(name=Path(inst.vnnlib).stem, expected=inst.expected, timeout=limit, truth=truth,
                               shape=shape, onnx_file=FileRef(str(inst.onnx)), vnnlib_file=FileRef(str(inst.vnnlib))),
                          deadline_for(limit * len(names))))

    def failed(task, failure) -> list[dict]:
        inst = task.payload
        return [asdict(AuditRow(inst["name"], inst["expected"], "error", CRASH, 0.0, failure.reason, v)) for v in names]

    def each(task, rows) -> None:
        for row in rows:
            on_row(AuditRow(**row))

    groups = execute(_instance_rows, dict(names=names, externals=externals), tasks, executor or Serial(), failed,
                     journal=journal, on_row=each if on_row is not None else None, on_event=on_event)
    return [AuditRow(**row) for rows in groups for row in rows]


def totals(rows: list[AuditRow], verifier: str | None = None) -> dict:
    """Counts per status (of ``verifier``'s rows only, when given), instances and times."""
    if verifier is not None:
        rows = [r for r in rows if r.verifier == verifier]
    out = {s: sum(r.status == s for r in rows) for s in STATUSES}
    out.update(instances=len(rows), time_s=round(sum(r.time_s for r in rows), 3),
               median_s=round(float(np.median([r.time_s for r in rows])), 3) if rows else math.nan)
    return out


def as_dicts(rows: list[AuditRow]) -> list[dict]:
    return [asdict(r) for r in rows]
