"""The optional auto_LiRPA reference backend (skipped when auto_LiRPA is not installed)."""
from __future__ import annotations

import math

import pytest
import torch

from certify import registry
from certify.budget import Budget
from certify.engine.crown import sound_crown_lower
from certify.models import load_model
from certify.results import Verdict
from certify.spec import Property, robustness

from conftest import EXAMPLES


def test_lirpa_is_listed_with_the_reason_when_missing():
    info = {i.name: i for i in registry.available()}
    assert "lirpa" in info
    if not info["lirpa"].available:
        assert "auto_LiRPA" in info["lirpa"].reason


def test_lirpa_bounds_agree_with_our_crown_and_never_prove():
    pytest.importorskip("auto_LiRPA")
    from verifiers.lirpa import LirpaOptions, lirpa_lower

    model = load_model(EXAMPLES / "digits" / "digits_mlp.onnx")
    x = torch.rand(1, 64, dtype=torch.float64)
    label = int(model.reference(x.numpy()).argmax())
    spec = robustness(x, [label], 0.02, math.inf, n_classes=10, clip=(0, 1))
    C, d, _ = spec.matrix()
    theirs = lirpa_lower(model, spec, LirpaOptions("CROWN"))
    ours = sound_crown_lower(model.graph, spec.input, C, d)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    result = registry.get("lirpa").verify(model, Property("p", (spec,)), budget=Budget())
    assert result.verdict is Verdict.UNKNOWN and "reference only" in result.reason
