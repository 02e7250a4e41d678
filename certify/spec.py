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
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .errors import ShapeError, SpecError
from .sets import Box, InputSet, LpBall, parse_norm


def clause_max(rows: Tensor, clause_of_row: Tensor, n_clauses: int) -> Tensor:
    """Per clause, the largest of its rows: ``[N, R]`` row values -> ``[N, K]`` (a clause is unreachable
    when its best row's lower bound is positive, and reached when its largest row is ``<= 0``)."""
    out = torch.full((rows.shape[0], n_clauses), -torch.inf, dtype=rows.dtype, device=rows.device)
    return out.scatter_reduce(1, clause_of_row.to(rows.device).expand_as(rows), rows, reduce="amax")


@dataclass(frozen=True, eq=False)  # tensors: compare with torch.equal, not ==
class Clause:
    """The unsafe polyhedron ``{y : C y <= d}``: ``C`` is ``[B, rows, n_out]``, ``d`` is ``[B, rows]``."""

    C: Tensor
    d: Tensor

    def __post_init__(self) -> None:
        if self.C.dim() == 2:
            object.__setattr__(self, "C", self.C.unsqueeze(0))
        if self.d.dim() == 1:
            object.__setattr__(self, "d", self.d.unsqueeze(0))
        if self.C.shape[:2] != self.d.shape:
            raise ShapeError("clause C rows vs d", tuple(self.C.shape[:2]), tuple(self.d.shape))

    @property
    def rows(self) -> int:
        return self.C.shape[1]

    def to(self, device=None, dtype=None) -> "Clause":
        return Clause(self.C.to(device=device, dtype=dtype), self.d.to(device=device, dtype=dtype))

    def __getitem__(self, index) -> "Clause":
        index = slice(index, index + 1) if isinstance(index, int) else index
        return Clause(self.C[index], self.d[index])


@dataclass(frozen=True, eq=False)  # tensors: compare with torch.equal, not ==
class Spec:
    """An input set and a disjunction of unsafe clauses; holds iff no input reaches any clause."""

    input: InputSet
    unsafe: tuple[Clause, ...]
    name: str = ""

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
        """``True`` where the outputs ``y`` (``[..., B, n_out]``) lie in some unsafe clause."""
        return (self.clause_margins(y) <= 0).any(-1)

    def reshape_input(self, shape: tuple[int, ...]) -> "Spec":
        """The same spec with its input set viewed in the model's input shape."""
        return Spec(self.input.reshape(tuple(shape)), self.unsafe, self.name)

    def to(self, device=None, dtype=None) -> "Spec":
        return Spec(self.input.to(device, dtype), tuple(c.to(device, dtype) for c in self.unsafe), self.name)

    def __getitem__(self, index) -> "Spec":
        return Spec(self.input[index], tuple(c[index] for c in self.unsafe), self.name)

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
    eps: float | Tensor,
    p: float | str = math.inf,
    n_classes: int | None = None,
    clip: tuple[float, float] | None = None,
    shape: Sequence[int] | None = None,
    name: str = "",
) -> Spec:
    """Local robustness of a batch ``x [B, *shape]`` with labels ``[B]``: the unsafe region is
    "some other class scores at least as high as the label", one single-row clause per other class:
    ``y_label - y_j <= 0``.
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
    return Spec(_ball(x, eps, p, clip), clauses, name)


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
    eps: float | Tensor,
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
    return Spec(_ball(x, eps, p, clip), (_reaches(label, target, n_classes),), name)


def _ball(x: Tensor, eps, p, clip) -> InputSet:
    p = parse_norm(p)
    eps = torch.as_tensor(eps, dtype=torch.float64)
    if (eps < 0).any():
        raise SpecError(f"eps must be non-negative, got {eps.tolist()}")
    box = None
    if clip is not None:
        lo, hi = clip
        box = Box(torch.full_like(x, float(lo)), torch.full_like(x, float(hi)))
        if not bool(box.contains(x).all()):
            raise SpecError(f"an input lies outside the clip domain [{lo}, {hi}]")
    return LpBall(x, eps, p, box)
