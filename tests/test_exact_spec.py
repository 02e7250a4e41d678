"""Exact specifications: VNN-LIB constants combined in rationals (not float64), outward-rounded input
boxes, strict comparisons honoured by counterexample replay, float64 runtimes replayed in float64, exact
eps of robustness balls, and a derandomised round trip of the reader against a rational evaluation."""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import certify
from certify import replay
from certify.errors import SpecError
from certify.results import Verdict
from certify.spec import ExactBall, robustness, round_float
from certify.vnnlib import read_vnnlib, write_vnnlib

DECL = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"


def _identity_onnx(path: Path, double: bool = False) -> Path:
    """``y = x @ [[1.0]]`` on one input, in float32 or float64 (input, weight and output DOUBLE)."""
    kind, dtype = (TensorProto.DOUBLE, np.float64) if double else (TensorProto.FLOAT, np.float32)
    w = numpy_helper.from_array(np.ones((1, 1), dtype=dtype), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", kind, [1, 1])],
                              [helper.make_tensor_value_info("y", kind, [1, 1])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def identity32(tmp_path_factory):
    return certify.load_model(_identity_onnx(tmp_path_factory.mktemp("m") / "id32.onnx"))


@pytest.fixture(scope="module")
def identity64(tmp_path_factory):
    return certify.load_model(_identity_onnx(tmp_path_factory.mktemp("m") / "id64.onnx", double=True))


def _prop(tmp_path: Path, body: str, name: str = "case.vnnlib"):
    path = tmp_path / name
    path.write_text(DECL + body)
    return read_vnnlib(path)


def _verdicts(model, prop, timeout: float = 20) -> dict[str, certify.Result]:
    return {m: certify.verify(model, prop, method=m, timeout=timeout) for m in ("crown", "auto")}


def _genuine(model, prop, result) -> None:
    """A falsified answer's counterexample satisfies the exact statement (re-checked here)."""
    cex = result.counterexample
    spec = prop.specs[cex.spec_index]
    assert spec.exact_contains(cex.x)
    assert spec.exact_reached(model.reference(cex.x.reshape(1, 1))) is not None


# --------------------------------------------------------------------------------------------
# constants are combined exactly
# --------------------------------------------------------------------------------------------


def test_output_constants_combine_exactly(tmp_path, identity32):
    # exact: Y_0 <= 1 (float64: 1e16 + 1 == 1e16, which made it Y_0 <= 0)
    prop = _prop(tmp_path, "(assert (>= X_0 0.5))\n(assert (<= X_0 1))\n(assert (<= (+ Y_0 1e16) (+ 1e16 1)))\n")
    clause = prop.specs[0].unsafe[0]
    assert clause.d.item() == 1.0 and clause.C.item() == 1.0
    assert clause.exact[0] == (((Fraction(1),), Fraction(1), False),)
    # truth: every input of [0.5, 1] reaches Y_0 <= 1, so the property is violated
    for method, result in _verdicts(identity32, prop).items():
        assert result.verdict is not Verdict.PROVED, method
        if result.verdict is Verdict.FALSIFIED:
            _genuine(identity32, prop, result)
    assert _verdicts(identity32, prop)["auto"].verdict is Verdict.FALSIFIED


def test_output_constants_combine_exactly_holds(tmp_path, identity32):
    # exact: Y_0 >= 1 on X_0 in [0, 0.5]: unreachable (float64 read it as Y_0 >= 0: a bogus counterexample)
    prop = _prop(tmp_path, "(assert (>= X_0 0))\n(assert (<= X_0 0.5))\n(assert (>= (+ Y_0 1e16) (+ 1e16 1)))\n")
    for method, result in _verdicts(identity32, prop).items():
        assert result.verdict is Verdict.PROVED, (method, result.reason)
    assert replay.check(identity32, prop.specs[0], np.array([0.0])) is None
    assert prop.specs[0].unsafe[0].exact[0] == (((Fraction(-1),), Fraction(-1), False),)


def test_input_constants_combine_exactly(tmp_path, identity32):
    # exact: X_0 >= 0.5 (float64: 1e16 + 0.5 == 1e16, which made it X_0 >= 0)
    prop = _prop(tmp_path, "(assert (>= (+ X_0 1e16) (+ 1e16 0.5)))\n(assert (<= X_0 1))\n(assert (<= Y_0 0.25))\n")
    spec = prop.specs[0]
    assert spec.input.lower.item() == 0.5
    # truth: Y_0 = X_0 >= 0.5 > 0.25, the property holds
    for method, result in _verdicts(identity32, prop).items():
        assert result.verdict is Verdict.PROVED, (method, result.reason)
    assert replay.check(identity32, spec, np.array([0.0])) is None  # moved to 0.5: not unsafe
    assert spec.exact_input.lower[0] == (Fraction(1, 2),)


def test_division_by_a_coefficient_is_exact_then_outward(tmp_path):
    prop = _prop(tmp_path, "(assert (<= (* 3 X_0) 1))\n(assert (<= (* -3 X_0) 1))\n(assert (<= Y_0 0))\n")
    spec = prop.specs[0]
    assert spec.exact_input.upper[0] == (Fraction(1, 3),) and spec.exact_input.lower[0] == (Fraction(-1, 3),)
    lo, hi = spec.input.lower.item(), spec.input.upper.item()
    assert Fraction(hi) > Fraction(1, 3) > Fraction(math.nextafter(hi, 0))
    assert Fraction(lo) < Fraction(-1, 3) < Fraction(math.nextafter(lo, 0))
    # written back exactly (scaled to integers, 1/3 has no decimal expansion) and read back the same
    write_vnnlib(prop, tmp_path / "back.vnnlib")
    back = read_vnnlib(tmp_path / "back.vnnlib").specs[0]
    assert back.exact_input.upper == spec.exact_input.upper and back.exact_input.lower == spec.exact_input.lower
    assert torch.equal(back.input.lower, spec.input.lower) and torch.equal(back.input.upper, spec.input.upper)


def test_constant_overflow_is_still_an_error(tmp_path):
    with pytest.raises(SpecError, match="out of range") as err:
        _prop(tmp_path, "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= Y_0 (+ 1e308 1e308)))\n")
    assert err.value.line == 5
    with pytest.raises(SpecError, match="out of range"):
        _prop(tmp_path, "(assert (>= X_0 0))\n(assert (<= X_0 1e309))\n(assert (<= Y_0 0))\n")


# --------------------------------------------------------------------------------------------
# strict comparisons
# --------------------------------------------------------------------------------------------


def test_strict_input_bound_rejects_the_boundary(tmp_path, identity32):
    # X_0 in (0, 1], unsafe Y_0 <= 0: holds (Y_0 = X_0 > 0); the closure reaches Y_0 = 0 at X_0 = 0
    prop = _prop(tmp_path, "(assert (> X_0 0))\n(assert (<= X_0 1))\n(assert (<= Y_0 0))\n")
    spec = prop.specs[0]
    assert replay.check(identity32, spec, np.array([0.0])) is None
    assert spec.exact_input.lower_strict[0] == (True,) and spec.input.lower.item() == 0.0  # closed float box
    assert not spec.exact_contains(np.array([0.0])) and spec.exact_contains(np.array([1e-300]))
    for method, result in _verdicts(identity32, prop, timeout=1).items():  # the closure cannot be proved
        assert result.verdict is not Verdict.FALSIFIED, method


def test_strict_output_row_rejects_the_boundary(tmp_path, identity32):
    # X_0 in [0, 1], unsafe Y_0 > 1: holds; Y_0 = 1.0 at X_0 = 1 is on the boundary, not in the region
    prop = _prop(tmp_path, "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (> Y_0 1))\n")
    spec = prop.specs[0]
    assert replay.check(identity32, spec, np.array([1.0])) is None
    assert spec.unsafe[0].exact[0] == (((Fraction(-1),), Fraction(-1), True),)
    assert spec.exact_reached(np.array([1.0])) is None and spec.exact_reached(np.array([1.5])) is not None
    assert bool(spec.violated_by(torch.tensor([[1.0]], dtype=torch.float64))[0])  # the float closure does
    for method, result in _verdicts(identity32, prop, timeout=1).items():  # the closure cannot be proved
        assert result.verdict is not Verdict.FALSIFIED, method


def test_strict_bounds_on_both_sides_with_a_genuine_counterexample(tmp_path, identity32):
    # X_0 in (0, 1), unsafe Y_0 < 1: every input is a counterexample, none on the boundary
    prop = _prop(tmp_path, "(assert (> X_0 0))\n(assert (< X_0 1))\n(assert (< Y_0 1))\n")
    spec = prop.specs[0]
    for x in (0.0, 1.0, 0.5):
        cex = replay.check(identity32, spec, np.array([x]))
        assert cex is not None and 0.0 < cex.x[0] < 1.0 and cex.y[0] < 1.0
    assert certify.verify(identity32, prop, method="auto", timeout=20).verdict is Verdict.FALSIFIED


def test_strict_empty_box_is_dropped(tmp_path):
    prop = _prop(tmp_path, "(assert (or (and (> X_0 0) (<= X_0 0)) (and (>= X_0 1) (<= X_0 2))))\n"
                 "(assert (<= Y_0 0))\n")
    assert len(prop.specs) == 1 and prop.meta["empty_boxes_dropped"] == 1
    assert prop.specs[0].exact_input.lower[0] == (Fraction(1),)


# --------------------------------------------------------------------------------------------
# float64 runtimes are replayed in float64
# --------------------------------------------------------------------------------------------


def test_float64_model_counterexample_needs_float64(tmp_path, identity64):
    assert identity64.graph.runtime_dtype == torch.float64
    # the box (1 + 1e-12, 1 + 2e-12) holds no float32 (spacing 2^-23 near 1): rounding the candidate
    # to float32, as replay did for every model, loses every counterexample
    prop = _prop(tmp_path, "(assert (> X_0 1.000000000001))\n(assert (< X_0 1.000000000002))\n(assert (>= Y_0 1))\n")
    spec = prop.specs[0]
    x = np.array([1.0000000000015])
    cex = replay.check(identity64, spec, x)
    assert cex is not None
    assert cex.x.tolist() == x.tolist() and cex.y.tolist() == x.tolist()  # fed and returned in float64
    assert Fraction("1.000000000001") < Fraction(cex.x[0]) < Fraction("1.000000000002")
    # candidates on or outside the (strict) bounds are moved inside, by float64 steps
    for outside in (1.0, 1.000000000001, 2.0):
        moved = replay.check(identity64, spec, np.array([outside]))
        assert moved is not None and spec.exact_contains(moved.x)
    result = certify.verify(identity64, prop, method="auto", timeout=20)
    assert result.verdict is Verdict.FALSIFIED
    _genuine(identity64, prop, result)


def test_float32_model_is_still_replayed_in_float32(tmp_path, identity32):
    prop = _prop(tmp_path, "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= Y_0 0))\n")
    cex = replay.check(identity32, prop.specs[0], np.array([0.1]))
    assert cex is not None and cex.x[0] == float(np.float32(0.1)) != 0.1
    # a float32 model on the float64-only box has no counterexample replay can feed it
    tight = _prop(tmp_path, "(assert (> X_0 1.000000000001))\n(assert (< X_0 1.000000000002))\n(assert (>= Y_0 1))\n",
                  "tight.vnnlib")
    assert replay.check(identity32, tight.specs[0], np.array([1.0000000000015])) is None


# --------------------------------------------------------------------------------------------
# robustness balls: exact eps
# --------------------------------------------------------------------------------------------


def test_decimal_eps_is_exact_and_the_float_ball_contains_it():
    x = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    for text in ("0.3", "0.02", "1e-3", "0.1"):
        spec = robustness(x, [0], text, n_classes=2)
        exact = Fraction(text)
        assert isinstance(spec.exact_input, ExactBall) and spec.exact_input.eps == (exact,)
        eps_f = spec.input.eps.item()
        assert Fraction(eps_f) >= exact and Fraction(math.nextafter(eps_f, 0)) < exact  # rounded up, by one step
    # a float eps is its binary value, exactly
    assert robustness(x, [0], 0.3, n_classes=2).exact_input.eps == (Fraction(0.3),)


@pytest.mark.parametrize("p", ["inf", 2, 1])
def test_ball_membership_is_exact(p):
    """Points just inside/outside the exact ball in every norm, against a rational evaluation."""
    rng = np.random.default_rng(1)
    c = torch.tensor([[0.3, 0.6, 0.45]], dtype=torch.float64)
    spec = robustness(c, [0], "0.1", p=p, n_classes=2, clip=(0, 1))
    order = {"inf": math.inf, 2: 2, 1: 1}[p]
    seen = set()
    for _ in range(300):
        v = rng.standard_normal(3)
        v = v / np.linalg.norm(v, ord=order) * 0.1 * (1 + rng.choice([-1, 1]) * 1e-16 * rng.integers(0, 4))
        point = c.numpy()[0] + v
        d = [Fraction(a) - Fraction(b) for a, b in zip(point.tolist(), c[0].tolist())]
        if p == "inf":
            inside = max(abs(t) for t in d) <= Fraction("0.1")
        elif p == 2:
            inside = sum(t * t for t in d) <= Fraction("0.1") ** 2
        else:
            inside = sum(abs(t) for t in d) <= Fraction("0.1")
        inside = inside and all(0 <= t <= 1 for t in point.tolist())
        assert spec.exact_contains(point) == inside
        seen.add(inside)
    assert seen == {True, False}


def test_ball_replay_accepts_only_exact_members(identity32):
    # the exact L2 ball of radius 1/10 around 0.5 with the unsafe clause Y_0 >= 0.55, on y = x
    from certify.spec import Clause, Spec

    ball = robustness(torch.tensor([[0.5]], dtype=torch.float64), [0], "0.1", p=2, n_classes=2)
    clause = Clause(torch.tensor([[[-1.0]]], dtype=torch.float64), torch.tensor([[-0.55]], dtype=torch.float64))
    spec = Spec(ball.input, (clause,), "ball", ball.exact_input)
    cex = replay.check(identity32, spec, np.array([0.6000001]))  # outside: pulled into the exact ball
    assert cex is not None and Fraction(cex.x[0]) - Fraction(0.5) <= Fraction("0.1")
    assert cex.y[0] >= 0.55


# --------------------------------------------------------------------------------------------
# the reader against a rational evaluation of the text (derandomised)
# --------------------------------------------------------------------------------------------


@st.composite
def _decimal(draw, nonzero: bool = False) -> str:
    """Decimal or scientific literals: 12, -0.5, .25, 3., 1.5E+2, 7e-3, 1e16 ..."""
    sign = draw(st.sampled_from(["", "-", "+"])) if not nonzero else draw(st.sampled_from(["", "-"]))
    whole = draw(st.one_of(st.just(""), st.integers(0, 10**18).map(str)))
    frac = draw(st.one_of(st.just(""), st.integers(0, 10**12).map(str)))
    if not whole and not frac:
        whole = "1"
    body = whole + ("." + frac if frac or draw(st.booleans()) else "") if whole else "." + frac
    exp = ""
    if draw(st.booleans()):
        e = draw(st.integers(-30, 30))
        exp = draw(st.sampled_from(["e", "E"])) + (draw(st.sampled_from(["", "+"])) if e >= 0 else "") + str(e)
    text = sign + body + exp
    if nonzero:
        assume(Fraction(text) != 0)
    return text


def _neg(text: str) -> str:
    return f"(- {text})"


@settings(derandomize=True, max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                   HealthCheck.filter_too_much])
@given(k=st.lists(_decimal(), min_size=6, max_size=6), a=st.lists(_decimal(nonzero=True), min_size=2, max_size=2),
       ops=st.lists(st.sampled_from(["<=", "<", ">=", ">"]), min_size=3, max_size=3))
def test_reader_matches_rational_evaluation(tmp_path_factory, k, a, ops):
    # atom 1 bounds X_0 from above, atom 2 from below (the sign of the coefficient decides)
    def direction(op: str, coef: Fraction) -> bool:  # True: an upper bound
        return (op in ("<=", "<")) == (coef > 0)

    a1, a2 = Fraction(a[0]), Fraction(a[1])
    t1 = a[0] if direction(ops[0], a1) else _neg(a[0])
    c1 = a1 if direction(ops[0], a1) else -a1
    t2 = a[1] if not direction(ops[1], a2) else _neg(a[1])
    c2 = a2 if not direction(ops[1], a2) else -a2
    upper = (Fraction(k[1]) - Fraction(k[0])) / c1  # (op (+ (* t1 X_0) k0) k1)
    lower = (Fraction(k[3]) + Fraction(k[2])) / c2  # (op (* t2 X_0) (+ k2 k3))
    assume(lower < upper)
    y_coef = Fraction(k[4]) - 2  # (op (+ (* k4 Y_0) k5) (* 2 Y_0))
    y_bound = -Fraction(k[5])
    assume(y_coef != 0)
    text = (f"(assert ({ops[0]} (+ (* {t1} X_0) {k[0]}) {k[1]}))\n"
            f"(assert ({ops[1]} (* {t2} X_0) (+ {k[2]} {k[3]})))\n"
            f"(assert ({ops[2]} (+ (* {k[4]} Y_0) {k[5]}) (* 2 Y_0)))\n")
    try:
        prop = _prop(tmp_path_factory.mktemp("rt"), text)
    except SpecError as exc:  # only for constants whose float64 rounding overflows
        assert "out of range" in str(exc)
        return
    spec = prop.specs[0]
    ex = spec.exact_input
    assert ex.upper[0][0] == upper and ex.lower[0][0] == lower
    assert ex.upper_strict[0][0] == (ops[0] in ("<", ">")) and ex.lower_strict[0][0] == (ops[1] in ("<", ">"))
    # the float box contains the exact box, by the smallest possible step
    lo_f, hi_f = spec.input.lower.item(), spec.input.upper.item()
    assert Fraction(lo_f) <= lower and (lo_f == -math.inf or Fraction(math.nextafter(lo_f, math.inf)) > lower)
    assert Fraction(hi_f) >= upper and Fraction(math.nextafter(hi_f, -math.inf)) < upper
    # the output row: coef * Y_0 <= bound (or its negation for >=, >), nearest float64
    sign = 1 if ops[2] in ("<=", "<") else -1
    (coefs, bound, strict), = spec.unsafe[0].exact[0]
    assert coefs == (sign * y_coef,) and bound == sign * y_bound and strict == (ops[2] in ("<", ">"))
    assert spec.unsafe[0].C.item() == float(sign * y_coef) and spec.unsafe[0].d.item() == float(sign * y_bound)
    assert spec.unsafe[0].d.item() == round_float(sign * y_bound)
