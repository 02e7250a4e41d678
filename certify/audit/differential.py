"""Differential checks: the engine against ground truth that does not share its code.

* ``containment``: random networks over every op family (Linear, Conv with stride and padding,
  BatchNorm, ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool, AvgPool, residual Add) on boxes and L-inf, L2
  and L1 balls; sound IBP, CROWN and alpha-CROWN bounds must contain the outputs of the *eager PyTorch
  module in float64* at sampled points and corners; alpha-CROWN is never looser than CROWN; on an
  affine network CROWN is exact and inside IBP.
* ``exact_arithmetic``: on degenerate boxes (single points) the sound bounds must contain the network's
  value computed with exact rationals (``fractions.Fraction``).
* ``vnnlib_against_manifest``: every VNN-LIB file of a generated suite, as ``certify`` reads it, states the
  box and clauses of the manifest, and the planted counterexample reaches it in onnxruntime.
* ``suite_audit``: ``certify audit`` of the listed backends together on the suite: no unsound claim, no bad
  counterexample, no contradiction (with the expectation or between two backends).

Each check returns a list of failure messages (empty: passed).
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .generate import ResidualMLP

Check = Callable[[], list[str]]


class _Conv(nn.Module):
    def __init__(self, pool: str):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                               nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                               nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.f(x.reshape(x.shape[0], 1, 6, 6))


def random_networks(seed: int = 0) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Small networks with random weights covering every op family; BatchNorm with random statistics."""
    torch.manual_seed(seed)
    d, h, k = 5, 10, 3

    def mlp(act):
        return nn.Sequential(nn.Linear(d, h), act(), nn.Linear(h, h), act(), nn.Linear(h, k))

    nets = [("mlp_relu", mlp(nn.ReLU), (d,)), ("mlp_leaky", mlp(lambda: nn.LeakyReLU(0.1)), (d,)),
            ("mlp_sigmoid", mlp(nn.Sigmoid), (d,)), ("mlp_tanh", mlp(nn.Tanh), (d,)),
            ("residual", ResidualMLP(d, h, k), (d,)), ("conv_max", _Conv("max"), (1, 6, 6)),
            ("conv_avg", _Conv("avg"), (1, 6, 6)), ("affine", nn.Sequential(nn.Linear(d, h), nn.Linear(h, k)), (d,)),
            ("mlp_bn", nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.BatchNorm1d(h), nn.Linear(h, k)), (d,))]
    for _, net, _ in nets:
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
        net.eval()
    return nets


def _sets(shape: tuple[int, ...], gen: torch.Generator):
    from ..sets import Box, LpBall

    c = (torch.rand((1, *shape), generator=gen, dtype=torch.float64) * 2 - 1).float().double()
    w = 0.3
    return [("box", Box(c - w * torch.rand(c.shape, generator=gen, dtype=torch.float64), c + w)),
            ("linf", LpBall(c, torch.tensor([w], dtype=torch.float64), float("inf"))),
            ("l2", LpBall(c, torch.tensor([2 * w], dtype=torch.float64), 2.0)),
            ("l1", LpBall(c, torch.tensor([3 * w], dtype=torch.float64), 1.0))]


def containment(seed: int = 0, samples: int = 3000) -> list[str]:
    from ..engine.alpha import AlphaOptions, alpha_crown_lower
    from ..engine.crown import sound_crown_lower
    from ..engine.ibp import sound_interval_bounds
    from ..models import from_module

    fails: list[str] = []
    gen = torch.Generator().manual_seed(seed)
    for name, net, shape in random_networks(seed):
        model = from_module(net, shape)
        ref = net.double()
        k = model.n_outputs
        C = torch.cat([torch.eye(k), -torch.eye(k)]).unsqueeze(0).double()
        d = torch.zeros(1, 2 * k, dtype=torch.float64)
        for set_name, s in _sets(shape, gen):
            pts = torch.cat([s.sample(samples, generator=gen)[:, 0], s.sample(256, generator=gen, corners=True)[:, 0],
                             s.center])
            with torch.no_grad():
                y = ref(pts).reshape(len(pts), -1)
            ylo, yhi = y.min(0).values, y.max(0).values
            tol = 1e-9 * (1 + y.abs().max())
            box = sound_interval_bounds(model.graph, s.bounds())
            crown = sound_crown_lower(model.graph, s, C, d)[0]
            alpha = alpha_crown_lower(model.graph, s, C, d, AlphaOptions(iterations=8))[0]
            bounds = {"ibp": (box.lower.reshape(-1), box.upper.reshape(-1)),
                      "crown": (crown[:k], -crown[k:]), "alpha-crown": (alpha[:k], -alpha[k:])}
            for method, (lo, hi) in bounds.items():
                bad = (ylo < lo - tol) | (yhi > hi + tol)
                if bool(bad.any()):
                    j = int(bad.nonzero()[0])
                    fails.append(f"{name}/{set_name}: {method} bounds [{float(lo[j]):.6g}, {float(hi[j]):.6g}] of output "
                                 f"{j} miss sampled values [{float(ylo[j]):.6g}, {float(yhi[j]):.6g}]")
            if bool((alpha < crown - 1e-9).any()):
                fails.append(f"{name}/{set_name}: alpha-CROWN looser than CROWN")
            if name == "affine":  # CROWN is exact on an affine map: inside IBP and touching the samples' range
                lo, hi = bounds["crown"]
                if bool((lo < box.lower.reshape(-1) - tol).any() or (hi > box.upper.reshape(-1) + tol).any()):
                    fails.append(f"{name}/{set_name}: CROWN's interval not inside IBP's on an affine network")
    return fails


def _exact_forward(layers: list[tuple[np.ndarray, np.ndarray, bool]], x: list[Fraction]) -> list[Fraction]:
    for W, b, relu in layers:
        x = [sum((Fraction(float(w)) * xi for w, xi in zip(row, x)), Fraction(float(bi))) for row, bi in zip(W, b)]
        if relu:
            x = [max(v, Fraction(0)) for v in x]
    return x


def exact_arithmetic(seed: int = 1, points: int = 6) -> list[str]:
    """Sound bounds at single points must contain the exact rational value of the network."""
    from ..engine.crown import sound_crown_lower
    from ..engine.ibp import sound_interval_bounds
    from ..models import from_module
    from ..sets import Box

    torch.manual_seed(seed)
    dims = [12, 16, 16, 16, 4]
    net = nn.Sequential(*[m for i in range(len(dims) - 1)
                          for m in ([nn.Linear(dims[i], dims[i + 1])] + ([nn.ReLU()] if i < len(dims) - 2 else []))])
    model = from_module(net, (dims[0],))
    lin = [m for m in net if isinstance(m, nn.Linear)]
    layers = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy(), i < len(lin) - 1)
              for i, m in enumerate(lin)]
    k = dims[-1]
    C = torch.cat([torch.eye(k), -torch.eye(k)]).unsqueeze(0).double()
    d = torch.zeros(1, 2 * k, dtype=torch.float64)
    fails = []
    gen = torch.Generator().manual_seed(seed)
    # the first layer nearly cancels at the first point (large terms, small sum): there the rounding error
    # of every dot product is far above one unit in the last place of its result
    x0 = (torch.randn(1, dims[0], generator=gen, dtype=torch.float64) * 1e3).float()
    with torch.no_grad():
        lin[0].bias.copy_(-(lin[0].weight @ x0[0]) + 1e-3 * torch.randn(dims[1], generator=gen))
    model = from_module(net, (dims[0],))
    layers[0] = (lin[0].weight.detach().double().numpy(), lin[0].bias.detach().double().numpy(), True)
    for p in range(points):
        x = x0.double() if p == 0 else (torch.randn(1, dims[0], generator=gen, dtype=torch.float64) * 3).float().double()
        exact = _exact_forward(layers, [Fraction(float(v)) for v in x[0]])
        # both semantics: "real" bounds cover only the bound computation's own rounding (gamma_n), which
        # the runtime's larger perturbation would otherwise hide; "runtime" bounds must contain it too
        for graph in (model.graph.with_semantics("real"), model.graph):
            box = sound_interval_bounds(graph, Box(x, x))
            crown = sound_crown_lower(graph, Box(x, x), C, d)[0]
            for j, v in enumerate(exact):
                for method, lo, hi in (("ibp", box.lower[0, j], box.upper[0, j]), ("crown", crown[j], -crown[k + j])):
                    if not (Fraction(float(lo)) <= v <= Fraction(float(hi))):
                        fails.append(f"point {p} ({graph.meta.get('semantics', 'runtime')}): {method} bounds "
                                     f"[{float(lo)!r}, {float(hi)!r}] exclude the exact value {float(v)!r} of output {j}")
    return fails


class TightProperties:
    """Random ReLU networks with a property violated by a small margin: ``c . f(x) <= d`` is unsafe with
    ``d`` just above the exact minimum of ``c . f`` over the box, so a counterexample exists and no backend
    may prove it (attacks off: the claim itself is judged). The exact minimum is computed once, when the
    check is built (HiGHS on the encoding), before any mutation is in place."""

    def __init__(self, seed: int = 2, count: int = 4, gap: float = 0.05):
        from verifiers.milp import MILPSolver

        from ..models import from_module
        from ..pwl import lower
        from ..sets import Box
        from ..spec import Clause, Property, Spec

        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.cases = []
        for i in range(count):
            net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2)).eval()
            model = from_module(net, (4,))
            c = (torch.rand(1, 4, generator=gen, dtype=torch.float64) * 2 - 1).float().double()
            box = Box(c - 0.5, c + 0.5)
            row = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
            program = lower(model.graph, box, float_rounding="none")
            A, a = program.output_rows(row.numpy())
            low, _ = MILPSolver(program).minimum(A, a, np.zeros(1))
            if not np.isfinite(low):
                continue
            prop = Property(f"tight{i}", (Spec(box, (Clause(row, torch.tensor([low + gap], dtype=torch.float64)),)),))
            self.cases.append((model, prop))

    def __call__(self, verifiers=("ibp", "crown", "alpha-crown", "bab")) -> list[str]:
        from .. import api
        from ..results import Verdict

        fails = []
        for model, prop in self.cases:
            for v in verifiers:
                r = api.verify(model, prop, v, timeout=5.0, attack=False)
                if r.verdict is Verdict.PROVED:
                    fails.append(f"{v} proves {prop.name}, which a point of the box violates")
        return fails


def vnnlib_against_manifest(suite: Path) -> list[str]:
    from ..vnnlib import read_vnnlib
    from .run import onnx_input_dtype, onnx_output

    manifest = json.loads((suite / "manifest.json").read_text())
    fails = []
    for r in manifest["instances"]:
        prop = read_vnnlib(suite / r["vnnlib"])
        spec = prop.specs[0]
        box = spec.input.bounds()
        if not (np.array_equal(box.lower.reshape(-1).numpy(), np.array(r["lower"]))
                and np.array_equal(box.upper.reshape(-1).numpy(), np.array(r["upper"]))):
            fails.append(f"{r['name']}: the input box read from the VNN-LIB differs from the manifest's")
        for c, m in zip(spec.unsafe, r["clauses"]):
            if not (np.array_equal(c.C[0].numpy(), np.array(m["C"])) and np.array_equal(c.d[0].numpy(), np.array(m["d"]))):
                fails.append(f"{r['name']}: an unsafe clause read from the VNN-LIB differs from the manifest's")
                break
        if r.get("exact") is not None:  # the rational statement (trap suites): bounds, rows and strictness
            from .run import truth_of_record

            want = truth_of_record(r).spec
            got_box, want_box = spec.exact_set(), want.exact_set()
            if got_box.intervals(0) != want_box.intervals(0):
                fails.append(f"{r['name']}: the exact input box read from the VNN-LIB differs from the manifest's")
            if [c.exact_rows(0) for c in spec.unsafe] != [c.exact_rows(0) for c in want.unsafe]:
                fails.append(f"{r['name']}: the exact unsafe rows read from the VNN-LIB differ from the manifest's")
        if r["expected"] == "sat" and r["x_star"] is not None:
            # exactly: the point as fed to the model (its declared input type), the rational input set
            # and unsafe rows as read (strict ones strictly), the output onnxruntime returns
            fed = np.asarray(r["x_star"], dtype=np.float64).astype(onnx_input_dtype(suite / r["onnx"]))
            y = onnx_output(suite / r["onnx"], fed, tuple(r["input_shape"]))
            if not spec.exact_contains(fed.astype(np.float64)) or spec.exact_reached(y) is None:
                fails.append(f"{r['name']}: the planted counterexample does not violate the property as read")
    return fails


def suite_audit(suite: Path, verifiers: tuple[str, ...] = ("pgd", "ibp", "crown", "alpha-crown", "bab"),
                timeout: float = 5.0) -> list[str]:
    from .run import FAILURES, audit

    fails = []
    for row in audit(suite, list(verifiers), timeout):  # together: disagreements are contradictions too
        if row.status in FAILURES:
            fails.append(f"{row.verifier} on {row.instance}: {row.status} ({row.note})")
    return fails


class TrapBounds:
    """The floating-point trap suite (``traps.py``, generated once into a temporary folder): its VNN-LIB files
    read as the manifest's rational statement, and no sound backend's *bound* (no attack first) proves a trap
    that onnxruntime violates. Catches what containment against a float64 module cannot: a lost runtime
    perturbation, flushed subnormals, solver-dropped coefficients, VNN-LIB constants combined in floats."""

    METHODS = ("ibp", "crown", "milp")

    def __init__(self):
        self.dir: Path | None = None

    def __call__(self) -> list[str]:
        import tempfile

        from .. import api
        from ..models import load_model
        from ..results import Verdict
        from ..vnnlib import read_vnnlib
        from .traps import generate_traps

        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="certify-traps-"))
            generate_traps(self.dir, log=lambda s: None)
        fails = vnnlib_against_manifest(self.dir)
        for r in json.loads((self.dir / "manifest.json").read_text())["instances"]:
            if r["expected"] != "sat":
                continue
            try:
                model = load_model(self.dir / r["onnx"])
            except Exception:  # refused by the importer (narrowing casts for milp...): nothing proved
                continue
            prop = read_vnnlib(self.dir / r["vnnlib"])
            for m in self.METHODS:
                result = api.verify(model, prop, m, attack=False, timeout=5)
                if result.verdict is Verdict.PROVED:
                    fails.append(f"{r['name']}: {m} proves a property onnxruntime violates")
        return fails


def default_checks(suite: Path) -> list[tuple[str, Check]]:
    """The mutation audit's checks, cheapest first."""
    return [("vnnlib_against_manifest", lambda: vnnlib_against_manifest(suite)),
            ("exact_arithmetic", exact_arithmetic),
            ("containment", containment),
            ("tight_properties", TightProperties()),
            ("suite_audit", lambda: suite_audit(suite)),
            ("trap_bounds", TrapBounds())]
