"""Each soundness mutant of ``certify audit-mutations`` makes the *normal* test suite fail, not only the
slow audit: per mutant, the test files that must catch it are run in a subprocess with the bug injected
(``CERTIFY_MUTATION``, see ``conftest.py``) and must fail."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CAUGHT_BY = {
    "sound_as_fast": ["tests/engine/test_sound_exact.py"],
    "folded_errors_zeroed": ["tests/engine/test_folded_constants.py", "tests/test_semantics.py::test_batchnorm_cancellation_against_large_statistics"],
    "runtime_perturbation_dropped": ["tests/test_semantics.py::test_runtime_rounding_is_covered_by_every_sound_backend"],
    "flush_to_zero": ["tests/test_semantics.py::test_subnormal_weight_in_a_float64_model"],
    "small_coefficients_kept": ["tests/test_semantics.py::test_milp_does_not_trust_coefficients_the_solver_drops"],
    "spec_constants_in_float": ["tests/test_exact_spec.py"],
}


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_the_normal_suite_catches_the_mutant(name):
    env = {**os.environ, "CERTIFY_MUTATION": name, "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CAUGHT_BY[name]],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 1, f"{name} was not caught:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"


def test_an_unmutated_run_of_the_same_files_passes():
    files = sorted({f.split("::")[0] for fs in CAUGHT_BY.values() for f in fs} - {"tests/test_semantics.py"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CERTIFY_MUTATION", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
