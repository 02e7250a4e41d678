"""Input sets: the region of inputs a property quantifies over.

Every set is batched: tensors carry a leading instance dimension ``B`` followed by the model's
input shape. Each set answers five questions, which is all any backend needs:

* ``bounds()``   - an axis-aligned box containing the set (used by IBP);
* ``support(A, sign)`` - ``max`` (sign=+1) or ``min`` (sign=-1) of ``<A_r, x>`` over the set, for
  every row ``r`` of ``A`` (shape ``[B, R, *shape]``): the concretisation step of CROWN, so a new set
  needs no engine change;
* ``sample(n)``  - points of the set (used by soundness tests and random falsification);
* ``project(x)`` - a point of the set near ``x`` (used by PGD; feasible, not always the exact
  Euclidean projection);
* ``contains(x, atol)`` - membership in floating point (screening; counterexample replay judges
  membership exactly, with ``Spec.exact_contains``).

All values that must over-approximate the set (``bounds``, ``support``) are rounded outward, so they
contain the set in real arithmetic, not just in floating point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .errors import ShapeError


def _flat(t: Tensor, lead: int) -> Tensor:
    return t.reshape(*t.shape[:lead], -1)


def down(t: Tensor) -> Tensor:
    """The next float below ``t`` (outward rounding of a lower end point)."""
    return torch.nextafter(t, torch.full_like(t, -math.inf))


def up(t: Tensor) -> Tensor:
    """The next float above ``t``."""
    return torch.nextafter(t, torch.full_like(t, math.inf))


@runtime_checkable
class InputSet(Protocol):
    """What every input set provides (see the module docstring)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def center(self) -> Tensor: ...
    def bounds(self) -> "Box": ...
    def support(self, A: Tensor, sign: int = 1) -> Tensor: ...
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...
    def project(self, x: Tensor) -> Tensor: ...
    def contains(self, x: Tensor, atol: float = 0.0) -> Tensor: ...
    def reshape(self, shape: tuple[int, ...]) -> "InputSet": ...
    def to(self, device=None, dtype=None) -> "InputSet": ...
    def __getitem__(self, index) -> "InputSet": ...


@dataclass(frozen=True)
class Box:
    """The box ``{x : lower <= x <= upper}`` (elementwise), batched: ``lower`` is ``[B, *shape]``.

    Also the interval value of the bound-propagation engine, which may keep both end points in one
    ``[2, B, *shape]`` tensor (``from_stacked``): an elementwise map or the centre-radius form of an
    affine layer then runs as one tensor op over both end points instead of two.
    """

    lower: Tensor
    upper: Tensor
    stacked: Tensor | None = field(default=None, repr=False, compare=False)  # set only by from_stacked

    @classmethod
    def from_stacked(cls, t: Tensor) -> "Box":
        """The box with ``lower = t[0]`` and ``upper = t[1]`` (views of ``t``, which is kept as ``stacked``)."""
        return cls(t[0], t[1], t)

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape:
            raise ShapeError("Box lower/upper shapes", tuple(self.lower.shape), tuple(self.upper.shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape[1:])

    @property
    def batch_size(self) -> int:
        return self.lower.shape[0]

    @property
    def center(self) -> Tensor:
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> Tensor:
        return (self.upper - self.lower) / 2

    def bounds(self) -> "Box":
        return self

    def support(self, A: Tensor, sign: int = 1) -> Tensor:
        """``max_x <A_r, x> = <A_r^+, u> - <A_r^-, l>`` (sign=+1), ``min`` symmetrically.

        Computed as ``<A, c> +- <|A|, r>`` with ``c, r`` the centre and radius; the caller rounds.
        """
        lead = A.dim() - len(self.shape)
        Af = _flat(A, lead)
        c = _flat(self.center, 1).unsqueeze(-2)
        r = _flat(self.radius, 1).unsqueeze(-2)
        return (Af * c).sum(-1) + sign * (Af.abs() * r).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None, corners: bool = False) -> Tensor:
        """``n`` points per instance, shape ``[n, B, *shape]``, uniform (or uniform corners)."""
        shape = (n, *self.lower.shape)
        u = torch.rand(shape, generator=generator, dtype=self.lower.dtype, device="cpu").to(self.lower.device)
        if corners:
            u = (u > 0.5).to(u.dtype)
        return self.lower + u * (self.upper - self.lower)

    def project(self, x: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(x, self.upper), self.lower)

    def contains(self, x: Tensor, atol: float = 0.0) -> Tensor:
        lead = x.dim() - len(self.shape)
        ok = (x >= self.lower - atol) & (x <= self.upper + atol)
        return _flat(ok, lead).all(-1)

    def intersect(self, other: "Box") -> "Box":
        return Box(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))

    def is_empty(self) -> Tensor:
        return _flat(self.lower > self.upper, 1).any(-1)

    def reshape(self, shape: tuple[int, ...]) -> "Box":
        """The same set with inputs viewed as ``[B, *shape]`` (element order unchanged)."""
        return Box(self.lower.reshape(-1, *shape), self.upper.reshape(-1, *shape))

    def to(self, device=None, dtype=None) -> "Box":
        return Box(self.lower.to(device=device, dtype=dtype), self.upper.to(device=device, dtype=dtype))

    def __getitem__(self, index) -> "Box":
        index = _keep_dim(index)
        return Box(self.lower[index], self.upper[index])


def _keep_dim(index):
    return slice(index, index + 1) if isinstance(index, int) else index


_NORMS = {math.inf: math.inf, 2: 2.0, 1: 1.0}


def parse_norm(p: float | int | str) -> float:
    """``inf``/``linf`` -> inf, ``2``/``l2`` -> 2, ``1``/``l1`` -> 1; anything else is an error."""
    key = str(p).lower().lstrip("l")
    table = {"inf": math.inf, "2": 2.0, "2.0": 2.0, "1": 1.0, "1.0": 1.0}
    if key not in table:
        from .errors import SpecError

        raise SpecError(f"unsupported norm {p!r}: expected one of inf, 2, 1")
    return table[key]


def dual_norm(p: float) -> float:
    return {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[p]


@dataclass(frozen=True)
class LpBall:
    """``{x : ||x - center||_p <= eps}`` for p in {inf, 2, 1}, optionally intersected with a box ``clip``
    (such as the valid pixel range [0, 1]).

    ``center`` is ``[B, *shape]``; ``eps`` is ``[B]``. The centre should lie inside ``clip``.
    Support function: ``max <a, x> = <a, c> + eps * ||a||_q`` with ``q`` the dual norm; with a clip box
    the minimum of that and the box's support is used (a valid over-approximation of the
    intersection; exact for p = inf, whose intersection with a box is a box).
    """

    center: Tensor
    eps: Tensor
    p: float = math.inf
    clip: Box | None = None

    def __post_init__(self) -> None:
        if self.p not in _NORMS:
            raise ValueError(f"unsupported norm p={self.p}")
        eps = torch.as_tensor(self.eps, dtype=self.center.dtype, device=self.center.device)
        if eps.dim() == 0:
            eps = eps.expand(self.center.shape[0]).clone()
        object.__setattr__(self, "eps", eps)
        if self.clip is not None and self.clip.lower.shape != self.center.shape:
            raise ShapeError("clip box shape vs ball centre shape", tuple(self.center.shape), tuple(self.clip.lower.shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.center.shape[1:])

    @property
    def batch_size(self) -> int:
        return self.center.shape[0]

    def _eps_b(self, like: Tensor) -> Tensor:
        return self.eps.reshape(-1, *([1] * (like.dim() - 1)))

    def bounds(self) -> Box:
        e = self._eps_b(self.center)
        box = Box(down(self.center - e), up(self.center + e))
        return box.intersect(self.clip) if self.clip is not None else box

    def support(self, A: Tensor, sign: int = 1) -> Tensor:
        if self.p == math.inf:
            return self.bounds().support(A, sign)
        lead = A.dim() - len(self.shape)
        Af = _flat(A, lead)
        c = _flat(self.center, 1).unsqueeze(-2)
        q = dual_norm(self.p)
        dual = Af.abs().amax(-1) if q == math.inf else torch.linalg.vector_norm(Af, ord=q, dim=-1)
        value = (Af * c).sum(-1) + sign * self.eps.reshape(-1, *([1] * (dual.dim() - 1))) * dual
        if self.clip is None:
            return value
        boxed = self.clip.support(A, sign)
        return torch.minimum(value, boxed) if sign > 0 else torch.maximum(value, boxed)

    def sample(self, n: int, generator: torch.Generator | None = None, corners: bool = False) -> Tensor:
        """``n`` points per instance, ``[n, B, *shape]``: uniform in the ball (then clipped, which keeps
        points inside the ball because the centre lies in the clip box). ``corners`` draws vertices of
        the ball (sign vectors for inf, signed unit vectors for 1, the sphere for 2)."""
        dtype, dev = self.center.dtype, self.center.device
        B, d = self.center.shape[0], self.center[0].numel()
        g = generator
        if self.p == math.inf:
            u = torch.rand((n, B, d), generator=g, dtype=dtype) * 2 - 1
            if corners:
                u = torch.sign(u)
        elif self.p == 2.0:
            z = torch.randn((n, B, d), generator=g, dtype=dtype)
            z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            radius = 1.0 if corners else torch.rand((n, B, 1), generator=g, dtype=dtype) ** (1.0 / d)
            u = z * radius
        else:
            if corners:
                idx = torch.randint(0, d, (n, B), generator=g)
                u = torch.nn.functional.one_hot(idx, d).to(dtype)
                u = u * torch.where(torch.rand((n, B, 1), generator=g) < 0.5, -1.0, 1.0).to(dtype)
            else:  # uniform in the L1 ball: Dirichlet(1,..,1) * r^(1/d) with random signs
                e = -torch.log(torch.rand((n, B, d + 1), generator=g, dtype=dtype).clamp_min(1e-300))
                w = (e / e.sum(-1, keepdim=True))[..., :d]
                sgn = torch.where(torch.rand((n, B, d), generator=g) < 0.5, -1.0, 1.0).to(dtype)
                u = w * sgn
        u = u.to(dev).reshape(n, *self.center.shape)
        x = self.center + self._eps_b(self.center) * u
        return self.clip.project(x) if self.clip is not None else x

    def project(self, x: Tensor) -> Tensor:
        """A feasible point near ``x``: the projection onto the ball, then onto the clip box (for a centre
        inside the clip box the clipping only shrinks ``|x_i - c_i|``, so the point stays in the ball)."""
        lead = x.dim() - len(self.shape)
        delta = _flat(x - self.center, lead)
        eps = self.eps.reshape(-1, 1)
        if self.p == math.inf:
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
        elif self.p == 2.0:
            norm = delta.norm(dim=-1, keepdim=True)
            delta = delta * torch.clamp(eps / norm.clamp_min(1e-30), max=1.0)
        else:
            delta = _project_l1(delta, eps)
        y = self.center + delta.reshape(x.shape)
        return self.clip.project(y) if self.clip is not None else y

    def contains(self, x: Tensor, atol: float = 0.0) -> Tensor:
        lead = x.dim() - len(self.shape)
        delta = _flat(x - self.center, lead)
        norm = delta.abs().amax(-1) if self.p == math.inf else torch.linalg.vector_norm(delta, ord=self.p, dim=-1)
        ok = norm <= self.eps + atol
        if self.clip is not None:
            ok = ok & self.clip.contains(x, atol)
        return ok

    def reshape(self, shape: tuple[int, ...]) -> "LpBall":
        clip = self.clip.reshape(shape) if self.clip is not None else None
        return LpBall(self.center.reshape(-1, *shape), self.eps, self.p, clip)

    def to(self, device=None, dtype=None) -> "LpBall":
        clip = self.clip.to(device, dtype) if self.clip is not None else None
        return LpBall(self.center.to(device=device, dtype=dtype), self.eps.to(device=device, dtype=dtype), self.p, clip)

    def __getitem__(self, index) -> "LpBall":
        index = _keep_dim(index)
        clip = self.clip[index] if self.clip is not None else None
        return LpBall(self.center[index], self.eps[index], self.p, clip)


def _project_l1(delta: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of each row of ``delta`` onto the L1 ball of radius ``eps`` (Duchi et al. 2008)."""
    a = delta.abs()
    inside = a.sum(-1, keepdim=True) <= eps
    mu, _ = torch.sort(a, dim=-1, descending=True)
    cums = mu.cumsum(-1)
    k = torch.arange(1, a.shape[-1] + 1, device=a.device, dtype=a.dtype)
    cond = mu * k > (cums - eps)
    rho = (cond.sum(-1, keepdim=True) - 1).clamp(min=0)  # cond holds on a prefix of the sorted magnitudes
    theta = (cums.gather(-1, rho) - eps) / (rho + 1).to(a.dtype)
    proj = torch.sign(delta) * torch.clamp(a - theta, min=0)
    return torch.where(inside, delta, proj)
