"""Verdicts and results, with invariants that make an unsound *proved* or an unreplayed
*falsified* impossible to construct by accident.

* ``FALSIFIED`` requires a ``Counterexample``, and a ``Counterexample`` can only be created by
  ``certify.replay.check``, after the input was checked to lie in the exact input set and the reference
  runtime's output was checked to lie in the exact unsafe region (rational arithmetic, strict
  comparisons strictly; see ``certify.spec``).
* ``PROVED`` requires a guarantee (``SOUND`` for deterministic backends, ``PROBABILISTIC`` for sampling
  ones, which must also state their ``claim``: the confidence and what it is about) and no counterexample.
* ``UNKNOWN`` requires a reason (``timeout``, ``inconclusive``, ``backend_error: ...``).
"""
from __future__ import annotations

import builtins
import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

import numpy as np


class Verdict(Enum):
    PROVED = "proved"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"


class Guarantee(Enum):
    SOUND = "sound"  # holds on every input of the set, for what Result.semantics names (see engine.fp)
    PROBABILISTIC = "probabilistic"  # holds with a stated probability (randomized smoothing)


TIMEOUT = "timeout"
INCONCLUSIVE = "inconclusive"

_REPLAY_TOKEN = object()  # only certify.replay holds a reference that it passes on


@dataclass(frozen=True)
class Counterexample:
    """An input of the set whose output, computed by ``runtime``, lies in unsafe clause ``clause`` of
    spec ``spec_index`` (``margin = max_j (C_j y - d_j) <= 0``). Built only by ``replay.check``."""

    x: np.ndarray
    y: np.ndarray
    spec_index: int
    clause: int
    margin: float
    runtime: str
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _REPLAY_TOKEN:
            raise TypeError("a Counterexample can only be created by certify.replay.check")

    @property
    def replayed(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x.reshape(-1).tolist(), "y": self.y.reshape(-1).tolist(), "spec_index": self.spec_index,
                "clause": self.clause, "margin": self.margin, "runtime": self.runtime, "replayed": True}


@dataclass(frozen=True)
class Result:
    """The answer for one property.

    ``bounds[s][k]`` is the certified lower bound of clause ``k``'s best row margin
    ``min_x max_j (C_j f(x) - d_j)`` for spec ``s`` (positive: the clause is unreachable): every sound
    backend reports it, for a proof (branch-and-bound: the minimum over its closed domains; milp/smt: 0,
    as an unsat clause has a positive margin) and for an unknown (its best bound); an attack reports none.
    ``margin_lower`` / ``margin_upper`` bracket the property's margin (the smallest clause margin).
    ``steps`` lists ``(method, seconds, verdict)`` for chained methods.
    """

    verdict: Verdict
    method: str
    time_s: float
    guarantee: Guarantee | None = None
    bounds: tuple[tuple[float, ...], ...] = ()
    counterexample: Counterexample | None = None
    reason: str = ""
    property: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, float] = field(default_factory=dict)
    steps: tuple[tuple[str, float, str], ...] = ()
    claim: str = ""  # what a probabilistic proof asserts, with its confidence
    # what a sound proof covers: "runtime" (the exact network and its runtime's float evaluation) or "real"
    semantics: str = "runtime"

    def __post_init__(self) -> None:
        if self.verdict is Verdict.FALSIFIED:
            if not isinstance(self.counterexample, Counterexample):
                raise ValueError("a FALSIFIED result needs a replayed Counterexample")
        elif self.counterexample is not None:
            raise ValueError(f"a {self.verdict.name} result cannot carry a counterexample")
        if self.verdict is Verdict.PROVED and self.guarantee is None:
            raise ValueError("a PROVED result needs a guarantee")
        if self.verdict is Verdict.PROVED and self.guarantee is Guarantee.PROBABILISTIC and not self.claim:
            raise ValueError("a probabilistic PROVED result must state its claim (confidence, and about what)")
        if self.verdict is Verdict.UNKNOWN and not self.reason:
            raise ValueError("an UNKNOWN result needs a reason")

    @builtins.property  # 'property' is a field of this class
    def margin_lower(self) -> float | None:
        """A certified lower bound of the property's margin (the smallest clause bound over all specs;
        positive: proved), or None when the backend certified nothing (an attack, a crash)."""
        values = [float(v) for spec in self.bounds for v in spec]
        return min(values) if values else None

    @builtins.property
    def margin_upper(self) -> float | None:
        """An upper bound of the property's margin: the replayed counterexample's own margin (<= 0)."""
        return float(self.counterexample.margin) if self.counterexample is not None else None

    def to_dict(self) -> dict[str, Any]:
        def num(v: float | None):
            if v is None:
                return None
            return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))

        return {
            "property": self.property,
            "verdict": self.verdict.value,
            "method": self.method,
            "time_s": round(self.time_s, 6),
            "guarantee": self.guarantee.value if self.guarantee else None,
            "claim": self.claim or None,
            "semantics": self.semantics,
            "reason": self.reason or None,
            "bounds": [[num(float(b)) for b in spec] for spec in self.bounds],
            "margin": {"lower": num(self.margin_lower), "upper": num(self.margin_upper)},
            "counterexample": self.counterexample.to_dict() if self.counterexample else None,
            "options": dict(self.options),
            "stats": dict(self.stats),
            "steps": [{"method": m, "time_s": round(t, 6), "verdict": v} for m, t, v in self.steps],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], counterexample: Counterexample | None = None) -> "Result":
        """The result ``to_dict`` wrote (``counterexample``: a replayed one for a falsified result; a
        counterexample never travels as data, it is re-run on the model where it is read back)."""
        def num(v: Any) -> float:
            return float("nan") if v is None else float(v)  # "inf" / "-inf" read back as floats

        return cls(Verdict(d["verdict"]), d["method"], float(d["time_s"]),
                   guarantee=Guarantee(d["guarantee"]) if d.get("guarantee") else None,
                   bounds=tuple(tuple(num(b) for b in spec) for spec in d.get("bounds") or ()),
                   counterexample=counterexample, reason=d.get("reason") or "", property=d.get("property") or "",
                   options=dict(d.get("options") or {}), stats=dict(d.get("stats") or {}),
                   steps=tuple((s["method"], float(s["time_s"]), s["verdict"]) for s in d.get("steps") or ()),
                   claim=d.get("claim") or "", semantics=d.get("semantics") or "runtime")

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
