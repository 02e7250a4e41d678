"""Exceptions for misuse and bad input.

Unknown answers and timeouts are never exceptions: they are `Result`s. An exception here
means the user gave us something we cannot work with, and its message says exactly what.
"""
from __future__ import annotations

from typing import Sequence


class CertifyError(Exception):
    """Base of every error the CLI reports as a one-line message (exit code INPUT_ERROR)."""


class UsageError(CertifyError):
    """A bad command-line option value or a missing argument (exit code USAGE); from Python, a bad argument."""


class SpecError(CertifyError):
    """A malformed or unsupported property. Carries the file and line when there is one."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path, self.line, self.detail = path, line, message
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class ModelError(CertifyError):
    """A model file that cannot be read or imported."""


class UnsupportedOpError(ModelError):
    """Every node the importer cannot handle, listed at once as (node name, op)."""

    def __init__(self, ops: Sequence[tuple[str, str]], source: str = "model"):
        self.ops = list(ops)
        listed = ", ".join(f"{op} at node '{name}'" for name, op in self.ops)
        super().__init__(f"{source}: unsupported operator(s): {listed}")


class ShapeError(CertifyError):
    """Two shapes (or sizes) that must agree do not; the message names both."""

    def __init__(self, what: str, expected: object, got: object):
        self.expected, self.got = expected, got
        super().__init__(f"{what}: expected {expected}, got {got}")


class BackendUnavailable(CertifyError):
    """A backend whose required module is not importable."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"backend '{name}' is not available: {reason}")


class BackendError(CertifyError):
    """A backend crashed; the API turns this into an UNKNOWN result with the reason."""
