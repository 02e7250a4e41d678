"""Suite runner: a VNN-COMP instances file in, per-instance answers, times and the competition's score out.

An instances file is a CSV of ``onnx, vnnlib, timeout`` rows with paths relative to the file's folder
(the competition's ``instances.csv``, no header), optionally with a fourth ``expected`` column; or a
CSV with a header naming ``onnx``, ``vnnlib``, ``timeout_s`` (or ``timeout``) and optionally
``expected`` (as ``expected_results.csv`` in ``../shared/benchmarks``). Expected answers are the
competition's words: ``sat`` (a counterexample exists) or ``unsat`` (the property holds); anything
else leaves the instance unjudged.

Scoring as in VNN-COMP 2022: +10 for each answer that matches the expected one, -150 for each that
contradicts it (``sat`` on an ``unsat`` instance or the reverse), 0 otherwise.
"""
from __future__ import annotations

import csv
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import api
from .errors import CertifyError
from .vnncomp import ERROR, SAT, UNSAT, answer

CORRECT, WRONG = 10, -150


@dataclass(frozen=True)
class Instance:
    onnx: Path
    vnnlib: Path
    timeout: float
    expected: str | None = None


@dataclass(frozen=True)
class Outcome:
    """One instance's run: the competition's answer word, our method and reason, seconds spent."""

    onnx: str
    vnnlib: str
    timeout: float
    answer: str
    method: str
    time_s: float
    expected: str | None
    note: str = ""

    @property
    def judged(self) -> bool:
        return self.expected in (SAT, UNSAT)

    @property
    def correct(self) -> bool:
        return self.judged and self.answer == self.expected

    @property
    def wrong(self) -> bool:
        return self.judged and self.answer in (SAT, UNSAT) and self.answer != self.expected


def read_instances(path: str | Path) -> list[Instance]:
    """Parse an instances file (see the module docstring); errors name the file and line."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise CertifyError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if not rows:
        raise CertifyError(f"{path}: no instances")
    first = [c.strip() for c in rows[0][1]]
    if "onnx" in first and "vnnlib" in first:
        col = {name: i for i, name in enumerate(first)}
        t_col = col.get("timeout_s", col.get("timeout"))
        if t_col is None:
            raise CertifyError(f"{path}:1: the header names no timeout_s (or timeout) column")
        cols, rows = (col["onnx"], col["vnnlib"], t_col, col.get("expected")), rows[1:]
    else:
        cols = (0, 1, 2, 3 if len(first) > 3 else None)
    out = []
    for line, row in rows:
        cells = [c.strip() for c in row]
        if len(cells) <= max(c for c in cols if c is not None):
            raise CertifyError(f"{path}:{line}: expected onnx, vnnlib, timeout columns, got {len(cells)} cell(s)")
        try:
            timeout = float(cells[cols[2]])
        except ValueError:
            raise CertifyError(f"{path}:{line}: timeout {cells[cols[2]]!r} is not a number of seconds") from None
        if not timeout >= 0:
            raise CertifyError(f"{path}:{line}: timeout {timeout} is negative")
        expected = cells[cols[3]].lower() if cols[3] is not None else None
        out.append(Instance(path.parent / cells[cols[0]], path.parent / cells[cols[1]], timeout, expected or None))
    return out


def _instance_task(shared: dict, inst: dict) -> dict:
    """One instance, where a worker runs it: load (once per worker) and verify; the row is ``Outcome``'s fields.
    A model or property that cannot be read gives the answer ``error`` with the message; loading is
    outside the timed part."""
    from .scale.worker import load_model_ref, read_vnnlib_ref

    base = dict(onnx=inst["onnx"], vnnlib=inst["vnnlib"], timeout=inst["timeout"], expected=inst["expected"])
    try:
        model = load_model_ref(inst["onnx_file"])
        prop = read_vnnlib_ref(inst["vnnlib_file"])
        t0 = time.perf_counter()
        result = api.verify(model, prop, shared["method"], timeout=inst["timeout"], device=shared["device"],
                            memory_mb=shared["memory_mb"], semantics=shared["semantics"])
        outcome = Outcome(answer=answer([result]), method=result.method, time_s=time.perf_counter() - t0,
                          note=result.reason, **base)
    except CertifyError as exc:
        outcome = Outcome(answer=ERROR, method=shared["method"], time_s=0.0, note=str(exc), **base)
    return asdict(outcome)


def _failed(task, failure) -> dict:
    """The row of an instance whose worker died or overran: ``error`` (``timeout`` past its deadline)."""
    inst = task.payload
    return asdict(Outcome(onnx=inst["onnx"], vnnlib=inst["vnnlib"], timeout=inst["timeout"],
                          answer="timeout" if failure.kind == "deadline" else ERROR, method="-",
                          time_s=0.0, expected=inst["expected"], note=failure.reason))


def instance_key(i: int, inst: Instance) -> str:
    """The instance's name in a resume journal: its row number and files."""
    return f"{i}:{inst.onnx}:{inst.vnnlib}"


def run(instances: Sequence[Instance], method: str = "auto", *, timeout: float | None = None, device: str = "cpu",
        memory_mb: float | None = None, on_outcome: Callable[[Outcome], None] | None = None,
        semantics: str = "runtime", executor=None, journal=None,
        on_event: Callable[[str], None] | None = None) -> list[Outcome]:
    """Run ``method`` on every instance (``timeout`` overrides the per-instance one; ``memory_mb`` and
    ``semantics`` as in ``api.verify``), serially or on ``executor`` (``certify.scale.make_executor``:
    local workers or Ray), skipping and keeping the rows ``journal`` already holds. ``on_outcome`` sees
    every row as it finishes; the list returned is in the instances' order. Models and properties are
    loaded once each per worker, outside the timed part."""
    from .scale import FileRef, Serial, Task, deadline_for, execute

    tasks = []
    for i, inst in enumerate(instances):
        limit = inst.timeout if timeout is None else timeout
        tasks.append(Task(i, instance_key(i, inst),
                          dict(onnx=str(inst.onnx), vnnlib=str(inst.vnnlib), timeout=limit, expected=inst.expected,
                               onnx_file=FileRef(str(inst.onnx)), vnnlib_file=FileRef(str(inst.vnnlib))),
                          deadline_for(limit)))
    shared = dict(method=method, device=device, memory_mb=memory_mb, semantics=semantics)
    rows = execute(_instance_task, shared, tasks, executor or Serial(), _failed, journal=journal,
                   on_row=(lambda _t, row: on_outcome(Outcome(**row))) if on_outcome else None, on_event=on_event)
    return [Outcome(**row) for row in rows]


def summary(outcomes: Iterable[Outcome]) -> dict:
    """Counts per answer, correct / wrong / unjudged, the score, median and total time."""
    outcomes = list(outcomes)
    answers = [o.answer for o in outcomes]
    times = [o.time_s for o in outcomes] or [0.0]
    correct = sum(o.correct for o in outcomes)
    wrong = sum(o.wrong for o in outcomes)
    by_expected: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = by_expected.setdefault(o.expected or "-", {})
        row[o.answer] = row.get(o.answer, 0) + 1
    return {
        "instances": len(outcomes),
        "sat": answers.count(SAT), "unsat": answers.count(UNSAT),
        "unsolved": sum(a not in (SAT, UNSAT) for a in answers),
        "correct": correct, "wrong": wrong,
        "unjudged": sum(o.answer in (SAT, UNSAT) and not o.judged for o in outcomes),
        "score": CORRECT * correct + WRONG * wrong,
        "median_s": statistics.median(times), "total_s": sum(times),
        "by_expected": by_expected,
    }


def _md(rows: list[list[object]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def markdown(outcomes: Sequence[Outcome], title: str = "suite", per_instance: bool = False) -> str:
    """The summary (and optionally every instance) as markdown tables."""
    s = summary(outcomes)
    words = (SAT, UNSAT, "timeout", "unknown", ERROR)
    parts = [_md([[title, s["instances"], s["sat"], s["unsat"], s["unsolved"], s["correct"], s["wrong"], s["score"],
                   f"{s['median_s']:.3f}", f"{s['total_s']:.1f}"]],
                 ["suite", "instances", "sat", "unsat", "unsolved", "correct", "wrong", "score", "median s", "total s"]),
             _md([[exp, *(counts.get(w, 0) for w in words)] for exp, counts in sorted(s["by_expected"].items())],
                 ["expected", *words])]
    if per_instance:
        parts.append(_md([[Path(o.onnx).name, Path(o.vnnlib).name, o.expected or "-", o.answer,
                           "WRONG" if o.wrong else ("yes" if o.correct else "-"), o.method, f"{o.time_s:.3f}"]
                          for o in outcomes],
                         ["onnx", "vnnlib", "expected", "answer", "matches expected", "method", "time s"]))
    return "\n\n".join(parts) + "\n"


FIELDS = ["onnx", "vnnlib", "timeout", "answer", "expected", "correct", "wrong", "method", "time_s", "note"]


class CsvLog:
    """Per-instance rows written as they come (a long run can be watched, and survives an interrupt):
    onnx, vnnlib, timeout, answer, expected, correct, wrong, method, time_s, note."""

    def __init__(self, path: str | Path):
        try:
            self._file = open(path, "w", newline="")
        except OSError as exc:
            raise CertifyError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
        self._writer.writeheader()

    def write(self, o: Outcome) -> None:
        self._writer.writerow({**asdict(o), "correct": int(o.correct), "wrong": int(o.wrong), "time_s": f"{o.time_s:.4f}"})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_csv(outcomes: Sequence[Outcome], path: str | Path) -> None:
    log = CsvLog(path)
    try:
        for o in outcomes:
            log.write(o)
    finally:
        log.close()
