"""Floating-point and import traps: tiny ONNX models and VNN-LIB properties whose truth onnxruntime decides.

A *proved* answer covers the exact network **and** the network as its runtime evaluates it in the model's
precision (``certify.engine.fp``). Each trap separates the two, or tests a corner of the property's exact
statement, on a model small enough that the truth is not in doubt:

* ``sat`` traps: onnxruntime violates the property at a recorded point ``x_star`` (judged exactly: the
  point as fed in the model's input type, rational VNN-LIB bounds and rows, strict ones strictly). Often
  the *exact* network satisfies it (``exact_network: holds``): a verifier of the real-valued network
  only would prove it, which is unsound for the runtime.
* ``unsat`` traps: the property holds for the exact network (an argument stated in the manifest) and for
  the runtime, established by evaluating onnxruntime on **every** float of the input type in a 1-D box
  (``enumerated``) or, where the box is too large for that, by an IEEE argument (Neg and ReLU are exact;
  a product of positive numbers above the subnormal range does not round to zero under gradual
  underflow) backed by dense sampling and the box's special points. A verifier may answer ``unknown`` on
  an unsat trap (its runtime semantics may also cover flush-to-zero); it may never answer ``sat`` with a
  counterexample that fails replay.

Families: ``cancellation`` (``((x + 2^24) - 2^24) - x``), ``subnormal`` (float64 weight ``1e-310``;
float32 weight and inputs about ``1e-40``), ``tiny_huge`` (``1e4 relu(1e-10 x - 0.19999)`` on
``[1e9, 2e9]``), ``runtime_rounding`` (``(3x)/3 - x``), ``batchnorm`` (mean ``8e6``, variance ``0.11``,
``beta = float32(mean / sqrt(var))``), ``cast`` (a round trip through float16 inside the model: a
verifier may refuse the model, never prove the violated property), ``vnnlib_constants``
(``(<= (+ Y_0 1e16) (+ 1e16 1))``), ``strict`` (``(> X_0 0)`` whose only violating point is 0;
``(> Y_0 0)`` where the runtime's maximum is exactly 0).

``generate_traps(out)`` writes ``onnx/``, ``vnnlib/``, ``instances.csv`` and ``manifest.json`` in the
format of ``certify.audit.generate``, so ``certify audit OUT --verifier NAME[,NAME...]`` judges them. The
manifest's ``exact`` entry is the rational statement (strings, strictness flags) the auditor judges
against; ``lower``/``upper`` are its float64 box rounded outward and ``C``/``d`` the nearest float64 rows.
Generation re-establishes every truth and raises if one does not hold (a trap is never written on faith).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal, getcontext
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CertifyError
from ..spec import round_float

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE
_NP = {F32: np.float32, F64: np.float64}

#: Answers acceptable on a trap, besides the expected one: a verifier may always give up.
GIVE_UP = ["unknown", "timeout", "error"]


@dataclass
class Trap:
    """One trap: the model's nodes and constants (input ``X``, output ``Y``, both ``[1, 1]``), the box
    ``(lower, lower_strict, upper, upper_strict)`` as decimal strings, one unsafe row
    ``coef * Y_0 <= bound`` (``<`` when strict), the VNN-LIB text of that row, and how the truth is found:
    ``candidates`` (sat) or ``enumerate``/``samples`` (unsat)."""

    name: str
    family: str
    expected: str
    description: str
    argument: str
    nodes: list
    inits: list
    box: tuple[str, bool, str, bool]
    row: tuple[str, str, bool]
    row_text: str
    dtype: int = F32
    candidates: list[float] = field(default_factory=list)
    enumerate: bool = False
    samples: list[float] = field(default_factory=list)
    exact_network: str = "holds"
    acceptable: list[str] = field(default_factory=list)

    def model(self, batch: int | str = 1) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, self.name, [helper.make_tensor_value_info("X", self.dtype, [batch, 1])],
                              [helper.make_tensor_value_info("Y", self.dtype, [batch, 1])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="certify.audit.traps")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    def vnnlib(self) -> str:
        lo, ls, hi, hs = self.box
        return (f"; certify trap {self.name} ({self.family}); expected {self.expected}\n; {self.description}\n"
                f"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                f"(assert ({'>' if ls else '>='} X_0 {lo}))\n(assert ({'<' if hs else '<='} X_0 {hi}))\n"
                f"(assert {self.row_text})\n")

    def exact(self) -> dict:
        lo, ls, hi, hs = self.box
        coef, bound, strict = self.row
        return {"lower": [str(Fraction(lo))], "lower_strict": [ls], "upper": [str(Fraction(hi))], "upper_strict": [hs],
                "clauses": [[{"coefs": [str(Fraction(coef))], "bound": str(Fraction(bound)), "strict": strict}]]}


def _c(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _n(op: str, ins: list[str], out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, [out], name=out, **attrs)


def _exact_sqrt_quotient(num: Fraction, den: Fraction, digits: int = 60) -> Decimal:
    getcontext().prec = digits
    return Decimal(num.numerator) / Decimal(num.denominator) / (Decimal(den.numerator) / Decimal(den.denominator)).sqrt()


def traps() -> list[Trap]:
    """The catalogue (deterministic: no randomness anywhere)."""
    out: list[Trap] = []
    f32 = np.float32

    # -- cancellation against 2^24 -------------------------------------------------------------------
    cancel = [_n("Add", ["X", "big"], "a"), _n("Sub", ["a", "big"], "b"), _n("Sub", ["b", "X"], "Y")]
    big = [_c("big", [2.0 ** 24])]
    out.append(Trap("cancel_2p24_sat", "cancellation", "sat",
                    "y = ((x + 2^24) - 2^24) - x, exactly 0; float32 absorbs x into 2^24 and returns -x",
                    "onnxruntime returns y = -1 at x = 1 (x + 2^24 rounds to 2^24): -1 <= -0.5. The exact network "
                    "is y = 0 and satisfies the property: a proof for the real-valued network is unsound here.",
                    cancel, big, ("0.0", False, "1.0", False), ("1", "-0.5", False), "(<= Y_0 -0.5)",
                    candidates=[1.0, 0.75]))
    out.append(Trap("cancel_2p24_unsat", "cancellation", "unsat",
                    "the same network; unsafe y < -1 (strict) on [0.5, 1]: the runtime's minimum is exactly -1",
                    "exact network: y = 0 > -1. Runtime: all 8388609 float32 inputs of [0.5, 1] enumerated in "
                    "onnxruntime; the minimum is y = -1 at x = 1, which is not < -1.",
                    cancel, big, ("0.5", False, "1.0", False), ("1", "-1", True), "(< Y_0 -1.0)", enumerate=True))

    # -- subnormals -----------------------------------------------------------------------------------
    w64 = [_n("MatMul", ["X", "w"], "Y")]
    out.append(Trap("subnormal_f64_weight_unsat", "subnormal", "unsat",
                    "float64 model y = 1e-310 x (a subnormal weight) on [1, 2]; unsafe y <= 0",
                    "exact network: y = w x >= w > 0 with w = float64(1e-310) > 0. Runtime: a product of positive "
                    "floats whose exact value is >= 1e-310, far above the smallest float64 subnormal (4.9e-324), "
                    "rounds to a positive float under IEEE gradual underflow (onnxruntime's default: no "
                    "denormals-as-zero); 20001 evenly spaced inputs and both end points evaluated, all > 0.",
                    w64, [_c("w", [[1e-310]], np.float64)], ("1.0", False, "2.0", False), ("1", "0", False),
                    "(<= Y_0 0.0)", dtype=F64, samples=list(np.linspace(1.0, 2.0, 20001))))
    out.append(Trap("subnormal_f64_weight_sat", "subnormal", "sat",
                    "float64 model y = 1e-310 x on [1, 2]; unsafe y >= 1.5e-310 (a weight flushed to zero "
                    "would prove it)",
                    "onnxruntime returns y = 2e-310 at x = 2 (float64, gradual underflow): >= 1.5e-310.",
                    w64, [_c("w", [[1e-310]], np.float64)], ("1.0", False, "2.0", False), ("-1", "-1.5e-310", False),
                    "(>= Y_0 1.5e-310)", dtype=F64, candidates=[2.0, 1.9], exact_network="violated"))
    out.append(Trap("subnormal_f32_weight_sat", "subnormal", "sat",
                    "y = 1e-40 x with a float32 subnormal weight on [1, 2]; unsafe y >= 1.5e-40",
                    "onnxruntime returns y = 1.99999e-40 at x = 2 (the weight is float32(1e-40) = "
                    f"{float(f32(1e-40))!r}): >= 1.5e-40.",
                    [_n("MatMul", ["X", "w"], "Y")], [_c("w", [[1e-40]])], ("1.0", False, "2.0", False),
                    ("-1", "-1.5e-40", False), "(>= Y_0 1.5e-40)", candidates=[2.0, 1.9], exact_network="violated"))
    double = [_n("Mul", ["X", "two"], "Y")]
    out.append(Trap("subnormal_f32_input_unsat", "subnormal", "unsat",
                    "y = 2 x on subnormal float32 inputs [1e-40, 2e-40]; unsafe y <= 0",
                    "exact network: y = 2x >= 2e-40 > 0. Runtime: every float32 of [1e-40, 2e-40] (all subnormal) "
                    "enumerated in onnxruntime, all y > 0 (doubling a subnormal is exact without "
                    "denormals-as-zero).",
                    double, [_c("two", [2.0])], ("1e-40", False, "2e-40", False), ("1", "0", False), "(<= Y_0 0.0)",
                    enumerate=True))
    out.append(Trap("subnormal_f32_input_sat", "subnormal", "sat",
                    "y = 2 x on subnormal float32 inputs [1e-40, 2e-40]; unsafe y >= 3.9e-40 (inputs flushed to "
                    "zero would prove it)",
                    "onnxruntime returns y = 3.99998e-40 at the largest float32 <= 2e-40: >= 3.9e-40.",
                    double, [_c("two", [2.0])], ("1e-40", False, "2e-40", False), ("-1", "-3.9e-40", False),
                    "(>= Y_0 3.9e-40)", candidates=[float(f32(2e-40)) if float(f32(2e-40)) <= 2e-40
                                                   else float(np.nextafter(f32(2e-40), f32(0)))],
                    exact_network="violated"))

    # -- tiny and huge coefficients ------------------------------------------------------------------
    tiny = [_n("MatMul", ["X", "w"], "z"), _n("Add", ["z", "b"], "p"), _n("Relu", ["p"], "r"), _n("Mul", ["r", "k"], "Y")]
    tiny_c = [_c("w", [[1e-10]]), _c("b", [-0.19999]), _c("k", [1e4])]
    wq, bq = Fraction(float(f32(1e-10))), Fraction(float(f32(-0.19999)))
    pre_max = wq * Fraction("1.9e9") + bq
    out.append(Trap("tiny_huge_sat", "tiny_huge", "sat",
                    "y = 1e4 relu(1e-10 x - 0.19999) on [1e9, 2e9]; unsafe y >= 0.05 (a solver dropping the "
                    "1e-10 coefficient would prove it)",
                    "onnxruntime returns y ~ 0.1 at x = 2e9: >= 0.05 (the exact network reaches 0.1 there too).",
                    tiny, tiny_c, ("1e9", False, "2e9", False), ("-1", "-0.05", False), "(>= Y_0 0.05)",
                    candidates=[2e9, 1.999999e9], exact_network="violated"))
    out.append(Trap("tiny_huge_unsat", "tiny_huge", "unsat",
                    "the same network on [1e9, 1.9e9]; unsafe y >= 0.05",
                    f"exact network: w x + b <= float32(1e-10) * 1.9e9 + float32(-0.19999) = {float(pre_max):.6g} < 0, "
                    "so relu = 0 and y = 0. Runtime: all float32 inputs of [1e9, 1.9e9] enumerated in "
                    "onnxruntime, all y < 0.05.",
                    tiny, tiny_c, ("1e9", False, "1.9e9", False), ("-1", "-0.05", False), "(>= Y_0 0.05)",
                    enumerate=True))
    assert pre_max < -Fraction(1, 200)

    # -- violations reachable only through runtime rounding --------------------------------------------
    rr = [_n("Mul", ["X", "three"], "a"), _n("Div", ["a", "three"], "b"), _n("Sub", ["b", "X"], "Y")]
    rr_c = [_c("three", [3.0])]
    out.append(Trap("runtime_rounding_sat", "runtime_rounding", "sat",
                    "y = (3x)/3 - x on [1, 2], exactly 0; unsafe y > 0 (strict)",
                    "the exact network is y = 0, never > 0; onnxruntime rounds 3x and then the quotient and "
                    "returns y = 2^-23 > 0 at the recorded input (found by enumerating [1, 2]).",
                    rr, rr_c, ("1.0", False, "2.0", False), ("-1", "0", True), "(> Y_0 0.0)", enumerate=True))
    out.append(Trap("runtime_rounding_unsat", "runtime_rounding", "unsat",
                    "y = (3x)/3 - x on [1, 2]; unsafe y >= 2^-22",
                    "exact network: y = 0. Runtime: all 8388609 float32 inputs of [1, 2] enumerated in "
                    "onnxruntime, max y = 2^-23 < 2^-22.",
                    rr, rr_c, ("1.0", False, "2.0", False), ("-1", str(-Fraction(1, 2 ** 22)), False),
                    f"(>= Y_0 {Decimal(1) / Decimal(2 ** 22)})", enumerate=True))

    # -- BatchNorm cancellation --------------------------------------------------------------------
    mean, var = f32(8e6), f32(0.11)
    beta = f32(float(mean) / math.sqrt(float(var)))
    bn = [_n("BatchNormalization", ["X", "g", "beta", "mean", "var"], "Y", epsilon=0.0)]
    bn_c = [_c("g", [1.0]), _c("beta", [beta]), _c("mean", [mean]), _c("var", [var])]
    # the exact network: (x - mean) / sqrt(var) + beta, increasing in x; its value at 0.7 bounds it
    top = Decimal(float(f32(0.7))) - Decimal(float(mean))
    exact_top = _exact_sqrt_quotient(Fraction(top), Fraction(float(var))) + Decimal(float(beta))
    out.append(Trap("batchnorm_sat", "batchnorm", "sat",
                    "BatchNormalization with mean 8e6, var 0.11, beta = float32(mean / sqrt(var)) on [0.3, 0.7]; "
                    "unsafe y >= 3.5",
                    f"the exact network is increasing and at most {float(exact_top):.6f} < 3.5 on the box (at "
                    "x = float32(0.7)); onnxruntime cancels 2.4e7 against 2.4e7 in float32 and returns about 4.11 "
                    "at x = 0.7: >= 3.5.",
                    bn, bn_c, ("0.3", False, "0.7", False), ("-1", "-3.5", False), "(>= Y_0 3.5)",
                    candidates=[float(f32(0.7)), float(f32(0.69))]))
    out.append(Trap("batchnorm_unsat", "batchnorm", "unsat",
                    "the same BatchNorm on [0.3, 0.7]; unsafe y >= 8",
                    f"exact network: at most {float(exact_top):.6f} < 8. Runtime: all float32 inputs of [0.3, 0.7] "
                    "enumerated in onnxruntime, all y < 8 (the runtime sits about 1.6 above the exact network).",
                    bn, bn_c, ("0.3", False, "0.7", False), ("-1", "-8", False), "(>= Y_0 8.0)", enumerate=True))
    assert exact_top < Decimal("3.5")

    # -- narrowing casts -----------------------------------------------------------------------------
    cast = [_n("Cast", ["X"], "h", to=TensorProto.FLOAT16), _n("Cast", ["h"], "f", to=TensorProto.FLOAT),
            _n("Sub", ["f", "X"], "Y")]
    out.append(Trap("cast_float16_sat", "cast", "sat",
                    "y = float32(float16(x)) - x on [1, 2] (a Cast to float16 inside a float32 model); unsafe "
                    "y >= 1e-4",
                    "onnxruntime rounds x to float16 (spacing 2^-10 on [1, 2]) and returns y = 2^-11 - 2^-24 at "
                    "the recorded input (found by enumeration): >= 1e-4. A verifier may refuse the cast "
                    "(error/unknown); proving the property is unsound.",
                    cast, [], ("1.0", False, "2.0", False), ("-1", "-0.0001", False), "(>= Y_0 0.0001)",
                    enumerate=True, exact_network="violated (the cast rounds; as an identity it would hold)"))
    out.append(Trap("cast_float16_unsat", "cast", "unsat",
                    "y = float32(float16(x)) - x on [1, 2]; unsafe y >= 0.001",
                    "the rounding to float16 moves x by at most half its spacing, 2^-11 < 0.001 (in the exact "
                    "network with the cast as a rounding, and as an identity y = 0). Runtime: all float32 inputs "
                    "of [1, 2] enumerated in onnxruntime, max y = 2^-11 - 2^-24.",
                    cast, [], ("1.0", False, "2.0", False), ("-1", "-0.001", False), "(>= Y_0 0.001)",
                    enumerate=True))

    # -- VNN-LIB constants that cancel -----------------------------------------------------------------
    relu = [_n("Relu", ["X"], "Y")]
    out.append(Trap("vnnlib_cancel_sat", "vnnlib_constants", "sat",
                    "y = relu(x) on [0.5, 3]; unsafe (<= (+ Y_0 1e16) (+ 1e16 1)), i.e. y <= 1 (read in float64, "
                    "1e16 + 1 rounds to 1e16 and the row becomes y <= 0, which no input reaches)",
                    "onnxruntime returns y = 0.5 at x = 0.5: 0.5 + 1e16 <= 1e16 + 1 exactly.",
                    relu, [], ("0.5", False, "3.0", False), ("1", "1", False), "(<= (+ Y_0 1e16) (+ 1e16 1))",
                    candidates=[0.5, 1.0], exact_network="violated"))
    out.append(Trap("vnnlib_cancel_unsat", "vnnlib_constants", "unsat",
                    "y = relu(x) on [3.0000002, 3.9]; unsafe (<= (+ Y_0 1e16) (+ 1e16 3)), i.e. y <= 3 (read in "
                    "float64, 1e16 + 3 rounds to 1e16 + 4 and every input seems to reach y <= 4)",
                    "exact network and runtime: relu is exact in IEEE arithmetic, so y = x >= 3.0000002 > 3 for "
                    "every input (fed float32 inputs are >= 3.00000024); all float32 inputs of the box enumerated.",
                    relu, [], ("3.0000002", False, "3.9", False), ("1", "3", False), "(<= (+ Y_0 1e16) (+ 1e16 3))",
                    enumerate=True))

    # -- strict inequalities ---------------------------------------------------------------------------
    neg = [_n("Neg", ["X"], "Y")]
    out.append(Trap("strict_input_unsat", "strict", "unsat",
                    "y = -x on (0, 1] (strict lower bound (> X_0 0)); unsafe y >= 0: only x = 0 would reach it",
                    "exact network and runtime: Neg is exact in IEEE arithmetic (a sign flip), so y = -x < 0 for "
                    "every x > 0, subnormal inputs included (checked at the smallest float32 subnormals and "
                    "20001 points).",
                    neg, [], ("0.0", True, "1.0", False), ("-1", "0", False), "(>= Y_0 0.0)",
                    samples=[float(np.nextafter(f32(0), f32(1))), 2.8e-45, 1e-40, 1.2e-38, 1.0]
                    + list(np.linspace(0.0, 1.0, 20001)[1:])))
    out.append(Trap("strict_input_sat", "strict", "sat",
                    "y = -x on [0, 1] (closed); unsafe y >= 0",
                    "onnxruntime returns y = -0.0 at x = 0, and -0.0 >= 0.",
                    neg, [], ("0.0", False, "1.0", False), ("-1", "0", False), "(>= Y_0 0.0)", candidates=[0.0],
                    exact_network="violated"))
    negrelu = [_n("Relu", ["X"], "r"), _n("Neg", ["r"], "Y")]
    out.append(Trap("strict_output_unsat", "strict", "unsat",
                    "y = -relu(x) on [-1, 1]; unsafe (> Y_0 0): the runtime's maximum is exactly 0",
                    "exact network and runtime: relu(x) >= 0 and Neg is exact, so y <= 0 everywhere and never > 0 "
                    "(checked at 40001 points, both signed zeros and the smallest subnormals).",
                    negrelu, [], ("-1.0", False, "1.0", False), ("-1", "0", True), "(> Y_0 0.0)",
                    samples=[0.0, -0.0, 1.4e-45, -1.4e-45] + list(np.linspace(-1.0, 1.0, 40001))))
    out.append(Trap("strict_output_sat", "strict", "sat",
                    "y = -relu(x) on [-1, 1]; unsafe (>= Y_0 0)",
                    "onnxruntime returns y = 0 at x = -0.5: 0 >= 0.",
                    negrelu, [], ("-1.0", False, "1.0", False), ("-1", "0", False), "(>= Y_0 0.0)",
                    candidates=[-0.5, 0.0], exact_network="violated"))
    for t in out:
        t.acceptable = [t.expected] + GIVE_UP
    return out


# ----------------------------------------------------------------------------------------------
# establishing the truth
# ----------------------------------------------------------------------------------------------


def _floats_between(lo: float, hi: float, dtype) -> np.ndarray:
    """Every float of ``dtype`` in ``[lo, hi]`` (``0 <= lo <= hi``), in increasing order."""
    t = np.dtype(dtype).type
    bits = {np.float32: np.uint32, np.float64: np.uint64}[t]
    a, b = t(lo), t(hi)
    if float(a) < lo:
        a = np.nextafter(a, t(np.inf))
    if float(b) > hi:
        b = np.nextafter(b, t(-np.inf))
    if not 0 <= float(a) <= float(b):
        raise ValueError("_floats_between takes a non-negative range")
    return np.arange(np.array(a).view(bits), np.array(b).view(bits) + 1, dtype=bits).view(t)


def _inside(trap: Trap, xs: np.ndarray) -> np.ndarray:
    lo, ls, hi, hs = trap.box
    q = [Fraction(v) for v in (lo, hi)]
    v = xs.astype(np.float64)
    # float64 comparisons decide membership exactly except next to the bounds: those are checked in rationals
    keep = (v >= round_float(q[0], -1)) & (v <= round_float(q[1], +1))
    for i in np.nonzero(keep & ((v <= round_float(q[0], +1)) | (v >= round_float(q[1], -1))))[0]:
        f = Fraction(float(v[i]))
        keep[i] = (f > q[0] if ls else f >= q[0]) and (f < q[1] if hs else f <= q[1])
    return keep


def _runtime(trap: Trap, xs: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(trap.model("N").SerializeToString(), providers=["CPUExecutionProvider"])
    t = _NP[trap.dtype]
    ys = [sess.run(None, {"X": xs[i:i + chunk].astype(t).reshape(-1, 1)})[0].reshape(-1)
          for i in range(0, len(xs), chunk)]
    return np.concatenate(ys).astype(np.float64) if ys else np.zeros(0)


def _reached(trap: Trap, ys: np.ndarray) -> np.ndarray:
    """Exactly which outputs reach the unsafe row ``coef y <= bound`` (``<`` when strict), vectorised: with
    ``coef = +-1`` the value ``coef y`` is an exact float64, so comparing it with the largest float64
    ``<= bound`` (or with ``bound`` itself when it is a float64) is the rational comparison."""
    coef, bound, strict = Fraction(trap.row[0]), Fraction(trap.row[1]), trap.row[2]
    if abs(coef) != 1:
        raise ValueError("trap rows have coefficient +-1")
    cy = float(coef) * ys
    b = round_float(bound, -1)
    if Fraction(b) == bound:
        return cy < b if strict else cy <= b
    return cy <= b  # no float equals bound: y <= bound iff y <= the largest float below it


def establish(trap: Trap) -> tuple[list[float] | None, dict]:
    """``(x_star, notes)``: for a sat trap the first candidate (or enumerated input) that onnxruntime
    violates; for an unsat trap ``None`` after every enumerated / sampled input was checked. Raises
    ``CertifyError`` when the trap's truth does not hold (a broken trap is never written)."""
    notes: dict = {}
    t = _NP[trap.dtype]
    if trap.enumerate:
        lo, _, hi, _ = trap.box
        xs = _floats_between(float(Fraction(lo)), float(Fraction(hi)), t)
        notes["enumerated_inputs"] = int(len(xs))
    elif trap.expected == "sat":
        xs = np.asarray(trap.candidates, dtype=np.float64).astype(t)
    else:
        xs = np.asarray(trap.samples, dtype=np.float64).astype(t)
        notes["sampled_inputs"] = int(len(xs))
    xs = xs[_inside(trap, xs)]
    ys = _runtime(trap, xs)
    hit = _reached(trap, ys)
    sign = float(Fraction(trap.row[0]))
    if len(ys):
        worst = int(np.argmin(sign * ys))
        notes["runtime_extreme"] = {"x": float(xs[worst]), "y": float(ys[worst])}
    if trap.expected == "sat":
        if not hit.any():
            raise CertifyError(f"trap {trap.name}: onnxruntime violates the property at none of its candidates")
        i = int(np.nonzero(hit)[0][0])
        notes["runtime_output_at_x_star"] = float(ys[i])
        return [float(xs[i])], notes
    if hit.any():
        i = int(np.nonzero(hit)[0][0])
        raise CertifyError(f"trap {trap.name}: expected to hold, but onnxruntime violates it at x = {float(xs[i])!r} "
                           f"(y = {float(ys[i])!r})")
    return None, notes


def _record(trap: Trap, x_star: list[float] | None, notes: dict) -> dict:
    lo, ls, hi, hs = trap.box
    coef, bound, strict = trap.row
    return {"name": trap.name, "onnx": f"onnx/{trap.name}.onnx", "vnnlib": f"vnnlib/{trap.name}.vnnlib",
            "expected": trap.expected, "arch": "trap", "kind": trap.family, "family": trap.family,
            "n_inputs": 1, "n_outputs": 1, "input_shape": [1],
            "dtype": "float64" if trap.dtype == F64 else "float32",
            "lower": [round_float(Fraction(lo), -1)], "upper": [round_float(Fraction(hi), +1)],
            "clauses": [{"C": [[round_float(Fraction(coef))]], "d": [round_float(Fraction(bound))]}],
            "exact": trap.exact(), "x_star": x_star, "description": trap.description, "argument": trap.argument,
            "exact_network": trap.exact_network, "acceptable": trap.acceptable, "notes": notes}


def generate_traps(out: str | Path, timeout: float = 60.0, only: list[str] | None = None,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Write the trap suite to ``out`` (``onnx/``, ``vnnlib/``, ``instances.csv``, ``manifest.json``); return the
    manifest records."""
    out = Path(out)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = []
    for trap in traps():
        if only is not None and trap.name not in only:
            continue
        x_star, notes = establish(trap)
        onnx.save(trap.model(1), str(out / "onnx" / f"{trap.name}.onnx"))
        (out / "vnnlib" / f"{trap.name}.vnnlib").write_text(trap.vnnlib())
        record = _record(trap, x_star, notes)
        if x_star is not None:  # the auditor's own judgement, from the manifest and from the VNN-LIB as read
            from .run import _truth_from_vnnlib, truth_of_record

            for truth in (truth_of_record(record), _truth_from_vnnlib(out / record["vnnlib"])):
                why = truth.check(out / record["onnx"], np.array(x_star), (1,))
                if why:
                    raise CertifyError(f"trap {trap.name}: the recorded counterexample fails the audit's check: {why}")
        records.append(record)
        log(f"[{len(records)}] {trap.name}: {trap.expected}" + (f", x* = {x_star[0]!r}" if x_star else ""))
    with open(out / "instances.csv", "w") as fh:
        fh.write("onnx,vnnlib,timeout_s,expected\n")
        for r in records:
            fh.write(f"{r['onnx']},{r['vnnlib']},{timeout:g},{r['expected']}\n")
    manifest = {"generator": "certify.audit.traps", "instances": records, "time_s": round(time.perf_counter() - t0, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return records
