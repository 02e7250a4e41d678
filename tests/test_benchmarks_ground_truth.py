"""Ground truth from the shared VNN-COMP benchmarks (skipped when ../shared is absent):
IBP bounds contain sampled outputs, nothing marked sat is ever proved, and every falsified answer
carries a counterexample that onnxruntime confirms."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from certify import api
from certify.engine import sound_interval_bounds
from certify.engine.alpha import AlphaOptions, alpha_crown_lower
from certify.engine.crown import sound_crown_lower
from certify.models import load_model
from certify.results import Verdict
from certify.vnnlib import read_vnnlib

from conftest import expected_rows, shared_dir

N = 10_000


@pytest.mark.parametrize("bench,onnx_name,prop", [
    ("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", "prop_1.vnnlib"),
    ("acasxu", "ACASXU_run2a_3_3_batch_2000.onnx", "prop_3.vnnlib"),
    ("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", "prop_6.vnnlib"),
    ("mnist_fc", "mnist-net_256x2.onnx", "prop_0_0.03.vnnlib"),
    ("mnist_fc", "mnist-net_256x6.onnx", "prop_5_0.05.vnnlib"),
])
def test_ibp_bounds_contain_sampled_outputs_of_benchmark_models(bench, onnx_name, prop):
    root = shared_dir(bench)
    model = load_model(root / "onnx" / onnx_name)
    for spec in read_vnnlib(root / "vnnlib" / prop).specs:
        box = spec.input.bounds().reshape(model.input_shape)
        gen = torch.Generator().manual_seed(0)
        x = torch.cat([box.sample(N // 2, generator=gen)[:, 0], box.sample(N // 2, generator=gen, corners=True)[:, 0]])
        y = model.graph.forward(x)
        out = sound_interval_bounds(model.graph, box)
        assert bool((y >= out.lower).all()) and bool((y <= out.upper).all())
        # CROWN and alpha-CROWN on every output, both directions
        eye = torch.eye(model.n_outputs, dtype=torch.float64)
        C, d = torch.cat([eye, -eye])[None], torch.zeros(1, 2 * model.n_outputs, dtype=torch.float64)
        vals = torch.cat([y, -y], dim=1)
        crown = sound_crown_lower(model.graph, box, C, d)
        alpha = alpha_crown_lower(model.graph, box, C, d, AlphaOptions(iterations=5))
        assert bool((vals >= crown).all()) and bool((alpha >= crown).all()) and bool((vals >= alpha).all())
        # and with respect to the file's own runtime (float32), within its rounding
        y32 = torch.as_tensor(model.reference(x[:300].numpy()))
        tol = 1e-5 * (1 + y32.abs())
        assert bool((y32 >= out.lower - tol).all()) and bool((y32 <= out.upper + tol).all())


@pytest.mark.parametrize("bench", ["acasxu", "mnist_fc"])
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_bounds_never_prove_a_sat_instance(bench, method):
    from certify import registry
    from certify.budget import Budget

    root = shared_dir(bench)
    verifier = registry.get(method)
    options = dataclasses.replace(verifier.Options(), attack=False)
    sat = [r for r in expected_rows(bench) if r["expected"] == "sat"]
    assert len(sat) == {"acasxu": 47, "mnist_fc": 18}[bench]
    for row in sat:
        result = verifier.verify(load_model(root / row["onnx"]), read_vnnlib(root / row["vnnlib"]),
                                 options=options, budget=Budget())
        assert result.verdict is not Verdict.PROVED, row


def _onnxruntime_confirms(onnx_path, prop, cex) -> bool:
    """Independent check: onnxruntime on the raw file, the box and the unsafe clauses from the spec."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = cex.x.astype(np.float32)
    y = sess.run(None, {inp.name: x.reshape(shape)})[0].reshape(-1).astype(np.float64)
    spec = prop.specs[cex.spec_index]
    box = spec.input.bounds()
    inside = bool(np.all(x >= box.lower.numpy().reshape(-1)) and np.all(x <= box.upper.numpy().reshape(-1)))
    reached = any(bool(np.all(c.C[0].numpy() @ y <= c.d[0].numpy())) for c in spec.unsafe)
    return inside and reached


@pytest.mark.parametrize("bench,minimum", [("acasxu", 35), ("mnist_fc", 12)])
def test_auto_falsifies_sat_instances_with_confirmed_counterexamples(bench, minimum):
    root = shared_dir(bench)
    falsified = 0
    for row in expected_rows(bench):
        if row["expected"] != "sat":
            continue
        model, prop = load_model(root / row["onnx"]), read_vnnlib(root / row["vnnlib"])
        result = api.verify(model, prop, "auto", timeout=20)
        assert result.verdict is not Verdict.PROVED, row
        if result.verdict is Verdict.FALSIFIED:
            assert _onnxruntime_confirms(root / row["onnx"], prop, result.counterexample), row
            falsified += 1
    assert falsified >= minimum  # measured: 39/47 ACAS Xu, 15/18 MNIST-FC


def test_auto_never_falsifies_an_unsat_instance_sample():
    """PGD on instances labelled unsat must never produce a counterexample that replays (a replayed one
    would contradict the VNN-COMP consensus)."""
    root = shared_dir("acasxu")
    unsat = [r for r in expected_rows("acasxu") if r["expected"] == "unsat"][::10]
    for row in unsat:
        result = api.verify(load_model(root / row["onnx"]), read_vnnlib(root / row["vnnlib"]), "pgd", timeout=10)
        assert result.verdict is Verdict.UNKNOWN, row
