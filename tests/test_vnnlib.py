"""VNN-LIB reader/writer: the shared VNN-COMP files, published counterexamples, semantics against a
direct evaluation of hand-written formulas, exact round trips and error reporting."""
from __future__ import annotations

import gzip
import math
import re
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certify.errors import ShapeError, SpecError
from certify.sets import Box
from certify.spec import Clause, Property, Spec, robustness
from certify.vnnlib import format_counterexample, read_counterexample, read_vnnlib, write_vnnlib
from conftest import expected_rows, shared_dir


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "case.vnnlib") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _assert_same(p: Property, q: Property) -> None:
    """Exact equality of every tensor of two properties."""
    assert len(p.specs) == len(q.specs)
    for a, b in zip(p.specs, q.specs):
        assert isinstance(b.input, Box)
        assert b.input.lower.dtype == torch.float64
        assert torch.equal(a.input.lower, b.input.lower)
        assert torch.equal(a.input.upper, b.input.upper)
        assert len(a.unsafe) == len(b.unsafe)
        for ca, cb in zip(a.unsafe, b.unsafe):
            assert cb.C.dtype == torch.float64 and cb.d.dtype == torch.float64
            assert ca.C.shape == cb.C.shape
            assert torch.equal(ca.C, cb.C)
            assert torch.equal(ca.d, cb.d)


def _files(name: str) -> list[Path]:
    return sorted((shared_dir(name) / "vnnlib").glob("*.vnnlib"))


_UPPER_RE = re.compile(r"\(<= X_(\d+) ([^()\s]+)\)")
_LOWER_RE = re.compile(r"\(>= X_(\d+) ([^()\s]+)\)")


def _outward(text: str, direction: int) -> float:
    """The decimal ``text`` rounded to the float64 below (direction -1) or above (+1) its exact value."""
    q = Fraction(text)
    f = float(q)
    if direction < 0 and Fraction(f) > q:
        f = math.nextafter(f, -math.inf)
    if direction > 0 and Fraction(f) < q:
        f = math.nextafter(f, math.inf)
    return f


def _bounds_in(text: str, n: int) -> tuple[list[float], list[float]]:
    """Input bounds read independently with regular expressions (files with one box), rounded outward
    (the float box must contain the exact box the decimals describe)."""
    lo, hi = [None] * n, [None] * n
    for i, v in _UPPER_RE.findall(text):
        hi[int(i)] = _outward(v, +1)
    for i, v in _LOWER_RE.findall(text):
        lo[int(i)] = _outward(v, -1)
    return lo, hi


def _member(prop: Property, x: np.ndarray, y: np.ndarray, atol: float = 0.0) -> np.ndarray:
    """For points ``x [N, n_in]``, ``y [N, n_out]``: does some spec contain x and reach y?"""
    xt = torch.as_tensor(x, dtype=torch.float64)[:, None, :]
    yt = torch.as_tensor(y, dtype=torch.float64)[:, None, :]
    hit = torch.zeros(x.shape[0], dtype=torch.bool)
    for spec in prop.specs:
        hit |= (spec.input.contains(xt, atol) & spec.violated_by(yt)).reshape(-1)
    return hit.numpy()


# --------------------------------------------------------------------------------------------
# the shared VNN-COMP files
# --------------------------------------------------------------------------------------------


def test_acasxu_files_parse_with_documented_structure():
    files = _files("acasxu")
    assert len(files) == 10
    props = {f.stem: read_vnnlib(f, n_inputs=5, n_outputs=5) for f in files}
    for name, p in props.items():
        assert p.name == name and p.n_inputs == 5 and p.n_outputs == 5
        for s in p.specs:
            assert s.input.lower.shape == (1, 5) and s.input.lower.dtype == torch.float64
            assert bool((s.input.lower <= s.input.upper).all())

    p6 = props["prop_6"]
    assert len(p6.specs) == 2
    assert all([c.rows for c in s.unsafe] == [1, 1, 1, 1] for s in p6.specs)
    # first box has X_1 in [0.11140846, 0.499999896], the second the mirror image (file order); the
    # float box is rounded outward: the float nearest to 0.11140846 lies above it
    assert p6.specs[0].input.lower[0, 1].item() == math.nextafter(0.11140846, 0) < 0.11140846
    assert p6.specs[1].input.upper[0, 1].item() == -math.nextafter(0.11140846, 0)
    assert p6.specs[0].exact_input.lower[0][1] == Fraction("0.11140846")

    p2 = props["prop_2"]
    assert len(p2.specs) == 1 and [c.rows for c in p2.specs[0].unsafe] == [4]
    # (<= Y_k Y_0) for k = 1..4:  Y_k - Y_0 <= 0
    expected = torch.zeros(1, 4, 5, dtype=torch.float64)
    for k in range(1, 5):
        expected[0, k - 1, k], expected[0, k - 1, 0] = 1.0, -1.0
    assert torch.equal(p2.specs[0].unsafe[0].C, expected)
    assert torch.equal(p2.specs[0].unsafe[0].d, torch.zeros(1, 4, dtype=torch.float64))

    assert [c.rows for c in props["prop_7"].specs[0].unsafe] == [3, 3]
    assert [c.rows for c in props["prop_8"].specs[0].unsafe] == [2, 2, 2]
    for name in ("prop_5", "prop_9", "prop_10"):
        assert [c.rows for c in props[name].specs[0].unsafe] == [1, 1, 1, 1]

    box4 = props["prop_4"].specs[0].input
    assert box4.lower[0, 2].item() == 0.0 and box4.upper[0, 2].item() == 0.0

    # prop_1: (>= Y_0 3.991125645861615)  ->  -Y_0 <= -3.991125645861615
    c1 = props["prop_1"].specs[0].unsafe
    assert len(c1) == 1 and c1[0].rows == 1
    assert c1[0].C[0, 0].tolist() == [-1.0, 0.0, 0.0, 0.0, 0.0]
    assert c1[0].d.item() == -3.991125645861615

    # boxes agree with an independent regex reading of the files (single-box files)
    for f in files:
        if f.stem == "prop_6":
            continue
        lo, hi = _bounds_in(f.read_text(), 5)
        box = props[f.stem].specs[0].input
        assert box.lower[0].tolist() == lo and box.upper[0].tolist() == hi


def test_acasxu_prop6_boxes_match_the_file():
    f = shared_dir("acasxu") / "vnnlib" / "prop_6.vnnlib"
    box_lines = [ln for ln in f.read_text().splitlines() if ln.strip().startswith("(and (<= X_")]
    assert len(box_lines) == 2
    prop = read_vnnlib(f)
    for ln, spec in zip(box_lines, prop.specs):
        lo, hi = _bounds_in(ln, 5)
        assert spec.input.lower[0].tolist() == lo and spec.input.upper[0].tolist() == hi


def test_mnist_files_parse_with_documented_structure():
    files = _files("mnist_fc")
    assert len(files) == 30
    for f in files:
        text = f.read_text()
        label = int(re.search(r"label: (\d+)", text).group(1))
        p = read_vnnlib(f)
        assert p.n_inputs == 784 and p.n_outputs == 10 and len(p.specs) == 1
        spec = p.specs[0]
        box = spec.input
        assert box.lower.shape == (1, 784)
        assert bool((box.lower >= 0).all()) and bool((box.upper <= 1).all())
        assert bool((box.lower <= box.upper).all())
        lo, hi = _bounds_in(text, 784)
        assert box.lower[0].tolist() == lo and box.upper[0].tolist() == hi
        assert len(spec.unsafe) == 9 and all(c.rows == 1 for c in spec.unsafe)
        others = []
        for c in spec.unsafe:  # (>= Y_j Y_L)  ->  Y_L - Y_j <= 0
            row = c.C[0, 0]
            assert row[label].item() == 1.0 and c.d.item() == 0.0
            (j,) = [k for k in range(10) if row[k].item() == -1.0]
            assert int((row != 0).sum()) == 2
            others.append(j)
        assert others == [j for j in range(10) if j != label]


def test_mnist_parse_speed():
    f = _files("mnist_fc")[0]
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        read_vnnlib(f)
        best = min(best, time.perf_counter() - t)
    assert best < 0.5


# --------------------------------------------------------------------------------------------
# published counterexamples (ground truth: VNN-COMP 2022 results)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bench,count", [("acasxu", 47), ("mnist_fc", 18)])
def test_stored_counterexamples_lie_in_the_unsafe_set(bench, count):
    folder = shared_dir(bench)
    rows = [r for r in expected_rows(bench) if r["counterexample"]]
    assert len(rows) == count
    assert {r["counterexample"] for r in rows} == {
        f"counterexamples/{p.name}" for p in (folder / "counterexamples").glob("*.counterexample")
    }
    props: dict[str, Property] = {}
    for row in rows:
        prop = props.setdefault(row["vnnlib"], read_vnnlib(folder / row["vnnlib"]))
        x, y = read_counterexample(folder / row["counterexample"])
        assert x.dtype == np.float64 and y.dtype == np.float64
        assert x.shape == (prop.n_inputs,) and y.shape == (prop.n_outputs,)
        assert _member(prop, x[None], y[None], atol=1e-6)[0], row["counterexample"]
        # negative controls: far outside every box, or outputs that favour the safe answer
        assert not _member(prop, x[None] + 2.0, y[None], atol=1e-6)[0]
        if bench == "mnist_fc":
            label = int(re.search(r"label: (\d+)", (folder / row["vnnlib"]).read_text()).group(1))
            safe = np.zeros(10)
            safe[label] = 10.0
            assert not _member(prop, x[None], safe[None], atol=1e-6)[0]
        elif row["vnnlib"].endswith("prop_2.vnnlib"):  # unsafe iff Y_0 is maximal
            assert not _member(prop, x[None], np.array([[0.0, 1.0, 1.0, 1.0, 1.0]]), atol=1e-6)[0]


def test_counterexample_format_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=7) * 1e-3, rng.normal(size=3) * 1e5
    text = format_counterexample(torch.from_numpy(x).reshape(1, 7), y)
    assert text.startswith("((X_0 ") and text.rstrip().endswith(")")
    assert len(text.strip().splitlines()) == 10
    plain = _write(tmp_path, text, "ce.counterexample")
    zipped = tmp_path / "ce.counterexample.gz"
    zipped.write_bytes(gzip.compress(("sat\n" + text).encode()))
    for path in (plain, zipped):
        x2, y2 = read_counterexample(path)
        assert np.array_equal(x2, x) and np.array_equal(y2, y)


def test_counterexample_loose_layout(tmp_path):
    path = _write(tmp_path, "sat\n(  (Y_0 (- 0.5))(X_1   -2)\n\n (X_0 1e-3)\n)\n", "ce.txt")
    x, y = read_counterexample(path)
    assert x.tolist() == [1e-3, -2.0] and y.tolist() == [-0.5]
    with pytest.raises(SpecError) as err:
        read_counterexample(_write(tmp_path, "((X_0 1)\n(X_2 2)\n(Y_0 abc))", "bad.txt"))
    assert err.value.line == 3 and "abc" in str(err.value)
    with pytest.raises(SpecError) as err:
        read_counterexample(_write(tmp_path, "((X_0 1)\n(X_2 2)\n(Y_0 3))", "gap.txt"))
    assert err.value.line == 2 and "X_1" in str(err.value)


# --------------------------------------------------------------------------------------------
# semantics against a direct evaluation of the formula
# --------------------------------------------------------------------------------------------

HEAD2 = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
HEAD3 = HEAD2 + "(declare-const X_2 Real)\n"


def _decl_y(m: int) -> str:
    return "".join(f"(declare-const Y_{j} Real)\n" for j in range(m))


SEMANTIC_CASES = {
    "nested_or_and": (
        HEAD2 + _decl_y(3) + """
; two boxes, strict comparisons, scientific notation, constants on the left
(assert (or
  (and (<= X_0 1) (>= X_0 -1.0) (<= X_1 2e-1) (>= X_1 -2.5E-1))
  (and (<= 2 X_0) (>= 3 X_0) (< X_1 1.5e+0) (> X_1 .5))))
(assert (or
  (and (>= Y_0 Y_1) (<= (+ Y_0 (* 2 Y_1)) 0.5))
  (<= (- Y_2 Y_0) (- 0.25))            ; SMT-style negative constant
  (and (or (>= Y_1 1) (<= Y_1 -1)) (>= (* Y_2 -3) 0.75))))
""",
        lambda x, y: (
            (((-1 <= x[:, 0]) & (x[:, 0] <= 1) & (-0.25 <= x[:, 1]) & (x[:, 1] <= 0.2))
             | ((2 <= x[:, 0]) & (x[:, 0] <= 3) & (0.5 <= x[:, 1]) & (x[:, 1] <= 1.5)))
            & (((y[:, 0] >= y[:, 1]) & (y[:, 0] + 2 * y[:, 1] <= 0.5))
               | (y[:, 2] - y[:, 0] <= -0.25)
               | (((y[:, 1] >= 1) | (y[:, 1] <= -1)) & (-3 * y[:, 2] >= 0.75)))
        ),
        (2, [4, 4]),
        (-1.25, 3.25),
    ),
    "arithmetic_bounds": (
        HEAD3 + _decl_y(2) + """
(assert (<= (* -2 X_0) 1))
(assert (<= (* X_0 4) 3))
(assert (<= (+ X_1 0.5) 1.0))
(assert (>= (- X_1) -1))
(assert (>= (+ 1 X_1 1) 1.75))
(assert (>= X_2 (- 0.5)))
(assert (<= -1e0 X_2 (- 3 2)))
(assert (or (<= (- 3 Y_0 Y_1) 1) (> (* 0.5 (- Y_0 Y_1)) 0.25)))
""",
        lambda x, y: (
            (-0.5 <= x[:, 0]) & (x[:, 0] <= 0.75) & (-0.25 <= x[:, 1]) & (x[:, 1] <= 0.5)
            & (-0.5 <= x[:, 2]) & (x[:, 2] <= 1)
            & ((3 - y[:, 0] - y[:, 1] <= 1) | (0.5 * (y[:, 0] - y[:, 1]) >= 0.25))
        ),
        (1, [2]),
        (-1.0, 1.25),
    ),
    "product_of_disjunctions": (
        "(declare-const X_0 Real)\n" + _decl_y(2) + """
(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 0.5) (>= X_0 -1) (<= Y_0 -2))))
(assert (or (>= Y_1 3) (and (<= Y_0 Y_1) (<= 0 1))))
""",
        lambda x, y: (
            (((0 <= x[:, 0]) & (x[:, 0] <= 1)) | ((-1 <= x[:, 0]) & (x[:, 0] <= 0.5) & (y[:, 0] <= -2)))
            & ((y[:, 1] >= 3) | (y[:, 0] <= y[:, 1]))
        ),
        (2, [2, 2]),
        (-1.5, 1.5),
    ),
    "disjunct_without_outputs_and_empty_box": (
        "(declare-const X_0 Real)\n" + _decl_y(1) + """
(assert (<= X_0 1)) (assert (>= X_0 0))
(assert (or (and (<= X_0 0.5))
            (and (>= X_0 0.75) (>= Y_0 1))
            (and (>= X_0 2) (<= Y_0 -100))))   ; empty box: dropped
""",
        lambda x, y: (
            (0 <= x[:, 0]) & (x[:, 0] <= 1)
            & ((x[:, 0] <= 0.5) | ((x[:, 0] >= 0.75) & (y[:, 0] >= 1)))
        ),
        (2, [1, 1]),
        (-0.5, 2.5),
    ),
}


@pytest.mark.parametrize("case", sorted(SEMANTIC_CASES))
def test_semantics_match_direct_evaluation(tmp_path, case):
    text, truth, (n_specs, clauses), (xlo, xhi) = SEMANTIC_CASES[case]
    prop = read_vnnlib(_write(tmp_path, text))
    assert len(prop.specs) == n_specs
    assert [len(s.unsafe) for s in prop.specs] == clauses
    n_in, n_out = prop.n_inputs, prop.n_outputs
    rng = np.random.default_rng(0)
    n = 6000
    x = rng.uniform(xlo, xhi, size=(n, n_in))
    y = rng.uniform(-4, 4, size=(n, n_out))
    # dyadic grid values hit every boundary exactly (all constants above are exact in binary there)
    grid = np.arange(xlo, xhi + 0.125, 0.25)
    x[: n // 2] = rng.choice(grid, size=(n // 2, n_in))
    y[: n // 2] = rng.choice(np.arange(-16, 17) * 0.25, size=(n // 2, n_out))
    expected = truth(x, y)
    assert 0.03 < expected.mean() < 0.97  # both outcomes are well represented
    got = _member(prop, x, y)
    assert np.array_equal(got, expected), np.flatnonzero(got != expected)[:5]


def test_arithmetic_bounds_are_exact(tmp_path):
    prop = read_vnnlib(_write(tmp_path, SEMANTIC_CASES["arithmetic_bounds"][0]))
    box = prop.specs[0].input
    assert box.lower[0].tolist() == [-0.5, -0.25, -0.5]
    assert box.upper[0].tolist() == [0.75, 0.5, 1.0]
    clause_a, clause_b = prop.specs[0].unsafe
    assert clause_a.C[0, 0].tolist() == [-1.0, -1.0] and clause_a.d.item() == -2.0
    assert clause_b.C[0, 0].tolist() == [-0.5, 0.5] and clause_b.d.item() == -0.25


def test_order_of_appearance_is_kept(tmp_path):
    text = "(declare-const X_0 Real)\n" + _decl_y(3) + """
(assert (<= Y_2 1))
(assert (or (and (<= X_0 3) (>= X_0 2) (<= Y_1 2)) (and (<= X_0 1) (>= X_0 0) (<= Y_0 4))))
(assert (or (>= Y_0 5) (<= Y_1 6)))
(assert (<= Y_2 7))
"""
    prop = read_vnnlib(_write(tmp_path, text))
    assert [s.input.lower.item() for s in prop.specs] == [2.0, 0.0]

    def atoms(clause: Clause) -> list[tuple[int, float, float]]:  # (j, c, d) for the row c * Y_j <= d
        out = []
        for row, d in zip(clause.C[0].tolist(), clause.d[0].tolist()):
            (j,) = [k for k, c in enumerate(row) if c != 0.0]
            out.append((j, row[j], d))
        return out

    got = [[atoms(c) for c in s.unsafe] for s in prop.specs]
    y2a, y2b, ge5, le6 = (2, 1.0, 1.0), (2, 1.0, 7.0), (0, -1.0, -5.0), (1, 1.0, 6.0)
    assert got == [
        [[y2a, (1, 1.0, 2.0), ge5, y2b], [y2a, (1, 1.0, 2.0), le6, y2b]],
        [[y2a, (0, 1.0, 4.0), ge5, y2b], [y2a, (0, 1.0, 4.0), le6, y2b]],
    ]


def test_disjunct_without_outputs_is_always_unsafe(tmp_path):
    prop = read_vnnlib(_write(tmp_path, SEMANTIC_CASES["disjunct_without_outputs_and_empty_box"][0]))
    clause = prop.specs[0].unsafe[0]
    assert clause.C.tolist() == [[[0.0]]] and clause.d.tolist() == [[0.0]]
    assert prop.meta["empty_boxes_dropped"] == 1


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


def _round_trip(prop: Property, path: Path) -> Property:
    write_vnnlib(prop, path, comment=f"round trip of {prop.name}\nsecond comment line")
    return read_vnnlib(path)


def test_round_trip_shared_files(tmp_path):
    files = _files("acasxu") + _files("mnist_fc")
    assert len(files) == 40
    for f in files:
        prop = read_vnnlib(f)
        again = _round_trip(prop, tmp_path / f.name)
        _assert_same(prop, again)
        assert again.name == prop.name


def test_gzip_read_and_write(tmp_path):
    src = shared_dir("acasxu") / "vnnlib" / "prop_6.vnnlib"
    zipped = tmp_path / "prop_6.vnnlib.gz"
    zipped.write_bytes(gzip.compress(src.read_bytes()))
    plain, from_gz = read_vnnlib(src), read_vnnlib(zipped)
    assert from_gz.name == "prop_6" and from_gz.source == str(zipped)
    _assert_same(plain, from_gz)
    out = tmp_path / "written.vnnlib.gz"
    write_vnnlib(plain, out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert b"declare-const" in gzip.decompress(out.read_bytes())
    _assert_same(plain, read_vnnlib(out))


def test_single_spec_layout_is_plain_asserts(tmp_path):
    prop = read_vnnlib(shared_dir("acasxu") / "vnnlib" / "prop_1.vnnlib")
    path = tmp_path / "p1.vnnlib"
    write_vnnlib(prop, path)
    lines = path.read_text().splitlines()
    assert "(assert (<= X_0 0.679857769))" in lines and "(assert (>= X_0 0.6))" in lines
    assert "(assert (>= Y_0 3.991125645861615))" in lines


def test_batched_ball_writes_one_group_per_instance(tmp_path):
    x = torch.tensor([[0.2, 0.5, 0.9], [0.1, 0.3, 0.7]], dtype=torch.float64)
    spec = robustness(x, [0, 2], 0.05, n_classes=3, clip=(0.0, 1.0))
    prop = Property("ball", (spec,))
    path = tmp_path / "ball.vnnlib"
    write_vnnlib(prop, path)
    back = read_vnnlib(path)
    assert len(back.specs) == 2
    bounds = spec.input.bounds()
    for b, s in enumerate(back.specs):
        # the exact box [c - eps, c + eps] is written and read back rounded outward: it lies between
        # the exact box and the ball's own (outward-rounded) float bounds
        exact_lo = [max(Fraction(c) - Fraction(0.05), 0) for c in x[b].tolist()]
        exact_hi = [min(Fraction(c) + Fraction(0.05), 1) for c in x[b].tolist()]
        assert list(s.exact_input.lower[0]) == exact_lo and list(s.exact_input.upper[0]) == exact_hi
        assert all(Fraction(v) <= q for v, q in zip(s.input.lower[0].tolist(), exact_lo))
        assert all(Fraction(v) >= q for v, q in zip(s.input.upper[0].tolist(), exact_hi))
        assert bool((s.input.lower >= bounds.lower[b : b + 1]).all())
        assert bool((s.input.upper <= bounds.upper[b : b + 1]).all())
        assert len(s.unsafe) == 2
        for c, orig in zip(s.unsafe, spec.unsafe):
            assert torch.equal(c.C, orig.C[b : b + 1]) and torch.equal(c.d, orig.d[b : b + 1])


def test_non_box_input_sets_are_rejected(tmp_path):
    spec = robustness(torch.zeros(1, 3), [0], 0.1, p=2, n_classes=3)
    with pytest.raises(SpecError, match="VNN-LIB can only express boxes"):
        write_vnnlib(Property("l2", (spec,)), tmp_path / "l2.vnnlib")
    assert not (tmp_path / "l2.vnnlib").exists()


_any_float = st.floats(allow_nan=False, allow_infinity=False, width=64)
_coef = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.1]), _any_float)


@st.composite
def _properties(draw) -> Property:
    n_in = draw(st.integers(1, 4))
    n_out = draw(st.integers(1, 4))
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        pairs = [sorted(draw(st.tuples(_any_float, _any_float))) for _ in range(n_in)]
        lower = torch.tensor([[p[0] for p in pairs]], dtype=torch.float64)
        upper = torch.tensor([[p[1] for p in pairs]], dtype=torch.float64)
        clauses = []
        for _ in range(draw(st.integers(1, 3))):
            rows = draw(st.integers(1, 3))
            C = torch.tensor(draw(st.lists(st.lists(_coef, min_size=n_out, max_size=n_out),
                                           min_size=rows, max_size=rows)), dtype=torch.float64)
            d = torch.tensor(draw(st.lists(_coef, min_size=rows, max_size=rows)), dtype=torch.float64)
            clauses.append(Clause(C[None], d[None]))
        specs.append(Spec(Box(lower, upper), tuple(clauses)))
    return Property("generated", tuple(specs))


def _merged_by_box(prop: Property) -> Property:
    """What reading back must give: specs with identical boxes merged, in order of appearance."""
    groups: dict[tuple, list] = {}
    boxes = {}
    for s in prop.specs:
        key = (tuple(s.input.lower[0].tolist()), tuple(s.input.upper[0].tolist()))
        groups.setdefault(key, []).extend(s.unsafe)
        boxes.setdefault(key, s.input)
    return Property(prop.name, tuple(Spec(boxes[k], tuple(v)) for k, v in groups.items()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prop=_properties(), gz=st.booleans())
def test_round_trip_generated_properties(prop, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("generated.vnnlib.gz" if gz else "generated.vnnlib")
        again = _round_trip(prop, path)
    _assert_same(_merged_by_box(prop), again)


def test_identical_boxes_are_grouped_into_one_spec(tmp_path):
    box = Box(torch.tensor([[0.0, -1.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    c1 = Clause(torch.tensor([[[1.0, -1.0]]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    c2 = Clause(torch.tensor([[[0.0, 2.0]]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    prop = Property("same", (Spec(box, (c1,)), Spec(box, (c2,))))
    back = _round_trip(prop, tmp_path / "same.vnnlib")
    assert len(back.specs) == 1 and len(back.specs[0].unsafe) == 2
    _assert_same(_merged_by_box(prop), back)


# --------------------------------------------------------------------------------------------
# malformed input
# --------------------------------------------------------------------------------------------

HEAD = HEAD2 + _decl_y(2)  # lines 1-4
BOX = "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n"  # lines 5-8
OUT = "(assert (<= Y_0 Y_1))\n"

MALFORMED = [
    ("extra_paren", HEAD + BOX + "(assert (<= Y_0 Y_1)))\n", 9, "unbalanced parentheses"),
    ("unclosed_at_end", HEAD + BOX + "(assert (<= Y_0 Y_1)\n; trailing comment\n", 9, "never closed"),
    ("unclosed_mid_file", HEAD + "(assert (<= X_0 1)\n" + BOX[20:] + OUT, 5, "not closed"),
    ("undeclared_variable", HEAD + BOX + "(assert (<= Y_2 Y_1))\n", 9, "undeclared variable 'Y_2'"),
    ("bad_number", HEAD + "(assert (<= X_0 0.5.3))\n" + BOX + OUT, 5, "expected a number, got '0.5.3'"),
    ("non_numeric", HEAD + BOX + OUT + "(assert (<= Y_0 abc))\n", 10, "got 'abc'"),
    ("nan_literal", HEAD + BOX + "(assert (<= Y_0 nan))\n", 9, "got 'nan'"),
    ("nonlinear", HEAD + BOX + "(assert (<= (* Y_0 Y_1) 1))\n", 9, "expected a number after '*', got 'Y_1'"),
    ("mixed", HEAD + BOX + OUT + "(assert (<= X_0 Y_0))\n", 10, "mixed input/output constraint"),
    ("general_input", HEAD + BOX + "(assert (<= (+ X_0 X_1) 1))\n" + OUT, 9,
     "general linear constraints over inputs are not supported"),
    ("missing_lower", HEAD + BOX[:60] + OUT, 2, "X_1 has no lower bound"),
    ("missing_upper", HEAD + BOX[20:] + OUT, 1, "X_0 has no upper bound"),
    ("unknown_command", HEAD + BOX + "(define-fun f () Real 1.0)\n" + OUT, 9, "unknown command 'define-fun'"),
    ("unknown_operator", HEAD + BOX + "(assert (not (<= Y_0 Y_1)))\n", 9, "unknown operator 'not'"),
    ("bad_name", "(declare-const Z_0 Real)\n" + HEAD, 1, "X_<int>"),
    ("bad_sort", HEAD + "(declare-const X_2 Int)\n", 5, "expected sort 'Real'"),
    ("index_gap", "(declare-const X_0 Real)\n(declare-const X_2 Real)\n" + _decl_y(1), 2, "X_1 is not declared"),
    ("duplicate", HEAD + "(declare-const X_1 Real)\n", 5, "declared twice"),
    ("no_outputs", HEAD + BOX, 8, "no output constraints"),
    ("empty_boxes", HEAD + BOX + "(assert (>= X_1 2))\n" + OUT, 9, "every input box is empty"),
    ("deep_error_line", HEAD + BOX + "(assert (or\n  (and (<= Y_0 Y_1))\n  (and (<= Y_0 foo))))\n", 11, "got 'foo'"),
    ("too_many_disjuncts", HEAD + BOX + "".join(f"(assert (or (<= Y_0 {k}) (>= Y_1 {k})))\n" for k in range(17)),
     25, "more than 100000 disjuncts"),
]


@pytest.mark.parametrize("name,text,line,fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files(tmp_path, name, text, line, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        read_vnnlib(path)
    assert err.value.path == str(path)
    assert err.value.line == line, str(err.value)
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_malformed_gzip_reports_lines_too(tmp_path):
    path = tmp_path / "bad.vnnlib.gz"
    path.write_bytes(gzip.compress((HEAD + BOX + "(assert (<= X_0 Y_0))\n").encode()))
    with pytest.raises(SpecError, match="mixed input/output") as err:
        read_vnnlib(path)
    assert err.value.line == 9


def test_comments_and_ignored_commands(tmp_path):
    text = ("; header ( with an unbalanced paren in a comment\n" + HEAD
            + BOX.replace("\n", " ; ) trailing comment\n", 1) + OUT + "(check-sat)\n")
    prop = read_vnnlib(_write(tmp_path, text))
    assert prop.specs[0].input.upper[0].tolist() == [1.0, 1.0]
    assert prop.specs[0].unsafe[0].C.tolist() == [[[1.0, -1.0]]]


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such file") as err:
        read_vnnlib(tmp_path / "absent.vnnlib")
    assert err.value.path == str(tmp_path / "absent.vnnlib")
    with pytest.raises(SpecError, match="no such file"):
        read_counterexample(tmp_path / "absent.counterexample")


def test_declared_sizes_checked_against_caller(tmp_path):
    path = _write(tmp_path, HEAD + BOX + OUT)
    assert read_vnnlib(path, n_inputs=2, n_outputs=2).n_inputs == 2
    with pytest.raises(ShapeError) as err:
        read_vnnlib(path, n_inputs=784)
    assert "784" in str(err.value) and "2" in str(err.value)
    assert (err.value.expected, err.value.got) == (784, 2)
    with pytest.raises(ShapeError) as err:
        read_vnnlib(path, n_outputs=10)
    assert (err.value.expected, err.value.got) == (10, 2)
