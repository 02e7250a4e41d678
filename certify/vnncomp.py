"""The VNN-COMP vocabulary: a result as the competition's answer word and result file.

The competition asks whether the VNN-LIB formula (the unsafe region) is satisfiable: ``sat`` = a
counterexample exists (our *falsified*, which always carries a replayed counterexample), ``unsat`` =
the property holds (our *proved* with a sound guarantee; a probabilistic proof about a smoothed
classifier is not an answer about the network, so it is ``unknown``), otherwise ``timeout`` or ``unknown``; a crash is ``error``.
"""
from __future__ import annotations

from typing import Sequence

from .results import TIMEOUT, Guarantee, Result, Verdict
from .vnnlib import format_counterexample

SAT, UNSAT, TIMED_OUT, UNKNOWN, ERROR = "sat", "unsat", "timeout", "unknown", "error"


def answer(results: Sequence[Result]) -> str:
    """One answer for the properties of one instance: ``sat`` if any is falsified, ``unsat`` if all are
    proved soundly, ``timeout`` if any ran out of time, else ``unknown``."""
    if any(r.verdict is Verdict.FALSIFIED for r in results):
        return SAT
    if results and all(r.verdict is Verdict.PROVED and r.guarantee is Guarantee.SOUND for r in results):
        return UNSAT
    if any(r.reason == TIMEOUT for r in results):
        return TIMED_OUT
    return UNKNOWN


def result_file_text(results: Sequence[Result]) -> str:
    """The competition's result file: the answer on the first line; after ``sat``, the counterexample as
    ``((X_0 v) ... (Y_0 v) ...)``."""
    word = answer(results)
    if word == SAT:
        cex = next(r.counterexample for r in results if r.verdict is Verdict.FALSIFIED)
        return f"{SAT}\n{format_counterexample(cex.x, cex.y)}\n"
    return word + "\n"
