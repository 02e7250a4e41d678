"""certify: sound verification of neural networks.

The names most users need, re-exported explicitly and imported on first use (PEP 562), so that the
command line's ``--help`` and ``backends`` do not pay for torch; everything else lives in its module.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "verify": "api",
    "Model": "models", "load_model": "models",
    "Counterexample": "results", "Guarantee": "results", "Result": "results", "Verdict": "results",
    "Box": "sets", "LpBall": "sets",
    "Clause": "spec", "Property": "spec", "Spec": "spec", "robustness": "spec", "targeted": "spec",
    "read_vnnlib": "vnnlib", "write_vnnlib": "vnnlib",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'certify' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .api import verify
    from .models import Model, load_model
    from .results import Counterexample, Guarantee, Result, Verdict
    from .sets import Box, LpBall
    from .spec import Clause, Property, Spec, robustness, targeted
    from .vnnlib import read_vnnlib, write_vnnlib
