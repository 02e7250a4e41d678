"""The soundness-audit suite generator: instances with a hidden counterexample (expected ``sat``) and
instances proved by an exact backend (expected ``unsat``), written as ONNX + VNN-LIB + ``instances.csv``
+ ``manifest.json``.

For each instance (all choices drawn from ``seed`` and the instance index, so a suite regenerates
exactly, and a new seed gives fresh hidden points once published ones have been found):

1. a body ``f0`` (ReLU/Tanh/Sigmoid MLP, CNN with stride and padding, BatchNorm, residual Add) trained
   for a few hundred steps on a synthetic task (labels of a random teacher network);
2. a property around a random centre: robustness (a disjunction), one targeted constraint, a
   conjunction of two, or one row with several output coefficients; its radius is halved until CROWN
   proves it on ``f0``;
3. for ``sat`` instances a planted point ``x*`` drawn inside the box and a spike (``planted``) whose
   L1 width makes a uniform sample hit the pocket with probability about ``1e-9``; for ``unsat``
   instances the same spike placed just outside the box, so it never fires there;
4. checks: the planted output of ``x*`` in onnxruntime must lie in the unsafe clause with margin
   ``<= -margin``; the attack gauntlet (``gauntlet``) must miss it; an ``unsat`` instance must be proved
   by ``milp`` and again by ``bab`` (CROWN-based branch-and-bound: no MILP lowering, no LP solver). Instances failing a check are dropped and the next draw is tried.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..spec import Clause, Property, Spec
from ..sets import Box
from .planted import Spike, plant
from .run import onnx_output

ARCHS = ("mlp_relu", "mlp_relu_deep", "mlp_tanh", "mlp_sigmoid", "cnn", "cnn_bn", "residual", "mlp_bn")
KINDS = ("robustness", "targeted", "conjunction", "coefficients")
EXACT_ARCHS = {"mlp_relu", "mlp_relu_deep", "cnn", "cnn_bn", "residual", "mlp_bn"}  # piecewise linear


@dataclass(frozen=True)
class GauntletOptions:
    """PGD with ``restarts`` points for ``steps`` steps at each step size, over ``rounds`` of fresh
    restarts, plus ``samples`` uniform points and box corners."""

    restarts: int = 512
    steps: int = 200
    step_sizes: tuple[float, ...] = (0.05, 0.3, 1.0)
    rounds: int = 2
    samples: int = 100_000
    seed: int = 0


@dataclass
class PlantedRecord:
    """One manifest entry; ``x_star`` and the box/clauses let an auditor check a counterexample without
    re-parsing the VNN-LIB file."""

    name: str
    onnx: str
    vnnlib: str
    expected: str
    arch: str
    kind: str
    n_inputs: int
    n_outputs: int
    input_shape: list[int]
    radius: float
    lower: list[float]
    upper: list[float]
    clauses: list[dict]
    x_star: list[float] | None = None
    pocket_width: float | None = None
    planted_margin: float | None = None
    found_by_gauntlet: bool = False
    seed: int = 0
    notes: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# bodies and the synthetic task
# ----------------------------------------------------------------------------------------------


class ResidualMLP(nn.Module):
    def __init__(self, d: int, h: int, k: int):
        super().__init__()
        self.inp, self.block, self.out = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, k)

    def forward(self, x):
        z = torch.relu(self.inp(x.reshape(x.shape[0], -1)))
        return self.out(torch.relu(z + self.block(z)))


class _CNN(nn.Module):
    def __init__(self, side: int, k: int, bn: bool):
        super().__init__()
        layers = [nn.Conv2d(1, 4, 3, stride=2, padding=1)]
        layers += [nn.BatchNorm2d(4)] if bn else []
        layers += [nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        out = (side + 1) // 2
        self.head = nn.Linear(6 * out * out, k)
        self.side = side

    def forward(self, x):
        return self.head(self.features(x.reshape(x.shape[0], 1, self.side, self.side)))


def _body(arch: str, d: int, k: int, side: int) -> nn.Module:
    h = 16
    if arch == "mlp_relu":
        return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, k))
    if arch == "mlp_relu_deep":
        return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, k))
    if arch in ("mlp_tanh", "mlp_sigmoid"):
        act = nn.Tanh if arch == "mlp_tanh" else nn.Sigmoid
        return nn.Sequential(nn.Linear(d, h), act(), nn.Linear(h, h), act(), nn.Linear(h, k))
    if arch == "mlp_bn":
        return nn.Sequential(nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, k))
    if arch == "residual":
        return ResidualMLP(d, h, k)
    if arch in ("cnn", "cnn_bn"):
        return _CNN(side, k, arch == "cnn_bn")
    raise ValueError(f"unknown architecture {arch!r}")


def _train(body: nn.Module, d: int, k: int, gen: torch.Generator, steps: int = 300) -> None:
    """Fit the labels of a random teacher (one hidden layer) on uniform inputs in [-1, 1]^d."""
    teacher = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, k))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.rand(2048, d, generator=gen) * 2 - 1
    with torch.no_grad():
        y = teacher(x).argmax(1)
    opt = torch.optim.Adam(body.parameters(), lr=1e-2)
    body.train()
    for step in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=gen)
        loss = nn.functional.cross_entropy(body(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    body.eval()


# ----------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------


def _clauses(kind: str, logits: torch.Tensor, k: int, gen: torch.Generator) -> tuple[list[Clause], int]:
    """Unsafe clauses for the property kind at a centre with outputs ``logits``; and the index of the
    clause the plant targets."""
    label = int(logits.argmax())
    others = [j for j in range(k) if j != label]
    order = sorted(others, key=lambda j: float(logits[label] - logits[j]))  # closest competitor first

    def row(j: int) -> list[float]:
        r = [0.0] * k
        r[label], r[j] = 1.0, -1.0
        return r

    if kind == "robustness":
        clauses = [Clause(torch.tensor([row(j)], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
                   for j in others]
        return clauses, int(torch.randint(0, len(clauses), (1,), generator=gen))
    if kind == "targeted":
        return [Clause(torch.tensor([row(order[-1])], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))], 0
    if kind == "conjunction":
        pick = order[:2] if len(order) >= 2 else order
        return [Clause(torch.tensor([row(j) for j in pick], dtype=torch.float64),
                       torch.zeros(len(pick), dtype=torch.float64))], 0
    # coefficients: "a . y <= t" unsafe, with t set below the certified minimum later
    a = torch.randn(k, generator=gen, dtype=torch.float64)
    return [Clause(a.reshape(1, k), torch.zeros(1, dtype=torch.float64))], 0


def _crown_rows(model, spec: Spec) -> torch.Tensor:
    from ..engine.crown import sound_crown_lower

    spec = spec.reshape_input(model.input_shape)
    C, d, _ = spec.matrix()
    return sound_crown_lower(model.graph, spec.input, C, d)[0]


def _holds_by_crown(model, spec: Spec) -> bool:
    from ..bounding import clause_bounds

    return bool((clause_bounds(_crown_rows(model, spec).unsqueeze(0), spec)[0] > 0).all())


# ----------------------------------------------------------------------------------------------
# the gauntlet
# ----------------------------------------------------------------------------------------------


def gauntlet(model, spec: Spec, options: GauntletOptions = GauntletOptions()) -> torch.Tensor | None:
    """An input of the set reaching an unsafe clause, found by PGD at several step sizes and by uniform
    and corner sampling (screened with a float32 forward pass of the graph, confirmed by exact replay in
    the model's runtime); None when every attack misses."""
    from ..attack import AttackOptions, pgd

    from ..replay import check

    g32 = model.graph.to(dtype=torch.float32)
    spec32 = spec.reshape_input(model.input_shape)

    def violating(x: torch.Tensor) -> torch.Tensor | None:
        """A point that is a genuine counterexample: screened in floats (with a little slack, so boundary
        points are not missed), then confirmed exactly by replay in the model's runtime (the exact input
        set, the runtime's input precision, exact unsafe rows, strict ones strictly)."""
        with torch.no_grad():
            y = g32.forward(x.to(torch.float32)).double()
        margins = spec.clause_margins(y.reshape(-1, 1, y.shape[-1]))[:, 0].amin(-1)
        slack = 1e-5 * (1 + float(y.abs().max()))
        for i in torch.argsort(margins)[:16].tolist():
            if float(margins[i]) > slack:
                break
            cex = check(model, spec, x[i].reshape(-1))
            if cex is not None:
                return torch.as_tensor(cex.x, dtype=torch.float64).reshape(x[i].shape)
        return None

    gen = torch.Generator().manual_seed(options.seed)
    box = spec32.input.bounds()
    for corners in (False, True):
        left = options.samples if not corners else min(options.samples, 4096)
        while left > 0:
            n = min(left, 20_000)
            hit = violating(box.sample(n, generator=gen, corners=corners)[:, 0])
            if hit is not None:
                return hit
            left -= n
    for i, step in enumerate(options.step_sizes):
        opts = AttackOptions(points=options.restarts, steps=options.steps, step_size=step, rounds=options.rounds,
                             seed=options.seed * 1000 + i, candidates=16)
        hit = violating(pgd(model.graph, spec32, opts))
        if hit is not None:
            return hit
    return None


# ----------------------------------------------------------------------------------------------
# one instance
# ----------------------------------------------------------------------------------------------


def _pocket_width(d: int, radius: float, hit_probability: float = 1e-9) -> float:
    """L1 width ``w`` such that the pocket (L1 ball of radius ``w/2``, where the spike exceeds 1/2) has
    ``hit_probability`` of the box's volume: ``(w/2)^d 2^d / d! = p (2 r)^d``; at most ``r / 2``."""
    w = 2 * radius * (hit_probability * math.factorial(d)) ** (1.0 / d)
    return min(w, radius / 2)


def _clause_margin(clause: Clause, y: np.ndarray) -> float:
    C, d = clause.C[0].numpy(), clause.d[0].numpy()
    return float((C @ y.reshape(-1) - d).max())


def make_instance(out: Path, index: int, seed: int, expected: str, arch: str, kind: str,
                  gauntlet_options: GauntletOptions, margin: float = 0.05, exact_timeout: float = 60.0,
                  log: Callable[[str], None] = lambda s: None) -> PlantedRecord | None:
    """Build, check and write instance ``index``; None when a check fails (the caller draws again)."""
    from ..models import from_module, load_model
    from ..vnnlib import write_vnnlib

    gen = torch.Generator().manual_seed(seed * 100_003 + index)
    torch.manual_seed(seed * 100_003 + index)
    k = int(torch.randint(2, 5, (1,), generator=gen))
    if kind == "conjunction":
        k = max(k, 3)
    side = 4 if arch.startswith("cnn") else 0
    d = side * side if side else int(torch.randint(3, 9, (1,), generator=gen))
    shape = (1, side, side) if side else (d,)
    body = _body(arch, d, k, side)
    _train(body, d, k, gen)
    body0 = from_module(body, shape)
    center = (torch.rand(d, generator=gen, dtype=torch.float64) * 1.6 - 0.8).float().double()
    with torch.no_grad():
        logits = body(center.float().reshape(1, *shape))[0].double()
    clauses, target = _clauses(kind, logits, k, gen)
    radius = 0.4
    spec = None
    for _ in range(10):
        lo, hi = (center - radius).float().double(), (center + radius).float().double()
        box = Box(lo.reshape(1, d), hi.reshape(1, d))
        trial = Spec(box, tuple(clauses))
        if kind == "coefficients":  # unsafe iff a . y <= t, with t below CROWN's certified minimum of a . y
            low = float(_crown_rows(body0, Spec(box, (clauses[0],)))[0])
            t = low - 0.1 * (1 + abs(low))
            clauses = [Clause(clauses[0].C, torch.tensor([[t]], dtype=torch.float64))]
            trial = Spec(box, tuple(clauses))
        if _holds_by_crown(body0, trial):
            spec = trial
            break
        radius /= 2
    if spec is None:
        log(f"instance {index}: CROWN does not prove the body's property at any radius tried")
        return None

    width = _pocket_width(d, radius)
    C = clauses[target].C[0]
    v = -torch.linalg.pinv(C) @ torch.ones(C.shape[0], dtype=torch.float64)  # C v = -1
    if expected == "sat":
        x_star = (lo + torch.rand(d, generator=gen, dtype=torch.float64) * (hi - lo)).float().double()
        x_star = torch.minimum(torch.maximum(x_star, lo + 0.1 * (hi - lo)), hi - 0.1 * (hi - lo)).float().double()
    else:  # just outside the box in one coordinate: the spike never fires on it
        x_star = center.clone()
        j = int(torch.randint(0, d, (1,), generator=gen))
        x_star[j] = float(hi[j]) + 2 * width
        x_star = x_star.float().double()
    with torch.no_grad():
        y_star = body(x_star.float().reshape(1, *shape))[0].double()
    gap = float((C @ y_star - clauses[target].d[0]).max())
    amplitude = max(gap, 0.0) + margin + 0.5 * (1 + abs(gap))
    spike = Spike(x_star, width, amplitude * v)
    planted = plant(body, spike, gen).eval()

    name = f"{index:03d}_{arch}_{kind}_{expected}"
    onnx_path, vnnlib_path = out / "onnx" / f"{name}.onnx", out / "vnnlib" / f"{name}.vnnlib"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    vnnlib_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(planted, (torch.zeros(1, *shape),), str(onnx_path), dynamo=False, input_names=["input"],
                      output_names=["output"], opset_version=17)
    prop = Property(name, (spec,))
    write_vnnlib(prop, vnnlib_path, comment=f"certify audit instance {name} (seed {seed}); expected {expected}")
    model = load_model(onnx_path)
    record = PlantedRecord(name, f"onnx/{name}.onnx", f"vnnlib/{name}.vnnlib", expected, arch, kind, d, k,
                           list(shape), radius, lo.tolist(), hi.tolist(),
                           [{"C": c.C[0].tolist(), "d": c.d[0].tolist()} for c in clauses], seed=seed)
    if expected == "sat":
        y = onnx_output(onnx_path, x_star.numpy(), shape)
        m = _clause_margin(clauses[target], y)
        # exactly as the auditor judges it: x* in the exact input set, its runtime output in the clause
        reached = spec.exact_contains(x_star.numpy()) and spec.exact_reached(y) is not None
        if not (reached and m <= -margin):
            log(f"instance {index}: planted point replays with margin {m:.3g} > -{margin}")
            return _drop(onnx_path, vnnlib_path)
        hit = gauntlet(model, spec, gauntlet_options)
        if hit is not None:
            log(f"instance {index}: the gauntlet found a counterexample; dropped")
            return _drop(onnx_path, vnnlib_path)
        record.x_star, record.pocket_width, record.planted_margin = x_star.tolist(), width, m
    else:
        from .. import api
        from ..results import Verdict

        r = api.verify(model, prop, "milp", timeout=exact_timeout)
        if r.verdict is not Verdict.PROVED:
            log(f"instance {index}: milp did not prove the unsat instance ({r.reason})")
            return _drop(onnx_path, vnnlib_path)
        # a second, independent proof: branch-and-bound over CROWN (no piecewise-linear lowering, no solver)
        r2 = api.verify(model, prop, "bab", timeout=exact_timeout, attack=False)
        if r2.verdict is not Verdict.PROVED:
            log(f"instance {index}: bab did not confirm milp's proof of the unsat instance ({r2.reason})")
            return _drop(onnx_path, vnnlib_path)
        record.notes["proved_by"] = f"milp in {r.time_s:.2f}s, confirmed by bab in {r2.time_s:.2f}s"
        record.pocket_width, record.x_star = width, x_star.tolist()
    return record


def _drop(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
    return None


def plan(n: int, unsat_fraction: float = 0.2) -> list[tuple[str, str, str]]:
    """``(expected, arch, kind)`` for ``n`` instances: architectures and property kinds cycle;
    ``round(n * unsat_fraction)`` of them, at least one when ``n >= 2`` and the fraction is positive, and
    spread evenly, are unsat ones on a piecewise-linear body (at most ``n - 1``: some sat one is kept)."""
    n_unsat = round(n * unsat_fraction)
    if unsat_fraction > 0 and n >= 2:
        n_unsat = min(max(1, n_unsat), n - 1)
    exact = [a for a in ARCHS if a in EXACT_ARCHS]
    out = []
    made = 0
    for i in range(n):
        if (i + 1) * n_unsat // n > made:  # the made-th of n_unsat evenly spread slots
            out.append(("unsat", exact[made % len(exact)], KINDS[i % len(KINDS)]))
            made += 1
        else:
            out.append(("sat", ARCHS[i % len(ARCHS)], KINDS[(i // len(ARCHS) + i) % len(KINDS)]))
    return out


def generate_suite(out: str | Path, n: int = 50, seed: int = 0, timeout: float = 60.0,
                   gauntlet_options: GauntletOptions = GauntletOptions(), unsat_fraction: float = 0.2,
                   attempts: int = 4, log: Callable[[str], None] = print) -> list[PlantedRecord]:
    """Write ``n`` instances to ``out`` (``onnx/``, ``vnnlib/``, ``instances.csv``, ``manifest.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[PlantedRecord] = []
    t0 = time.perf_counter()
    for i, (expected, arch, kind) in enumerate(plan(n, unsat_fraction)):
        record = None
        for attempt in range(attempts):
            index = i + attempt * 10_000  # a fresh draw per attempt, still reproducible
            record = make_instance(out, index, seed, expected, arch, kind, gauntlet_options, exact_timeout=timeout,
                                   log=log)
            if record is not None:
                break
        if record is None:
            log(f"slot {i} ({expected} {arch} {kind}): no instance after {attempts} attempts")
            continue
        records.append(record)
        log(f"[{len(records)}/{n}] {record.name}: radius {record.radius:g}, inputs {record.n_inputs}, "
            f"outputs {record.n_outputs}" + (f", planted margin {record.planted_margin:.3g}"
                                             if record.planted_margin is not None else ""))
    with open(out / "instances.csv", "w") as fh:
        fh.write("onnx,vnnlib,timeout_s,expected\n")
        for r in records:
            fh.write(f"{r.onnx},{r.vnnlib},{timeout:g},{r.expected}\n")
    manifest = {"generator": "certify.audit.generate", "seed": seed, "instances": [asdict(r) for r in records],
                "gauntlet": asdict(gauntlet_options), "time_s": round(time.perf_counter() - t0, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return records


def rerun_gauntlet(suite: str | Path, options: GauntletOptions) -> tuple[int, int, list[str]]:
    """The gauntlet again, with ``options`` (use a fresh seed and more effort than at generation), on every
    sat instance of a suite: ``(found, sat instances, names found)``."""
    from ..models import load_model
    from ..vnnlib import read_vnnlib

    suite = Path(suite)
    manifest = json.loads((suite / "manifest.json").read_text())
    found, names, total = 0, [], 0
    for r in manifest["instances"]:
        if r["expected"] != "sat":
            continue
        total += 1
        model = load_model(suite / r["onnx"])
        spec = read_vnnlib(suite / r["vnnlib"]).specs[0]
        if gauntlet(model, spec, options) is not None:
            found += 1
            names.append(r["name"])
    return found, total, names
