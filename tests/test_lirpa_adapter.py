"""The optional auto_LiRPA reference backend (skipped when auto_LiRPA is not installed)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from certify import registry
from certify.budget import Budget
from certify.engine.crown import compute_boxes, crown_lower, sound_crown_lower
from certify.engine.fp import FAST
from certify.models import from_module, load_model
from certify.results import Verdict
from certify.spec import Property, robustness

from conftest import EXAMPLES


def test_lirpa_is_listed_with_the_reason_when_missing():
    info = {i.name: i for i in registry.available()}
    assert "lirpa" in info
    if not info["lirpa"].available:
        assert "auto_LiRPA" in info["lirpa"].reason


def _digits_mlp():
    return load_model(EXAMPLES / "digits" / "digits_mlp.onnx"), 0.02


def _small_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, 1, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))
    return from_module(net.eval(), (1, 8, 8)), 0.05


@pytest.mark.parametrize("make", [_digits_mlp, _small_cnn], ids=["digits-mlp", "cnn-stride-padding"])
def test_lirpa_bounds_agree_with_our_crown_and_never_prove(make):
    from verifiers.lirpa import LirpaOptions, import_auto_lirpa, lirpa_lower

    try:
        import_auto_lirpa()
    except ImportError as exc:
        pytest.skip(f"auto_LiRPA is not importable: {exc}")
    model, eps = make()
    x = torch.rand(1, *model.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    n_classes = model.graph.n_outputs
    label = int(model.graph.forward(x).argmax())
    spec = robustness(x, [label], eps, math.inf, n_classes=n_classes, clip=(0, 1))
    C, d, _ = spec.matrix()
    theirs = lirpa_lower(model, spec, LirpaOptions("CROWN"))
    # the same algorithm (CROWN intermediate bounds alone), computed by independent code: equal up to float32
    g = model.graph.to(dtype=torch.float64)
    s = spec.input.reshape(g.input_shape)
    plain = crown_lower(g, s, C, d, FAST, boxes=compute_boxes(g, s, FAST, intersect_ibp=False))
    torch.testing.assert_close(plain, theirs, rtol=1e-4, atol=1e-4)
    # ours intersects intermediate bounds with IBP and rounds soundly: never looser than theirs beyond float32
    ours = sound_crown_lower(model.graph.with_semantics("real"), spec.input, C, d)  # auto_LiRPA: the real network
    assert bool((ours >= theirs - 1e-4 * (1 + theirs.abs())).all())
    result = registry.get("lirpa").verify(model, Property("p", (spec,)), budget=Budget())
    assert result.verdict is Verdict.UNKNOWN and "reference only" in result.reason
