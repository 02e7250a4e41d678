"""BaB, MILP and CROWN against exact minima from the independent oracle (``tests/oracles``), at +-1e-4.

Small random ReLU networks built as ONNX files (``onnx.helper``), loaded with ``certify.load_model``;
properties of several clauses with several rows each, over boxes (written as VNN-LIB text and read by
``certify.read_vnnlib``), L-inf balls with a clip box and L1 balls. The thresholds ``d`` are set from the
oracle's exact per-clause minima so that every clause's exact worst-case margin is ``+1e-4`` or
``-1e-4``. Input splitting is exercised with 3-6 inputs, ReLU splitting with 24.

* exact margin ``-1e-4`` and onnxruntime reaches some clause at the oracle's minimiser: *proved* is a
  wrong answer (if the float runtime does not reach it, the case is ambiguous and skipped);
* exact margin ``+1e-4``: *falsified* must come with a counterexample that onnxruntime replays (a real
  runtime counterexample at a positive exact margin is recorded, not failed); *unknown* is allowed
  (proofs also cover the float32 runtime, see ``certify.engine.fp``);
* how many each method decides is counted and printed by the last test.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import certify
from certify.results import Verdict
from certify.sets import Box, LpBall
from certify.spec import Clause, Property, Spec
from oracles.exact import clause_margins

MARGIN = 1e-4
TIMEOUT = {"bab": 8.0, "milp": 8.0, "crown": 8.0}
STATS: dict = {}  # method -> counts, filled by the tests, printed by test_zz_decided_counts
RUNTIME_CEX: list = []  # falsified at a positive exact margin, replayed by onnxruntime: recorded


def _onnx_file(path, rng, n_in, widths, n_out):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev, dims = [], [], "X", [n_in, *widths, n_out]
    for k in range(len(dims) - 1):
        W = (rng.standard_normal((dims[k + 1], dims[k])) / math.sqrt(dims[k])).astype(np.float32)
        b = (0.3 * rng.standard_normal(dims[k + 1])).astype(np.float32)
        inits += [numpy_helper.from_array(W, f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
        out = "Y" if k == len(dims) - 2 else f"h{k}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{k}", f"b{k}"], [out], transB=1))
        prev = out
        if out != "Y":
            nodes.append(helper.make_node("Relu", [prev], [f"r{k}"]))
            prev = f"r{k}"
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _num(v: float) -> str:
    """The exact decimal expansion of a float64 (the reader is exact: a shorter decimal is another number)."""
    from decimal import Decimal

    s = format(Decimal(float(v)), "f")
    return f"(- {s[1:]})" if s.startswith("-") else s


def _vnnlib(lo, hi, clauses) -> str:
    """A box and a disjunction of clauses ``C y <= d`` (one conjunction of rows per clause)."""
    n_in, n_out = len(lo), clauses[0][0].shape[1]
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(n_in):
        lines += [f"(assert (>= X_{i} {_num(lo[i])}))", f"(assert (<= X_{i} {_num(hi[i])}))"]
    ands = []
    for C, d in clauses:
        rows = []
        for Cj, dj in zip(C, d):
            terms = " ".join(f"(* {_num(c)} Y_{k})" for k, c in enumerate(Cj))
            rows.append(f"(<= (+ {terms}) {_num(dj)})")
        ands.append(f"(and {' '.join(rows)})")
    lines.append(f"(assert (or {' '.join(ands)}))")
    return "\n".join(lines) + "\n"


CASES = ([("input", s, k) for s in range(3) for k in ("box", "linf", "l1")]
         + [("relu", s, k) for s in range(2) for k in ("box", "linf", "l1")])


@functools.lru_cache(maxsize=None)
def _instance(mode: str, seed: int, kind: str, tmp: str):
    """Model, onnxruntime session, the input set, base clauses (C, d0), exact per-clause minima, minimisers."""
    import onnxruntime as ort

    rng = np.random.default_rng(1000 * (mode == "relu") + 10 * seed + ["box", "linf", "l1"].index(kind))
    n_in = int(rng.integers(3, 7)) if mode == "input" else 24
    widths = [8, 8] if mode == "input" else [10, 8]
    path = f"{tmp}/net_{mode}_{seed}_{kind}.onnx"
    _onnx_file(path, rng, n_in, widths, 3)
    model = certify.load_model(path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    c = rng.uniform(-0.5, 0.5, n_in).astype(np.float32).astype(np.float64)
    if kind == "box":
        lo = (c - rng.uniform(0.05, 0.4, n_in)).astype(np.float32).astype(np.float64)
        hi = (c + rng.uniform(0.05, 0.4, n_in)).astype(np.float32).astype(np.float64)
        input_set = Box(torch.tensor(lo)[None], torch.tensor(hi)[None])
    elif kind == "linf":
        eps = 0.25 if mode == "input" else 0.1
        clip = Box(torch.tensor(c - 0.15)[None], torch.tensor(c + 1.0)[None])
        input_set = LpBall(torch.tensor(c)[None], torch.tensor([eps]), math.inf, clip=clip)
    else:
        input_set = LpBall(torch.tensor(c)[None], torch.tensor([0.6 if mode == "input" else 0.8]), 1.0)
    base = [(rng.standard_normal((2, 3)), rng.uniform(-0.1, 0.1, 2)) for _ in range(2)]
    probe = Spec(input_set, tuple(Clause(torch.tensor(C)[None], torch.tensor(d)[None]) for C, d in base))
    # the minima are HiGHS' on the oracle's own encoding, each reached (to 1e-6) by the float64 forward
    # pass at its minimiser; z3's bound-free confirmation is left out here: it takes 10-30 s per clause
    # at these sizes (tests/oracles/test_oracles.py and tests/test_exact.py run it)
    minima, xs = clause_margins(model, probe, cross_check=False, return_x=True)
    return model, sess, input_set, base, minima, xs


def _property(input_set, clauses, kind) -> Property:
    if kind == "box":
        lo, hi = input_set.lower[0].numpy(), input_set.upper[0].numpy()
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "p.vnnlib"
            p.write_text(_vnnlib(lo, hi, clauses))
            prop = certify.read_vnnlib(p)
        spec = prop.specs[0]
        # the file says exactly what was meant
        assert torch.equal(spec.input.lower.reshape(-1), torch.tensor(lo))
        assert len(spec.unsafe) == len(clauses)
        for cl, (C, d) in zip(spec.unsafe, clauses):
            assert torch.equal(cl.C[0], torch.tensor(C)) and torch.equal(cl.d[0], torch.tensor(d))
        return prop
    return Property("p", (Spec(input_set, tuple(Clause(torch.tensor(C)[None], torch.tensor(d)[None])
                                                 for C, d in clauses)),))


def _runtime_reaches(sess, x, clauses) -> bool:
    y = sess.run(None, {"X": np.asarray(x, dtype=np.float32).reshape(1, -1)})[0].astype(np.float64).reshape(-1)
    return any(bool(np.all(C @ y <= d)) for C, d in clauses)


@pytest.fixture(scope="module")
def tmp_models(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bab_exact"))


@pytest.mark.parametrize("method", ["bab", "milp", "crown"])
@pytest.mark.parametrize("sign", [-1, 1])
@pytest.mark.parametrize("mode,seed,kind", CASES)
def test_against_exact_margin(mode, seed, kind, sign, method, tmp_models):
    model, sess, input_set, base, minima, xs = _instance(mode, seed, kind, tmp_models)
    target = sign * MARGIN
    # every clause's exact worst-case margin becomes `target`: max_j(C_j y - d_j - s) = m - s
    clauses = [(C, d0 + (m - target)) for (C, d0), m in zip(base, minima)]
    prop = _property(input_set, clauses, kind)
    stats = STATS.setdefault(f"{method} at {target:+g}", {"runs": 0, "decided": 0, "skipped": 0, "undecided": []})
    if target < 0 and not any(_runtime_reaches(sess, x, clauses) for x in xs):
        stats["skipped"] += 1
        pytest.skip("ambiguous: the float32 runtime does not reach the clause at the exact minimiser")
    r = certify.verify(model, prop, method=method, attack=False, timeout=TIMEOUT[method])
    stats["runs"] += 1
    stats["decided"] += r.verdict is not Verdict.UNKNOWN
    if r.verdict is Verdict.UNKNOWN:
        stats["undecided"].append((mode, seed, kind, r.reason[:60]))
    where = (mode, seed, kind, method, target, r.verdict, r.reason, minima.tolist())
    if target < 0:
        assert r.verdict is not Verdict.PROVED, where
    if r.verdict is Verdict.FALSIFIED:
        x = np.asarray(r.counterexample.x, dtype=np.float64).reshape(-1)
        assert bool(input_set.contains(torch.tensor(x)[None], atol=1e-6)[0]), where
        assert _runtime_reaches(sess, x, clauses), ("falsified without a runtime counterexample", where)
        if target > 0:
            RUNTIME_CEX.append(where)


def test_zz_decided_counts():
    """Reports how many answers were definite (run after the tests above; -s shows the counts)."""
    if not STATS:
        pytest.skip("run with the tests above")
    for key, st in STATS.items():
        print(f"\n{key}: {st['decided']}/{st['runs']} decided, {st['skipped']} skipped; undecided: {st['undecided']}")
    print("runtime counterexamples at +1e-4:", RUNTIME_CEX)
    # Decisions are counted, not asserted: an unknown may come from the time budget (no wall-clock
    # assertions). Measured (2 shared cores): bab decides every input-split box/L-inf case at both signs;
    # it refuses L1 balls for input splitting ("input splitting needs a box input set") and its ReLU
    # splitting at 24 inputs ends "inconclusive: ... every ReLU split stayed open" on most cases; milp
    # decides all; crown none (bounds too loose at 1e-4).
