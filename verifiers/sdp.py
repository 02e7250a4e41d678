"""SDP backends: the relaxation of Raghunathan, Steinhardt and Liang (2018) with the engine's bounds as
constraints (``certify.sdp``), solved by cvxpy (``sdp``) or by a low-rank Burer-Monteiro method in torch
(``sdp-bm``, Chiu and Zhang 2023). Both report only certified dual bounds (``certify.sdp.certificate``),
covering the graph's semantics (the runtime's rounding enters as bounded perturbations,
``certify.sdp.chain``). They prove or return unknown; they never falsify (the optional PGD attack does).

``keep_crown`` (default on) reports per row the larger of the SDP's certificate and CROWN's bound over
the same boxes (both sound); ``stats`` keeps the SDP's own certificates.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from certify.bounding import BoundOptions, verify_with_bounds
from certify.budget import Budget
from certify.engine.crown import sound_crown_lower
from certify.models import Model
from certify.results import Guarantee, Result, Verdict
from certify.sdp.bm import BMOptions, BMSDP
from certify.sdp.bounds import row_bound
from certify.sdp.certificate import Certificate, certify
from certify.sdp.chain import lower_chain, unsupported_reason
from certify.sdp.problem import build
from certify.sets import LpBall
from certify.spec import Property, Spec


class TooLarge(Exception):
    """The relaxation exceeds the backend's size limit (the message says by how much)."""


@dataclass(frozen=True)
class SDPOptions(BoundOptions):
    """``max_vars``: the size limit (input entries plus active-or-unstable neurons; the PSD matrix is one
    larger); ``solver``: cvxpy solver; ``keep_crown``: see the module docstring."""

    max_vars: int = 120
    solver: str = "CLARABEL"
    keep_crown: bool = True


@dataclass(frozen=True)
class SDPBMOptions(BoundOptions):
    """``max_vars``: the size limit (dense dual matrix and its factorisation: memory ``8 (n+1)^2`` bytes,
    ``O(n^3)`` per certificate); ``bm``: the solver's options; ``keep_crown``: see the module docstring."""

    max_vars: int = 2500
    keep_crown: bool = True
    bm: BMOptions = field(default_factory=BMOptions)


def _l2(input_set) -> tuple[np.ndarray, float] | None:
    if isinstance(input_set, LpBall) and input_set.p == 2.0:
        return input_set.center.reshape(-1).double().cpu().numpy(), float(input_set.eps.reshape(-1)[0])
    return None


def _start(chain) -> np.ndarray:
    """A point of the relaxation's variables: the forward pass of the chain at the input box's centre."""
    x = (chain.x_lower + chain.x_upper) / 2
    xs = [x]
    for layer in chain.hidden:
        x = torch.clamp(layer.W @ x + layer.b, min=0)
        xs.append(x)
    return torch.cat(xs).numpy()


def sdp_row_bounds(model: Model, spec: Spec, options, budget: Budget, method: str,
                   stats: dict | None = None) -> torch.Tensor:
    """Certified lower bounds ``[B, R]`` of ``C_r f(x) - d_r``; ``-inf`` for rows left undone (budget)."""
    graph = model.graph
    C, d, _ = spec.matrix()
    B, R = C.shape[:2]
    out = torch.full((B, R), -math.inf, dtype=torch.float64)
    raw = torch.full((B, R), -math.inf, dtype=torch.float64)
    for b in range(B):
        one = spec.input[b]
        chain = lower_chain(graph, one)
        if chain.n_vars > options.max_vars:
            raise TooLarge(f"{chain.n_vars} variables (input entries plus active or unstable neurons) exceed "
                           f"{method}'s limit of {options.max_vars} (options.max_vars)")
        problem = build(chain, _l2(one))
        if method == "sdp":
            from certify.sdp.cvx import CvxSDP

            cvx = CvxSDP(problem, options.solver)

            def solve(obj: np.ndarray) -> Certificate | None:
                lam, _status = cvx.solve(obj, budget.remaining())
                return certify(problem, lam, obj) if lam is not None else None
        else:
            bm = BMSDP(problem, options.device)
            start = problem.to_scaled(_start(chain))

            def solve(obj: np.ndarray) -> Certificate | None:
                res = bm.solve(obj, options.bm, seconds=budget.remaining(), start=start)
                return res.certificate
        Cb, db = C[b].double().cpu().numpy(), d[b].double().cpu().numpy()
        for r in range(R):
            if budget.expired():
                break
            raw[b, r] = row_bound(chain, problem, solve, Cb[r], float(db[r]))[0]
    out = raw.clone()
    if options.keep_crown:
        crown = sound_crown_lower(graph, spec.input, C, d).cpu()
        out = torch.maximum(out, crown)
    if stats is not None:
        stats.setdefault("sdp_bounds", []).append(raw.tolist())
    return out


class _SDPBase:
    name: ClassVar[str]
    description: ClassVar[str]
    guarantee: ClassVar[Guarantee] = Guarantee.SOUND
    complete: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]]
    Options: ClassVar[type]

    def supports(self, model: Model, prop: Property) -> str | None:
        return unsupported_reason(model.graph)

    def verify(self, model: Model, prop: Property, *, options: Any = None, budget: Budget) -> Result:
        options = options or self.Options()
        t0 = time.perf_counter()
        name = self.name

        def rows(model, spec, options, budget):
            return sdp_row_bounds(model, spec, options, budget, name)

        try:
            return verify_with_bounds(name, rows, model, prop, options, budget)
        except TooLarge as exc:
            return Result(Verdict.UNKNOWN, name, time.perf_counter() - t0, reason=f"unsupported: {exc}",
                          property=prop.name, options=asdict(options))


class SDP(_SDPBase):
    name = "sdp"
    description = ("SDP relaxation (Raghunathan et al. 2018) with engine bounds, solved by cvxpy/Clarabel; "
                   "rigorous dual certificate (sound, incomplete; small networks)")
    requires = ("cvxpy", "scipy", "torch")
    Options = SDPOptions


class SDPBM(_SDPBase):
    name = "sdp-bm"
    description = ("low-rank Burer-Monteiro SDP (Chiu and Zhang 2023) in torch with rank escape; rigorous dual "
                   "certificate (sound, incomplete)")
    requires = ("scipy", "torch")
    Options = SDPBMOptions
