"""The mutation audit: deliberate bugs injected into the engine, the spec layer and the replay guard,
one at a time, each of which the audit's checks must catch.

A mutation is a context manager that patches one thing (an op rule in ``RULES``, a module function)
and restores it on exit. The checks (``differential``'s bound containment and exact-arithmetic
checks, the VNN-LIB reading of a planted suite against its manifest, and ``certify audit`` of our
backends on that suite) first run on the unmutated code, where they must all pass (otherwise the
audit itself is broken); then, per mutation, in order until one fails. A mutation is *caught* when a
check reports a failure or raises. The catch rate is caught / catalogue size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _item(table: dict, key, value) -> Iterator[None]:
    old = table[key]
    table[key] = value
    try:
        yield
    finally:
        table[key] = old


@contextlib.contextmanager
def _rule(op: str, **changes) -> Iterator[None]:
    from ..engine.rules import RULES

    old = RULES[op]
    RULES[op] = dataclasses.replace(old, **{k: v(old) for k, v in changes.items()})
    try:
        yield
    finally:
        RULES[op] = old


def _relax_map(fn: Callable) -> Callable:
    """A ``relax`` wrapper: ``fn(relaxation, l, u)`` returns the mutated relaxation."""
    def wrap(rule):
        def relax(p, l, u, rnd, alpha):
            return fn(rule.relax(p, l, u, rnd, alpha), l, u)
        return relax
    return wrap


def _unstable(r, l, u):
    m = (l < 0) & (u > 0)
    return m.unsqueeze(1) if r.lw.dim() > l.dim() else m


def _relu_upper_slope():
    return _rule("relu", relax=_relax_map(lambda r, l, u: dataclasses.replace(r, uw=r.uw * 0.9)))


def _relu_lower_raised():
    return _rule("relu", relax=_relax_map(
        lambda r, l, u: dataclasses.replace(r, lb=torch.where((l < 0) & (u > 0), r.lb + 0.1 * u, r.lb))))


def _relu_intercept_dropped():
    return _rule("relu", relax=_relax_map(lambda r, l, u: dataclasses.replace(r, ub=torch.zeros_like(r.ub))))


def _sigmoid_swapped():
    return _rule("sigmoid", relax=_relax_map(lambda r, l, u: dataclasses.replace(r, lw=r.uw, lb=r.ub, uw=r.lw, ub=r.lb)))


def _tanh_lower_raised():
    return _rule("tanh", relax=_relax_map(lambda r, l, u: dataclasses.replace(r, lb=r.lb + 0.02)))


def _leaky_slope_ignored():
    from ..engine.ops import activations

    return _rule("leaky_relu", relax=lambda rule: (
        lambda p, l, u, rnd, alpha: activations._piecewise_relax(l, u, rnd, alpha, 0.0)))


def _relu_ibp_upper_from_lower():
    from ..sets import Box

    def wrap(rule):
        def ibp(p, boxes, rnd):
            out = rule.ibp(p, boxes, rnd)
            return Box(out.lower, torch.maximum(out.lower, boxes[0].lower.clamp(min=0)))
        return ibp
    return _rule("relu", ibp=wrap)


def _linear_ibp_bias_dropped():
    def wrap(rule):
        def ibp(p, boxes, rnd):
            q = {k: v for k, v in p.items() if k not in ("bias", "pair_bias")}
            if "pair_weight" in p:  # the cached pair form carries the bias too: rebuild without it
                q.pop("pair_weight")
            return rule.ibp(q, boxes, rnd)
        return ibp
    return _rule("linear", ibp=wrap)


def _linear_ibp_signs_ignored():
    from ..sets import Box

    def wrap(rule):
        def ibp(p, boxes, rnd):
            a = torch.nn.functional.linear(boxes[0].lower, p["weight"], p.get("bias"))
            b = torch.nn.functional.linear(boxes[0].upper, p["weight"], p.get("bias"))
            return Box(torch.minimum(a, b), torch.maximum(a, b))
        return ibp
    return _rule("linear", ibp=wrap)


def _conv_padding_value():
    import torch.nn.functional as F

    from ..engine.ops import linear

    def conv(p, x, weight, bias):  # pads with ones, as if the padding value were the border's
        pad = p["padding"]
        pads = (pad[1], pad[1], pad[0], pad[0]) if isinstance(pad, (tuple, list)) else (pad,) * 4
        x = F.pad(linear._pad(p, x), pads, value=1.0)
        return F.conv2d(x, weight, bias, p["stride"], 0, p["dilation"], p["groups"])
    return _patched(linear, "_conv", conv)


def _l2_dual_norm_wrong():
    from ..engine import crown
    from ..sets import LpBall

    old = crown.concretize_lower

    def concretize(input_set, A, rnd):
        if isinstance(input_set, LpBall) and input_set.p == 2.0:  # the L-inf norm of A, as if the ball were L1
            Af = A.flatten(2)
            c = input_set.center.unsqueeze(1)
            return crown._flat_dot(A, c) - input_set.eps.reshape(-1, 1) * Af.abs().amax(-1)
        return old(input_set, A, rnd)
    return _patched(crown, "concretize_lower", concretize)


def _no_rounding_margin():
    from ..engine import fp

    return _patched(fp, "gamma", lambda n, dtype: 0.0)


def _negation_lost():
    from .. import vnnlib
    from ..spec import Clause

    old = vnnlib._clause

    def clause(rows, n_out, reader):
        c = old(rows, n_out, reader)
        return Clause(-c.C, -c.d)
    return _patched(vnnlib, "_clause", clause)


def _vnnlib_index_off_by_one():
    from .. import vnnlib
    from ..sets import Box
    from ..spec import Property, Spec

    old = vnnlib._build_property

    def build(*args, **kwargs):
        prop = old(*args, **kwargs)
        specs = []
        for s in prop.specs:
            b = s.input.bounds()
            lo, hi = b.lower.flatten(1).roll(1, 1).reshape(b.lower.shape), b.upper.flatten(1).roll(1, 1).reshape(b.upper.shape)
            specs.append(Spec(Box(lo, hi), s.unsafe, s.name))
        return Property(prop.name, tuple(specs), prop.source, prop.meta)
    return _patched(vnnlib, "_build_property", build)


def _replay_accepts_anything():
    import numpy as np

    from .. import replay
    from ..results import _REPLAY_TOKEN, Counterexample

    def check(model, spec, x, spec_index=0, atol=0.0):
        x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        y = np.asarray(model.reference(x.reshape(1, *model.input_shape).astype(np.float32)), dtype=np.float64)
        return Counterexample(x.reshape(-1), y.reshape(-1), spec_index, 0, 0.0, model.reference_name,
                              _token=_REPLAY_TOKEN)
    return _patched(replay, "check", check)


def _bab_closes_early():
    from ..engine import bab

    old = bab.clause_max
    return _patched(bab, "clause_max", lambda *a, **k: old(*a, **k) + 0.25)


def _batchnorm_mean_sign():
    from .. import onnx_import

    handlers = onnx_import._Importer.HANDLERS
    old = handlers["BatchNormalization"]

    def batchnorm(self, node, ins, attrs):
        key = ins[3]
        saved = self.const[key]
        self.const[key] = -saved
        try:
            return old(self, node, ins, attrs)
        finally:
            self.const[key] = saved
    return _item(handlers, "BatchNormalization", batchnorm)


def _sound_as_fast():
    """The sound passes run with fast (unrounded) arithmetic: no rounding terms at all."""
    from ..engine import crown, ibp
    from ..engine.fp import FAST

    stack = contextlib.ExitStack()
    for mod in (crown, ibp):
        stack.enter_context(_patched(mod, "sound_rounding", lambda graph: FAST))
    return stack


def _runtime_perturbation_dropped():
    """The runtime's per-op rounding is not covered (proofs about the exact network only)."""
    from ..engine import crown, rules

    stack = contextlib.ExitStack()
    for mod in (crown, rules):
        stack.enter_context(_patched(mod, "runtime_perturbation", lambda node, boxes, rnd: None))
    return stack


def _folded_errors_zeroed():
    """BatchNorm folded without the representation and runtime error terms of its constants."""
    from .. import onnx_import

    old = onnx_import._Importer.HANDLERS["BatchNormalization"]

    def batchnorm(self, node, ins, attrs):
        old(self, node, ins, attrs)
        params = self.nodes[-1].params
        for key in ("abs_err", "rel_err", "runtime_bias_abs", "runtime_ops"):
            params.pop(key, None)

    return _item(onnx_import._Importer.HANDLERS, "BatchNormalization", batchnorm)


def _flush_to_zero():
    """The sound context flushes subnormals (operands too) to zero, as it once did."""
    real = torch.set_flush_denormal
    return _patched(torch, "set_flush_denormal", lambda on: real(True))


def _small_coefficients_kept():
    """The exact backends hand coefficients of any size to the solver (HiGHS drops |a| <= 1e-9)."""
    from .. import pwl

    return _patched(pwl, "SMALL_COEF", 0.0)


def _spec_constants_in_float():
    """VNN-LIB linear combinations computed in float64 before rounding (1e16 + 1 - 1e16 = 0)."""
    from fractions import Fraction

    from .. import vnnlib

    old = vnnlib._sum

    def float_sum(terms, signs):
        coefs: dict = {}
        const = 0.0
        for (tc, tk), s in zip(terms, signs):
            for k, c in tc.items():
                coefs[k] = float(coefs.get(k, 0.0)) + s * float(c)
            const += s * float(tk)
        return {k: Fraction(v) for k, v in coefs.items()}, Fraction(const)

    assert old is not None
    return _patched(vnnlib, "_sum", float_sum)


@dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    inject: Callable[[], contextlib.AbstractContextManager]


CATALOGUE: tuple[Mutation, ...] = (
    Mutation("relu_upper_slope", "ReLU upper relaxation slope scaled by 0.9", _relu_upper_slope),
    Mutation("relu_lower_raised", "ReLU lower relaxation line raised by 0.1 u on unstable neurons",
             _relu_lower_raised),
    Mutation("relu_intercept_dropped", "ReLU upper relaxation intercept dropped", _relu_intercept_dropped),
    Mutation("leaky_slope_ignored", "LeakyReLU relaxed as a ReLU (negative slope ignored)", _leaky_slope_ignored),
    Mutation("sigmoid_swapped", "Sigmoid relaxation with its lower and upper lines swapped", _sigmoid_swapped),
    Mutation("tanh_lower_raised", "Tanh lower relaxation line raised by 0.02", _tanh_lower_raised),
    Mutation("relu_ibp_upper", "ReLU interval upper bound taken from the lower input bound", _relu_ibp_upper_from_lower),
    Mutation("linear_bias_dropped", "Linear interval rule drops the bias", _linear_ibp_bias_dropped),
    Mutation("linear_signs_ignored", "Linear interval rule ignores negative weights (swaps bounds)",
             _linear_ibp_signs_ignored),
    Mutation("conv_padding", "Conv pads with ones instead of zeros", _conv_padding_value),
    Mutation("l2_dual_norm", "L2-ball concretisation uses the L-inf norm of the coefficients, not their L2 norm",
             _l2_dual_norm_wrong),
    Mutation("no_rounding_margin", "float rounding error bounds (gamma_n) set to zero", _no_rounding_margin),
    Mutation("negation_lost", "VNN-LIB unsafe clauses read negated (the property's negation lost)", _negation_lost),
    Mutation("vnnlib_off_by_one", "VNN-LIB input bounds assigned to the neighbouring variable", _vnnlib_index_off_by_one),
    Mutation("replay_accepts_anything", "counterexample replay skips its membership and unsafe-region checks",
             _replay_accepts_anything),
    Mutation("bab_closes_early", "branch-and-bound closes domains whose bound is above -0.25", _bab_closes_early),
    Mutation("batchnorm_mean_sign", "BatchNorm folded with the running mean's sign flipped", _batchnorm_mean_sign),
    Mutation("sound_as_fast", "sound CROWN and IBP run with fast (unrounded) arithmetic", _sound_as_fast),
    Mutation("runtime_perturbation_dropped", "the runtime's per-op rounding left out of every bound",
             _runtime_perturbation_dropped),
    Mutation("folded_errors_zeroed", "BatchNorm folded without its constants' error terms", _folded_errors_zeroed),
    Mutation("flush_to_zero", "subnormals flushed to zero inside the sound context", _flush_to_zero),
    Mutation("small_coefficients_kept", "coefficients below the solver's drop threshold given to HiGHS",
             _small_coefficients_kept),
    Mutation("spec_constants_in_float", "VNN-LIB constants combined in float64 before rounding",
             _spec_constants_in_float),
)


@dataclass(frozen=True)
class MutationOutcome:
    name: str
    description: str
    caught: bool
    by: str
    detail: str
    time_s: float


def _failures(check) -> list[str]:
    """A check's failure messages; a check that raises has failed (a crash is a caught bug)."""
    try:
        return check()
    except Exception as exc:
        return [f"raised {type(exc).__name__}: {str(exc)[:200]}"]


def run_mutation_audit(suite: str | Path, checks=None, only: list[str] | None = None,
                       log: Callable[[str], None] = lambda s: None) -> tuple[list[MutationOutcome], list[str]]:
    """``(outcomes, control_failures)``: the checks on the unmutated code (must be empty), then each
    mutation of the catalogue (or of ``only``)."""
    from .differential import default_checks

    checks = checks if checks is not None else default_checks(Path(suite))
    control = [f"{name}: {f}" for name, check in checks for f in _failures(check)]
    outcomes = []
    for m in CATALOGUE:
        if only and m.name not in only:
            continue
        t0 = time.perf_counter()
        caught, by, detail = False, "", ""
        with m.inject():
            for name, check in checks:
                fails = _failures(check)
                if fails:
                    caught, by, detail = True, name, fails[0][:300]
                    break
        outcomes.append(MutationOutcome(m.name, m.description, caught, by, detail, time.perf_counter() - t0))
        log(f"{m.name}: {'caught by ' + by if caught else 'NOT CAUGHT'} ({outcomes[-1].time_s:.1f}s)")
    return outcomes, control
