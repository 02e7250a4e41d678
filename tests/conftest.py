"""Shared fixtures: the third-party benchmarks in ../shared (skipped cleanly when absent), seeds and threads."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# hypothesis: derandomised everywhere (same examples on every run; CI never fails on a lucky draw)
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("certify", derandomize=True, deadline=None, print_blob=True)
    _hyp_settings.load_profile("certify")
except ImportError:  # hypothesis is a dev extra
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CERTIFY_SHARED_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
EXAMPLES = REPO / "certify" / "examples"


def shared_dir(name: str) -> Path:
    """``../shared/benchmarks/<name>``, or skip the test when it is not there."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"shared benchmark folder {path} is absent")
    return path


def expected_rows(name: str) -> list[dict]:
    """Rows of ``expected_results.csv`` of a shared benchmark (skips when absent)."""
    with open(shared_dir(name) / "expected_results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def acasxu() -> Path:
    return shared_dir("acasxu")


@pytest.fixture
def mnist_fc() -> Path:
    return shared_dir("mnist_fc")


@pytest.fixture
def exact_margin():
    """``exact_margin(model, spec) -> float``: the exact worst-case margin of a small network on a
    single-instance spec (positive iff it holds), from MILP and confirmed by z3 (``oracles.exact``)."""
    from oracles.exact import exact_margin as margin

    return margin


@pytest.fixture(scope="session", autouse=True)
def _injected_mutation():
    """``CERTIFY_MUTATION=name``: run the session with one bug of ``certify.audit.mutations.CATALOGUE``
    injected (``tests/test_mutants.py`` uses it to show that the normal tests catch each one)."""
    name = os.environ.get("CERTIFY_MUTATION")
    if not name:
        yield
        return
    from certify.audit.mutations import CATALOGUE

    (mutation,) = [m for m in CATALOGUE if m.name == name]
    with mutation.inject():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
