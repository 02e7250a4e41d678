"""The backend contract and the registry.

A backend is one module in ``verifiers/`` with a class implementing ``Verifier`` and one line in
``verifiers.BUILTIN``; third-party backends register under the ``certify.verifiers`` entry point
group. Availability is checked lazily with ``importlib.util.find_spec`` on ``requires``, so listing
backends imports nothing heavy.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from .errors import BackendUnavailable

if TYPE_CHECKING:  # the contract's types; importing them here would load torch for 'certify backends'
    from .budget import Budget
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


_WANTED = ("description", "requires")


def _class_literals(module: str, cls: str, depth: int = 0) -> dict[str, Any] | None:
    """The literal ``description`` and ``requires`` (those found) of class ``cls`` in ``module``, read from
    source without running it (so listing backends imports no torch), following base classes defined in
    the module or imported into it by name; None when the class is not found or a value is not a literal."""
    try:
        spec = importlib.util.find_spec(module)
        if depth > 4 or spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    imported = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base_module = node.module or ""
            if node.level:
                package = module.rsplit(".", node.level)[0] if spec.submodule_search_locations is None else module
                base_module = f"{package}.{base_module}" if base_module else package
            for alias in node.names:
                imported[alias.asname or alias.name] = (base_module, alias.name)
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == cls):
            continue
        found: dict[str, Any] = {}
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                key, value = stmt.target.id, stmt.value
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                key, value = stmt.targets[0].id, stmt.value
            else:
                continue
            if key in _WANTED:
                try:
                    found[key] = ast.literal_eval(value)
                except ValueError:
                    return None
        for base in node.bases:
            if all(k in found for k in _WANTED) or not isinstance(base, ast.Name):
                break
            where = imported.get(base.id, (module, base.id))
            inherited = _class_literals(where[0], where[1], depth + 1) or {}
            found = {**inherited, **found}
        return found
    return None


def _static_attributes(target: str) -> dict[str, Any] | None:
    module, _, cls = target.partition(":")
    found = _class_literals(module, cls)
    return found if found is not None and all(k in found for k in _WANTED) else None


def available() -> list[BackendInfo]:
    """Every registered backend with its availability and, when missing, why. Built-in backends are read
    from their source (their modules import torch); plugins are imported (a broken one shows why)."""
    from verifiers import BUILTIN

    out = []
    for name, target in _table().items():
        attrs = _static_attributes(target) if BUILTIN.get(name) == target else None
        if attrs is None:
            try:
                cls = _load_class(name, target)
            except Exception as exc:  # a broken third-party plugin must not hide the others
                out.append(BackendInfo(name, target, False, f"failed to load: {exc}"))
                continue
            attrs = {"description": getattr(cls, "description", ""), "requires": getattr(cls, "requires", ())}
        reason = _missing(tuple(attrs["requires"]))
        out.append(BackendInfo(name, target, not reason, reason, attrs["description"]))
    return out
