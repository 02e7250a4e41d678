"""Properties: an input set and an *unsafe* output region (VNN-LIB semantics).

A ``Clause(C, d)`` is the polyhedron ``{y : C y <= d}`` (every row). A ``Spec`` pairs an input set
with a disjunction of clauses; the property **holds** iff no input of the set reaches any clause.
So a clause is certified empty as soon as *one* of its rows has a certified lower bound
``min_x (C_j f(x) - d_j) > 0``, and the property is proved when every clause is certified empty.

Specs are batched: the input set has ``B`` instances, and ``C`` is ``[B, rows, n_out]``, ``d`` is
``[B, rows]``; all instances share the clause structure (number of clauses and rows per clause) but
not the coefficients, which is what a batch of robustness properties needs.

A ``Property`` is what one VNN-LIB file states: several specs (one per disjunct of the input
region, as in ACAS Xu property 6) that must all hold.

**Exact form.** The float tensors are what the proof engines use; they are rounded so that proofs
stay sound: input sets are rounded *outward* (the float set contains the exact one, closed) and clause
coefficients ``C, d`` to the *nearest* float64 (the engine covers that representation error). The
exact statement, when it is not the float tensors themselves, is kept next to them:

* ``Clause.exact``: per instance, a tuple of rows ``(coefficients, bound, strict)`` meaning
  ``sum_j coefficients[j] * y_j <= bound`` (``<`` when ``strict``), with ``fractions.Fraction`` values;
* ``Spec.exact_input``: an :class:`ExactBox` (rational bounds with per-bound strictness, as read from
  VNN-LIB) or an :class:`ExactBall` (the float centre, clip box and norm with the exact rational ``eps``).

Both default to ``None`` (the float tensors are then exact by definition, non-strict). Counterexamples are
judged only against the exact form (:meth:`Spec.exact_contains`, :meth:`Spec.exact_reached`), in rational
arithmetic; :meth:`Spec.clause_margins` / :meth:`Spec.violated_by` are the floating-point objective of
falsifiers and must not be used to accept a counterexample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Rational
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import ShapeError, SpecError
from .sets import Box, InputSet, LpBall, parse_norm


def clause_max(rows: Tensor, clause_of_row: Tensor, n_clauses: int) -> Tensor:
    """Per clause, the largest of its rows: ``[N, R]`` row values -> ``[N, K]`` (a clause is unreachable
    when its best row's lower bound is positive, and reached when its largest row is ``<= 0``)."""
    out = torch.full((rows.shape[0], n_clauses), -torch.inf, dtype=rows.dtype, device=rows.device)
    return out.scatter_reduce(1, clause_of_row.to(rows.device).expand_as(rows), rows, reduce="amax")


# --------------------------------------------------------------------------------------------
# Exact rationals and their roundings to floats
# --------------------------------------------------------------------------------------------


def exact(value: Any) -> Fraction:
    """The exact rational value of an int, a finite float (its binary value, e.g. ``exact(0.1)`` is
    ``3602879701896397/36028797018963968``), a ``Fraction`` or a decimal string (``"0.1"`` is ``1/10``).
    Raises ``ValueError``/``OverflowError`` for nan and infinities."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, str):
        return Fraction(value.strip())
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, Rational):
        return Fraction(value.numerator, value.denominator)
    return Fraction(value)


def round_float(q: Fraction | int, direction: int = 0, dtype: Any = np.float64) -> float:
    """``q`` rounded to a float of ``dtype`` (returned as a Python float, which holds it exactly).

    ``direction = 0``: the nearest float64 (ties to even; float64 only); ``-1``: the largest float
    ``<= q``; ``+1``: the smallest float ``>= q``. Beyond the finite range the result is ``+-inf``
    (nearest, or directed away from zero) or the largest finite float (directed towards zero).
    The float64 value comes from CPython's correctly rounded integer true division; a directed
    result is then moved by one ulp where the nearest one lies on the wrong side of ``q``. For a
    narrower ``dtype`` the directed float64 result is converted and moved back by one step if the
    conversion crossed it (every float32/float16 value is a float64, so this is the directed rounding).
    """
    q = Fraction(q)
    try:
        f = q.numerator / q.denominator + 0.0  # + 0.0: -0.0 -> 0.0
    except OverflowError:
        f = math.inf if q > 0 else -math.inf
    if direction < 0 and (f == math.inf or (math.isfinite(f) and Fraction(f) > q)):
        f = math.nextafter(f, -math.inf)
    elif direction > 0 and (f == -math.inf or (math.isfinite(f) and Fraction(f) < q)):
        f = math.nextafter(f, math.inf)
    kind = np.dtype(dtype)
    if kind == np.float64:
        return f
    if direction == 0:
        raise ValueError("round_float: nearest rounding is only implemented for float64")
    t = kind.type
    with np.errstate(over="ignore"):
        g = t(f)
    if direction < 0 and float(g) > f:
        g = np.nextafter(g, t(-np.inf))
    elif direction > 0 and float(g) < f:
        g = np.nextafter(g, t(np.inf))
    return float(g)


def _pick(seq: tuple, index) -> tuple:
    """``seq[index]`` as a tuple, for the indices a batch dimension accepts (int, slice, list, tensor, mask)."""
    if isinstance(index, (int, np.integer)):
        return (seq[int(index)],)
    if isinstance(index, slice):
        return tuple(seq[index])
    idx = torch.as_tensor(index)
    if idx.dtype == torch.bool:
        idx = idx.reshape(-1).nonzero().reshape(-1)
    return tuple(seq[int(i)] for i in idx.reshape(-1).tolist())


def _flat_values(x: Any) -> list:
    if isinstance(x, Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1).tolist()


@dataclass(frozen=True, eq=False)
class ExactBox:
    """The exact box ``{x : lower_i <= x_i <= upper_i}`` (``<`` where ``lower_strict_i`` /
    ``upper_strict_i``), with rational bounds (``Fraction``; a float infinity for an unbounded side of a
    box built from floats); each field holds one tuple per instance of the batch, over the input
    elements in flat (row-major) order."""

    lower: tuple
    upper: tuple
    lower_strict: tuple
    upper_strict: tuple

    @classmethod
    def of_box(cls, box: Box) -> "ExactBox":
        """The float box taken as exact (closed) bounds."""
        B = box.batch_size
        lo = box.lower.detach().cpu().to(torch.float64).reshape(B, -1).tolist()
        hi = box.upper.detach().cpu().to(torch.float64).reshape(B, -1).tolist()
        closed = tuple((False,) * len(row) for row in lo)

        def ex(v: float):  # infinite bounds stay float infinities (they compare correctly with rationals)
            return v if math.isinf(v) else Fraction(v)

        return cls(tuple(tuple(ex(v) for v in row) for row in lo), tuple(tuple(ex(v) for v in row) for row in hi),
                   closed, closed)

    @property
    def batch_size(self) -> int:
        return len(self.lower)

    @property
    def size(self) -> int:
        return len(self.lower[0]) if self.lower else 0

    def intervals(self, b: int = 0) -> list[tuple[Fraction, bool, Fraction, bool]]:
        """Per element ``(lower, lower_strict, upper, upper_strict)`` of instance ``b``."""
        return list(zip(self.lower[b], self.lower_strict[b], self.upper[b], self.upper_strict[b]))

    def contains(self, x: Any, b: int = 0) -> bool:
        """Exact membership of the point ``x`` (flattened; its float values taken exactly)."""
        values = _flat_values(x)
        if len(values) != self.size:
            return False
        for v, (lo, ls, hi, hs) in zip(values, self.intervals(b)):
            if not math.isfinite(v):
                return False
            v = Fraction(v)
            if v < lo or v > hi or (ls and v == lo) or (hs and v == hi):
                return False
        return True

    def __getitem__(self, index) -> "ExactBox":
        return ExactBox(_pick(self.lower, index), _pick(self.upper, index), _pick(self.lower_strict, index),
                        _pick(self.upper_strict, index))


@dataclass(frozen=True, eq=False)
class ExactBall:
    """The exact ball ``{x : ||x - center||_p <= eps}`` intersected with ``clip_lower <= x <= clip_upper``
    (when given): the centre and clip bounds are float64 arrays ``[B, n]`` (flat order) whose values
    are exact; ``eps`` is one rational per instance (e.g. ``Fraction("0.02")``, not its float)."""

    center: np.ndarray
    eps: tuple
    p: float = math.inf
    clip_lower: np.ndarray | None = None
    clip_upper: np.ndarray | None = None

    @classmethod
    def of_ball(cls, ball: LpBall, eps: Sequence[Fraction] | None = None) -> "ExactBall":
        """``ball`` with its float values taken as exact, or with the exact radii ``eps`` when given."""
        B = ball.batch_size

        def arr(t: Tensor) -> np.ndarray:
            return t.detach().cpu().to(torch.float64).reshape(B, -1).numpy().copy()

        radii = tuple(eps) if eps is not None else tuple(Fraction(v) for v in _flat_values(ball.eps))
        clip = ball.clip
        return cls(arr(ball.center), radii, ball.p, arr(clip.lower) if clip is not None else None,
                   arr(clip.upper) if clip is not None else None)

    @property
    def batch_size(self) -> int:
        return self.center.shape[0]

    @property
    def size(self) -> int:
        return self.center.shape[1]

    def intervals(self, b: int = 0) -> list[tuple[Fraction, bool, Fraction, bool]]:
        """The exact box ``[c_i - eps, c_i + eps]`` (intersected with the clip box) that contains the ball
        (a coordinate moves by at most ``eps`` in every p-norm); equal to the set for ``p = inf``."""
        eps = self.eps[b]
        out = []
        for i, c in enumerate(self.center[b].tolist()):
            lo, hi = Fraction(c) - eps, Fraction(c) + eps
            if self.clip_lower is not None:
                lo = max(lo, Fraction(float(self.clip_lower[b, i])))
                hi = min(hi, Fraction(float(self.clip_upper[b, i])))
            out.append((lo, False, hi, False))
        return out

    def contains(self, x: Any, b: int = 0) -> bool:
        """Exact membership: the p-norm of ``x - center`` (sum of squares against ``eps**2`` for p = 2)
        in rationals, and the clip bounds."""
        values = _flat_values(x)
        if len(values) != self.size or not all(math.isfinite(v) for v in values):
            return False
        delta = [Fraction(v) - Fraction(c) for v, c in zip(values, self.center[b].tolist())]
        eps = self.eps[b]
        if self.p == math.inf:
            ok = all(abs(t) <= eps for t in delta)
        elif self.p == 2.0:
            ok = sum(t * t for t in delta) <= eps * eps
        else:
            ok = sum(abs(t) for t in delta) <= eps
        if ok and self.clip_lower is not None:
            ok = all(lo <= v <= hi for v, lo, hi in zip(values, self.clip_lower[b].tolist(), self.clip_upper[b].tolist()))
        return ok

    def __getitem__(self, index) -> "ExactBall":
        index = _keep_batch(index)
        clip_lo = self.clip_lower[index] if self.clip_lower is not None else None
        clip_hi = self.clip_upper[index] if self.clip_upper is not None else None
        return ExactBall(self.center[index], _pick(self.eps, index), self.p, clip_lo, clip_hi)


def _keep_batch(index):
    """A numpy index that keeps the batch dimension."""
    if isinstance(index, slice):
        return index
    if isinstance(index, (int, np.integer)):
        i = int(index)
        return slice(i, i + 1 if i != -1 else None)
    return np.asarray(index.cpu() if isinstance(index, Tensor) else index).reshape(-1)


ExactRow = tuple  # (coefficients: tuple[Fraction, ...], bound: Fraction, strict: bool)


@dataclass(frozen=True, eq=False)  # tensors: compare with torch.equal, not ==
class Clause:
    """The unsafe polyhedron ``{y : C y <= d}``: ``C`` is ``[B, rows, n_out]``, ``d`` is ``[B, rows]``.

    ``exact`` (optional) is the exact statement the floats were rounded from: one tuple of rows per
    instance, each row ``(coefficients, bound, strict)`` with ``len(coefficients) == n_out`` rationals,
    meaning ``sum_j coefficients[j] * y_j <= bound`` (``<`` when ``strict``). ``C`` and ``d`` are then the
    nearest float64 values (the engine accounts for that rounding in proofs); counterexamples are
    judged against ``exact``. Without it, the float ``C``, ``d`` are the exact, non-strict rows.
    """

    C: Tensor
    d: Tensor
    exact: tuple | None = None

    def __post_init__(self) -> None:
        if self.C.dim() == 2:
            object.__setattr__(self, "C", self.C.unsqueeze(0))
        if self.d.dim() == 1:
            object.__setattr__(self, "d", self.d.unsqueeze(0))
        if self.C.shape[:2] != self.d.shape:
            raise ShapeError("clause C rows vs d", tuple(self.C.shape[:2]), tuple(self.d.shape))
        if self.exact is not None:
            object.__setattr__(self, "exact", tuple(tuple(rows) for rows in self.exact))
            if len(self.exact) != self.C.shape[0]:
                raise ShapeError("exact clause instances vs C batch", self.C.shape[0], len(self.exact))
            for rows in self.exact:
                if len(rows) != self.C.shape[1]:
                    raise ShapeError("exact clause rows vs C rows", self.C.shape[1], len(rows))
                for coefs, _bound, _strict in rows:
                    if len(coefs) != self.C.shape[2]:
                        raise ShapeError("exact clause coefficients vs outputs", self.C.shape[2], len(coefs))

    @property
    def rows(self) -> int:
        return self.C.shape[1]

    def exact_rows(self, b: int = 0) -> tuple[ExactRow, ...]:
        """The rows of instance ``b`` as ``(coefficients, bound, strict)`` rationals: ``exact[b]``, or the
        float ``C``, ``d`` taken exactly (non-strict) when there is no exact form."""
        if self.exact is not None:
            return self.exact[b]
        C = self.C[b].detach().cpu().to(torch.float64).tolist()
        d = self.d[b].detach().cpu().to(torch.float64).tolist()
        return tuple((tuple(Fraction(c) for c in row), Fraction(dr), False) for row, dr in zip(C, d))

    def to(self, device=None, dtype=None) -> "Clause":
        return Clause(self.C.to(device=device, dtype=dtype), self.d.to(device=device, dtype=dtype), self.exact)

    def __getitem__(self, index) -> "Clause":
        exact = _pick(self.exact, index) if self.exact is not None else None
        index = slice(index, index + 1) if isinstance(index, int) else index
        return Clause(self.C[index], self.d[index], exact)


@dataclass(frozen=True, eq=False)  # tensors: compare with torch.equal, not ==
class Spec:
    """An input set and a disjunction of unsafe clauses; holds iff no input reaches any clause."""

    input: InputSet
    unsafe: tuple[Clause, ...]
    name: str = ""
    #: The exact input set (:class:`ExactBox` / :class:`ExactBall`) that ``input`` over-approximates in
    #: floats, or ``None`` when ``input`` is itself exact (module docstring).
    exact_input: ExactBox | ExactBall | None = None

    def __post_init__(self) -> None:
        if not self.unsafe:
            raise SpecError("a spec needs at least one unsafe clause")
        B = self.input.batch_size
        n_out = self.unsafe[0].C.shape[-1]
        for clause in self.unsafe:
            if clause.C.shape[0] != B:
                raise ShapeError("clause batch vs input-set batch", B, clause.C.shape[0])
            if clause.C.shape[-1] != n_out:
                raise ShapeError("number of outputs in a clause", n_out, clause.C.shape[-1])
        if self.exact_input is not None:
            if self.exact_input.batch_size != B:
                raise ShapeError("exact input-set batch vs input-set batch", B, self.exact_input.batch_size)
            if self.exact_input.size != self.n_inputs:
                raise ShapeError("exact input-set size vs input-set size", self.n_inputs, self.exact_input.size)

    @property
    def batch_size(self) -> int:
        return self.input.batch_size

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input.shape)

    @property
    def n_outputs(self) -> int:
        return self.unsafe[0].C.shape[-1]

    def matrix(self) -> tuple[Tensor, Tensor, Tensor]:
        """All rows stacked: ``C [B, R, n_out]``, ``d [B, R]`` and ``clause_of_row [R]``."""
        C = torch.cat([c.C for c in self.unsafe], dim=1)
        d = torch.cat([c.d for c in self.unsafe], dim=1)
        idx = torch.cat([torch.full((c.rows,), k, dtype=torch.long) for k, c in enumerate(self.unsafe)])
        return C, d, idx.to(C.device)

    def clause_margins(self, y: Tensor) -> Tensor:
        """For outputs ``y`` (``[..., B, n_out]``): ``max_j (C_j y - d_j)`` per clause, ``[..., B, K]``.

        A clause is reached iff its margin is ``<= 0``; this is the objective the falsifier minimises.
        """
        out = []
        for c in self.unsafe:
            v = torch.einsum("brn,...bn->...br", c.C.to(y.dtype), y) - c.d.to(y.dtype)
            out.append(v.amax(-1))
        return torch.stack(out, dim=-1)

    def violated_by(self, y: Tensor) -> Tensor:
        """``True`` where the outputs ``y`` (``[..., B, n_out]``) lie in some unsafe clause, in floating
        point on the float rows (closed): a screening test, not a verdict (see :meth:`exact_reached`)."""
        return (self.clause_margins(y) <= 0).any(-1)

    def exact_set(self) -> ExactBox | ExactBall | None:
        """The exact input set: ``exact_input``, else the float set taken exactly (``None`` for set types
        other than :class:`Box` and :class:`LpBall`)."""
        if self.exact_input is not None:
            return self.exact_input
        if isinstance(self.input, Box):
            return ExactBox.of_box(self.input)
        if isinstance(self.input, LpBall):
            return ExactBall.of_ball(self.input)
        return None

    def exact_contains(self, x: Any, b: int = 0) -> bool:
        """Whether the point ``x`` (its float values taken exactly) lies in the exact input set of
        instance ``b``, strict bounds strictly (rational arithmetic, no tolerance)."""
        region = self.exact_set()
        if region is None:  # an input set without an exact form: its own (float) membership test
            t = torch.as_tensor(np.asarray(_flat_values(x)), dtype=torch.float64).reshape(1, *self.input.shape)
            return bool(self.input[b].contains(t)[0])
        return region.contains(x, b)

    def exact_reached(self, y: Any, b: int = 0) -> tuple[int, Fraction] | None:
        """``(clause, margin)`` if the outputs ``y`` (their float values taken exactly) satisfy every row of
        some unsafe clause of instance ``b`` in rational arithmetic (strict rows strictly), else ``None``.
        ``margin = max_j (C_j y - d_j) <= 0`` is exact; among several reached clauses, the smallest."""
        values = _flat_values(y)
        if len(values) != self.n_outputs or not all(math.isfinite(v) for v in values):
            return None
        ys = [Fraction(v) for v in values]
        best: tuple[int, Fraction] | None = None
        for k, clause in enumerate(self.unsafe):
            margin = None
            for coefs, bound, strict in clause.exact_rows(b):
                value = sum((c * v for c, v in zip(coefs, ys) if c), Fraction(0)) - bound
                if value > 0 or (strict and value == 0):
                    break
                margin = value if margin is None else max(margin, value)
            else:
                margin = Fraction(0) if margin is None else margin
                if best is None or margin < best[1]:
                    best = (k, margin)
        return best

    def reshape_input(self, shape: tuple[int, ...]) -> "Spec":
        """The same spec with its input set viewed in the model's input shape."""
        return Spec(self.input.reshape(tuple(shape)), self.unsafe, self.name, self.exact_input)

    def to(self, device=None, dtype=None) -> "Spec":
        return Spec(self.input.to(device, dtype), tuple(c.to(device, dtype) for c in self.unsafe), self.name,
                    self.exact_input)

    def __getitem__(self, index) -> "Spec":
        exact_input = self.exact_input[index] if self.exact_input is not None else None
        return Spec(self.input[index], tuple(c[index] for c in self.unsafe), self.name, exact_input)

    def check_model_shape(self, n_inputs: int, n_outputs: int, source: str = "spec") -> None:
        """Raise ``ShapeError`` naming both numbers if this spec does not fit a model."""
        if self.n_inputs != n_inputs:
            raise ShapeError(f"{source}: number of inputs (spec vs model)", self.n_inputs, n_inputs)
        if self.n_outputs != n_outputs:
            raise ShapeError(f"{source}: number of outputs (spec vs model)", self.n_outputs, n_outputs)


@dataclass(frozen=True, eq=False)  # tensors: compare with torch.equal, not ==
class Property:
    """A named property: it holds iff every one of its specs holds (one VNN-LIB file)."""

    name: str
    specs: tuple[Spec, ...]
    source: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def n_inputs(self) -> int:
        return self.specs[0].n_inputs

    @property
    def n_outputs(self) -> int:
        return self.specs[0].n_outputs


def _as_batch(x: Tensor, shape: Sequence[int] | None) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if shape is not None:
        x = x.reshape(-1, *shape)
    return x


def robustness(
    x: Tensor,
    label: Tensor | Sequence[int] | int,
    eps: float | str | Fraction | Tensor,
    p: float | str = math.inf,
    n_classes: int | None = None,
    clip: tuple[float, float] | None = None,
    shape: Sequence[int] | None = None,
    name: str = "",
) -> Spec:
    """Local robustness of a batch ``x [B, *shape]`` with labels ``[B]``: the unsafe region is
    "some other class scores at least as high as the label", one single-row clause per other class:
    ``y_label - y_j <= 0``.

    ``eps`` is exact: a float is its binary value, a string or ``Fraction`` its rational value (the
    float ball used by proofs is rounded up around it, the exact one judges counterexamples).
    """
    x = _as_batch(x, shape)
    label = torch.as_tensor(label, dtype=torch.long).reshape(-1)
    if label.numel() != x.shape[0]:
        raise ShapeError("number of labels vs number of inputs", x.shape[0], label.numel())
    if n_classes is None:
        raise SpecError("robustness() needs n_classes")
    if (label < 0).any() or (label >= n_classes).any():
        raise SpecError(f"labels must lie in [0, {n_classes - 1}], got {label.tolist()}")
    B = x.shape[0]
    others = torch.stack([torch.cat([torch.arange(label[b]), torch.arange(label[b] + 1, n_classes)]) for b in range(B)])
    clauses = tuple(_reaches(label, others[:, k], n_classes) for k in range(n_classes - 1))
    ball, exact_ball = _ball(x, eps, p, clip)
    return Spec(ball, clauses, name, exact_ball)


def _reaches(label: Tensor, other: Tensor, n_classes: int) -> Clause:
    """The single-row clause "class ``other`` scores at least as high as ``label``": ``y_label - y_other <= 0``."""
    B = label.shape[0]
    C = torch.zeros(B, 1, n_classes, dtype=torch.float64)
    C[torch.arange(B), 0, label] = 1.0
    C[torch.arange(B), 0, other] = -1.0
    return Clause(C, torch.zeros(B, 1, dtype=torch.float64))


def targeted(
    x: Tensor,
    label: Tensor | Sequence[int] | int,
    target: Tensor | Sequence[int] | int,
    eps: float | str | Fraction | Tensor,
    p: float | str = math.inf,
    n_classes: int | None = None,
    clip: tuple[float, float] | None = None,
    shape: Sequence[int] | None = None,
    name: str = "",
) -> Spec:
    """Targeted robustness: unsafe iff the target class scores at least as high as the label."""
    x = _as_batch(x, shape)
    label = torch.as_tensor(label, dtype=torch.long).reshape(-1).expand(x.shape[0])
    target = torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(x.shape[0])
    if n_classes is None:
        raise SpecError("targeted() needs n_classes")
    if (label == target).any():
        raise SpecError("target class equals the label")
    ball, exact_ball = _ball(x, eps, p, clip)
    return Spec(ball, (_reaches(label, target, n_classes),), name, exact_ball)


def _exact_radii(eps: Any, B: int) -> list[Fraction]:
    """``eps`` (a number, decimal string, ``Fraction``, sequence or tensor of ``B`` or 1 of them) as exact
    rationals, one per instance. Floats are taken at their binary value; pass ``"0.02"`` or
    ``Fraction("0.02")`` for the decimal radius."""
    if isinstance(eps, (Tensor, np.ndarray)):
        values = _flat_values(eps)
    elif isinstance(eps, (list, tuple)):
        values = list(eps)
    else:
        values = [eps]
    if len(values) == 1:
        values = values * B
    if len(values) != B:
        raise ShapeError("number of eps values vs number of inputs", B, len(values))
    try:
        radii = [exact(v) for v in values]
    except (ValueError, OverflowError, TypeError):
        raise SpecError(f"eps must be a finite number, got {values if len(values) > 1 else values[0]!r}") from None
    if any(r < 0 for r in radii):
        raise SpecError(f"eps must be non-negative, got {[float(r) for r in radii]}")
    return radii


def _ball(x: Tensor, eps, p, clip) -> tuple[LpBall, ExactBall]:
    """The float ball used by proofs and the exact ball it contains.

    The exact radius is kept as a rational; the float radius is that rational rounded *up* to float64,
    so the float ball (whose ``bounds``/``support`` are rounded outward in turn) contains the exact one.
    The centre and clip bounds are floats and exact as they are.
    """
    p = parse_norm(p)
    radii = _exact_radii(eps, x.shape[0])
    eps_f = torch.tensor([round_float(r, +1) for r in radii], dtype=torch.float64)
    box = None
    if clip is not None:
        lo, hi = clip
        box = Box(torch.full_like(x, float(lo)), torch.full_like(x, float(hi)))
        if not bool(box.contains(x).all()):
            raise SpecError(f"an input lies outside the clip domain [{lo}, {hi}]")
    ball = LpBall(x, eps_f, p, box)
    return ball, ExactBall.of_ball(ball, radii)
