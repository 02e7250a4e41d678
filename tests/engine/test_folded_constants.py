"""Folded constants against the file's own, unfolded semantics.

The importer folds BatchNormalization ``(x - mean) / sqrt(var + eps) * gamma + beta`` into one scale and
shift in float64; the shift ``beta - mean * scale`` cancels when ``beta ~ mean * scale``, and its rounding
(``abs_err``) is then far larger than the rounding of the folded op itself. The reference here is the
file's formula evaluated in 60-digit decimal arithmetic on the file's float32 constants (no engine code);
the sound point-box interval (``real`` semantics) must contain it, and stops containing it when the
recorded error terms are zeroed (the last test: this check has teeth).
"""
from __future__ import annotations

import dataclasses
from decimal import Decimal, getcontext

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import certify
from certify.engine.ibp import sound_interval_bounds
from certify.sets import Box

getcontext().prec = 60


def _bn_model(tmp_path, mean, var, gamma, beta, eps=1e-5):
    c = lambda n, v, dt=np.float32: numpy_helper.from_array(np.asarray(v, dtype=dt), n)  # noqa: E731
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["x4"]),
             helper.make_node("BatchNormalization", ["x4", "g", "b", "m", "v"], ["bn"], epsilon=eps),
             helper.make_node("Flatten", ["bn"], ["y"])]
    n = len(mean)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                          initializer=[c("g", gamma), c("b", beta), c("m", mean), c("v", var), c("ax", [2, 3], np.int64)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 8
    path = tmp_path / "bn.onnx"
    onnx.save(m, path)
    return str(path)


def _unfolded(x, mean, var, gamma, beta, eps):
    D = lambda v: Decimal(float(v))  # noqa: E731  (the file's float32 values, exactly)
    return [(D(xi) - D(mi)) / (D(vi) + D(np.float32(eps))).sqrt() * D(gi) + D(bi)
            for xi, mi, vi, gi, bi in zip(x, mean, var, gamma, beta)]


def _case(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 6
    mean = (rng.uniform(1e6, 1e8, n) * rng.choice([-1, 1], n)).astype(np.float32)
    var = rng.uniform(0.01, 3, n).astype(np.float32)
    gamma = rng.uniform(0.5, 2, n).astype(np.float32)
    eps = 1e-5
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + np.float64(np.float32(eps)))
    beta = (mean.astype(np.float64) * scale).astype(np.float32)  # cancels the shift almost exactly
    path = _bn_model(tmp_path, mean, var, gamma, beta, eps)
    model = certify.load_model(path)
    graph = model.graph.with_semantics("real")
    xs = [rng.uniform(-3, 3, n).astype(np.float32) for _ in range(5)]
    return graph, xs, (mean, var, gamma, beta, eps)


def _contained(graph, x, consts) -> bool:
    box = sound_interval_bounds(graph, Box(torch.tensor(x, dtype=torch.float64)[None], torch.tensor(x, dtype=torch.float64)[None]))
    ref = _unfolded(x, *consts)
    return all(Decimal(box.lower[0, k].item()) <= r <= Decimal(box.upper[0, k].item()) for k, r in enumerate(ref))


@pytest.mark.parametrize("seed", range(6))
def test_folded_batchnorm_contains_the_files_formula(tmp_path, seed):
    graph, xs, consts = _case(tmp_path, seed)
    for x in xs:
        assert _contained(graph, x, consts)


def test_zeroed_error_terms_are_caught(tmp_path):
    missed = 0
    for seed in range(6):
        graph, xs, consts = _case(tmp_path, seed)
        nodes = tuple(dataclasses.replace(n, params={**n.params, "abs_err": None, "rel_err": 0.0})
                      if n.op == "affine" else n for n in graph.nodes)
        bare = dataclasses.replace(graph, nodes=nodes)
        missed += sum(not _contained(bare, x, consts) for x in xs)
    assert missed > 0
