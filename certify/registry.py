"""The backend contract and the registry.

A backend is one module in ``verifiers/`` with a class implementing ``Verifier`` and one line in
``verifiers.BUILTIN``; third-party backends register under the ``certify.verifiers`` entry point
group. Availability is checked lazily with ``importlib.util.find_spec`` on ``requires``, so listing
backends imports nothing heavy.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from .budget import Budget
from .errors import BackendUnavailable
from .models import Model
from .results import Guarantee, Result
from .spec import Property


@runtime_checkable
class Verifier(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    guarantee: ClassVar[Guarantee]
    complete: ClassVar[bool]  # can it answer every instance given time?
    requires: ClassVar[tuple[str, ...]]  # import names, checked lazily
    Options: ClassVar[type]  # frozen dataclass with documented defaults

    def supports(self, model: Model, prop: Property) -> str | None:
        """``None`` if supported, else a human-readable reason."""

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        """Decide the property; UNKNOWN (with a reason) rather than raise for undecided cases."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    target: str
    available: bool
    reason: str  # why not available, or ""
    description: str = ""


def _table() -> dict[str, str]:
    from verifiers import BUILTIN

    table = dict(BUILTIN)
    for ep in entry_points(group="certify.verifiers"):
        table.setdefault(ep.name, ep.value)
    return table


def _missing(requires: tuple[str, ...]) -> str:
    missing = [m for m in requires if importlib.util.find_spec(m) is None]
    return f"missing Python module(s): {', '.join(missing)}" if missing else ""


def names() -> list[str]:
    """Registered backend names, in preference order."""
    return list(_table())


def _load_class(name: str, target: str):
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def get(name: str) -> Verifier:
    """An instance of backend ``name``; ``BackendUnavailable`` names what is missing."""
    table = _table()
    if name not in table:
        raise BackendUnavailable(name, f"unknown backend; registered: {', '.join(table)}")
    cls = _load_class(name, table[name])
    reason = _missing(tuple(getattr(cls, "requires", ())))
    if reason:
        raise BackendUnavailable(name, reason)
    return cls()


def available() -> list[BackendInfo]:
    """Every registered backend with its availability and, when missing, why."""
    out = []
    for name, target in _table().items():
        try:
            cls = _load_class(name, target)
        except Exception as exc:  # a broken third-party plugin must not hide the others
            out.append(BackendInfo(name, target, False, f"failed to load: {exc}"))
            continue
        reason = _missing(tuple(getattr(cls, "requires", ())))
        out.append(BackendInfo(name, target, not reason, reason, getattr(cls, "description", "")))
    return out
