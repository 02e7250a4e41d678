"""Branch-and-bound against the exact MILP oracle on small ReLU networks, in both split modes (input
splitting for few inputs, ReLU splitting with beta-CROWN constraints for more): it proves every property
that holds (threshold below the exact minimum) and falsifies, with a replayed counterexample, every one
that does not (threshold above it)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from certify import api
from certify.models import from_module
from certify.results import Verdict
from certify.sets import Box
from certify.spec import Clause, Property, Spec
from oracles.milp import exact_min


def _net(rng: np.random.Generator, n_in: int, width: int = 12):
    torch.manual_seed(int(rng.integers(1 << 30)))
    net = torch.nn.Sequential(torch.nn.Linear(n_in, width), torch.nn.ReLU(), torch.nn.Linear(width, 10),
                              torch.nn.ReLU(), torch.nn.Linear(10, 3)).eval()
    layers = []
    for m in net:
        if isinstance(m, torch.nn.Linear):
            layers.append(("dense", m.weight.detach().double().numpy(), m.bias.detach().double().numpy()))
        else:
            layers.append(("relu",))
    return net, layers


def _instance(seed: int, n_in: int, width: int, radius: tuple[float, float]):
    """A random network, box and output direction ``c``, with the exact minimum of ``c . f`` (MILP)."""
    rng = np.random.default_rng(seed)
    net, layers = _net(rng, n_in, width)
    model = from_module(net, (n_in,))
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(*radius, n_in)
    c = rng.standard_normal(3)
    # the layer list is float64 copies of the float32 weights: the same network as the graph
    minimum = exact_min(layers, (n_in,), lo, hi, c)
    return net, model, Box(torch.tensor(lo)[None], torch.tensor(hi)[None]), c, minimum


def _check_against_milp(seed: int, n_in: int, width: int, deltas, radius: tuple[float, float]):
    net, model, box, c, minimum = _instance(seed, n_in, width, radius)
    for delta in deltas:
        expect = Verdict.PROVED if delta < 0 else Verdict.FALSIFIED
        # unsafe: c.y <= minimum + delta  <=>  -(c.y) >= ... written as C y <= d with C = c
        clause = Clause(torch.tensor(c)[None, None], torch.tensor([[minimum + delta]]))
        prop = Property(f"seed{seed}", (Spec(box, (clause,)),))
        result = api.verify(model, prop, "bab", timeout=60, attack=False)
        assert result.verdict is expect, (seed, delta, result.verdict, result.reason, minimum)
        assert result.method == "bab", result.method
        if expect is Verdict.FALSIFIED:
            x = torch.tensor(result.counterexample.x)
            y = net(x.float()[None]).double()[0]
            assert float(torch.tensor(c) @ y) <= minimum + delta + 1e-5
            assert bool(((x >= box.lower[0]) & (x <= box.upper[0])).all())
        else:
            assert result.stats["domains"] >= 1
            # the proof's certified margin (minimum over closed domains) is positive and below the exact one
            exact_margin = -delta  # min_x c.f(x) - (minimum + delta)
            assert 0 < result.margin_lower <= exact_margin + 1e-9, (seed, result.bounds, exact_margin)
            assert result.to_dict()["margin"]["lower"] == result.margin_lower


@pytest.mark.parametrize("seed", range(10))
def test_input_split_agrees_with_exact_milp(seed):
    _check_against_milp(seed, int(np.random.default_rng(seed).integers(2, 5)), 12, (-0.05, 0.05), (0.3, 1.5))


@pytest.mark.parametrize("seed", range(10))
def test_relu_split_agrees_with_exact_milp(seed):
    """24 inputs (above input splitting's limit): ReLU splitting, close to the exact minimum on both sides."""
    _check_against_milp(100 + seed, 24, 16, (-0.02, 0.02), (0.2, 0.6))


def test_bab_reports_unsupported_for_high_dimensional_non_relu_networks():
    net = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3)).eval()
    model = from_module(net, (64,))
    x = torch.zeros(1, 64, dtype=torch.float64)
    prop = Property("wide", (Spec(Box(x, x + 1), (Clause(torch.ones(1, 1, 3, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)),)),))
    result = api.verify(model, prop, "bab", timeout=5)
    assert result.verdict is Verdict.UNKNOWN and "unsupported" in result.reason
    assert "sigmoid" in result.reason and "64" in result.reason


@pytest.mark.slow
@pytest.mark.parametrize("vnnlib, expected", [("prop_6_0.03", "unsat"), ("prop_2_0.03", "sat")])
def test_relu_split_decides_mnist_instances_alpha_crown_leaves_open(vnnlib, expected):
    """MNIST-FC 256x2 (VNN-COMP 2022): alpha-CROWN leaves both unknown (and PGD misses the sat one);
    ReLU splitting proves the unsat one and falsifies the sat one with a counterexample that onnxruntime
    replays, matching the published results."""
    from certify.models import load_model
    from certify.vnnlib import read_vnnlib

    from conftest import shared_dir

    root = shared_dir("mnist_fc")
    model = load_model(root / "onnx" / "mnist-net_256x2.onnx")
    prop = read_vnnlib(root / "vnnlib" / f"{vnnlib}.vnnlib")
    assert api.verify(model, prop, "alpha-crown", timeout=60).verdict is Verdict.UNKNOWN
    result = api.verify(model, prop, "bab", timeout=60, attack=False)
    assert result.verdict is (Verdict.PROVED if expected == "unsat" else Verdict.FALSIFIED), result.reason
    if expected == "sat":
        x = np.asarray(result.counterexample.x, dtype=np.float32).reshape(1, 784, 1)
        y = model.reference(x).reshape(1, -1)
        assert bool(prop.specs[0].violated_by(torch.tensor(y, dtype=torch.float64)).all())


@pytest.mark.slow
@pytest.mark.parametrize("bench, onnx, vnnlib", [
    ("acasxu", "ACASXU_run2a_4_2_batch_2000.onnx", "prop_2.vnnlib"),  # unsat, beyond a few seconds of input splits
    ("mnist_fc", "mnist-net_256x6.onnx", "prop_0_0.05.vnnlib"),      # unsat, beyond a few seconds of ReLU splits
])
def test_auto_honours_its_time_budget(bench, onnx, vnnlib, monkeypatch):
    """Given T seconds, a run stops soon after its budget runs out. Measured on a virtual clock (every
    read advances it by 50 ms), so the test counts budget checks, not seconds: after the first read that
    finds the budget spent, only a handful more happen before the answer (no long stretch unchecked)."""
    import certify.budget as budget_mod
    from certify.models import load_model
    from certify.vnnlib import read_vnnlib

    from conftest import shared_dir

    root = shared_dir(bench)
    model, prop = load_model(root / "onnx" / onnx), read_vnnlib(root / "vnnlib" / vnnlib)
    T, step = 6.0, 0.05
    clock = {"t": 0.0, "reads": 0, "reads_at_expiry": None}

    def virtual() -> float:
        clock["t"] += step
        clock["reads"] += 1
        if clock["t"] > T and clock["reads_at_expiry"] is None:
            clock["reads_at_expiry"] = clock["reads"]
        return clock["t"]

    monkeypatch.setattr(budget_mod, "now", virtual)
    result = api.verify(model, prop, "auto", timeout=T)
    if result.verdict is Verdict.UNKNOWN:
        assert result.reason == "timeout"
        assert clock["reads"] - clock["reads_at_expiry"] <= 40, clock


def test_relu_split_on_a_network_without_relus_decides_by_the_exact_bound():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(40, 3)).eval()
    model = from_module(net, (40,))
    x = torch.zeros(1, 40, dtype=torch.float64)
    box = Box(x - 1, x + 1)
    w = net[0].weight.detach().double()[0]
    minimum = float(net[0].bias.detach().double()[0] - w.abs().sum())
    C = torch.zeros(1, 1, 3, dtype=torch.float64)
    C[0, 0, 0] = 1.0
    for delta, expect in ((-1e-3, Verdict.PROVED), (1e-3, Verdict.FALSIFIED)):
        prop = Property("lin", (Spec(box, (Clause(C, torch.tensor([[minimum + delta]], dtype=torch.float64)),)),))
        assert api.verify(model, prop, "bab", timeout=20, attack=False).verdict is expect


@pytest.mark.parametrize("n_in, width, radius, cap_kib", [(3, 12, (0.8, 1.5), 0.25), (24, 16, (0.4, 0.6), 4)])
def test_memory_cap_gives_unknown_and_bounds_the_domain_store(n_in, width, radius, cap_kib):
    """A property just inside the exact minimum needs many domains: with a cap of a few domains the search
    stops with unknown (reason: memory cap), having never kept a store larger than the cap; with the
    default cap the same property is proved and the reported peak is below the default."""
    _, model, box, c, minimum = _instance(7, n_in, width, radius)
    clause = Clause(torch.tensor(c)[None, None], torch.tensor([[minimum - 2e-3]]))
    prop = Property("tight", (Spec(box, (clause,)),))
    cap = cap_kib / 1024
    small = api.verify(model, prop, "bab", timeout=60, attack=False, memory_mb=cap)
    assert small.verdict is Verdict.UNKNOWN and "memory cap" in small.reason, (small.verdict, small.reason)
    assert 0 < small.stats["peak_store_mb"] <= cap
    full = api.verify(model, prop, "bab", timeout=60, attack=False)
    assert full.verdict is Verdict.PROVED, full.reason
    assert small.stats["peak_store_mb"] <= full.stats["peak_store_mb"] <= 4096
    # what each answer certifies: the unfinished search its root's sound bound, the proof the minimum over
    # its closed domains; both at most the exact margin (2e-3)
    assert small.margin_lower is not None and small.margin_lower <= 2e-3 + 1e-9, small.bounds
    assert 0 < full.margin_lower <= 2e-3 + 1e-9, full.bounds


def test_memory_limit_must_be_positive():
    from certify.errors import CertifyError

    net = torch.nn.Sequential(torch.nn.Linear(2, 3)).eval()
    x = torch.zeros(1, 2, dtype=torch.float64)
    prop = Property("p", (Spec(Box(x, x + 1), (Clause(torch.ones(1, 1, 3, dtype=torch.float64),
                                                        torch.zeros(1, 1, dtype=torch.float64)),)),))
    with pytest.raises(CertifyError, match="memory limit"):
        api.verify(from_module(net, (2,)), prop, "bab", memory_mb=0)


def test_open_domain_queue_is_first_in_first_out_and_counts_what_it_holds():
    """ReLU splitting's store: batches taken across part boundaries come out in insertion order, and its
    length and byte count (what the memory cap reads) match the domains still held."""
    from certify.engine.bab import _Domains, _Queue

    def part(start: int, n: int) -> _Domains:
        ids = torch.arange(start, start + n, dtype=torch.float32)
        return _Domains({"r": ids[:, None].repeat(1, 3)}, {"r": ids[:, None, None].repeat(1, 2, 3)},
                        {"r": -ids[:, None, None].repeat(1, 2, 3)}, ids[:, None].repeat(1, 2))

    queue = _Queue(part(0, 5))
    queue.add([part(5, 3), part(8, 0), part(8, 4)])
    total, seen = 12, []
    for n in (2, 4, 1, 10):
        batch = queue.take(n)
        assert len(batch) == min(n, total - len(seen))
        seen += batch.lower[:, 0].tolist()
        assert torch.equal(batch.alphas["r"][:, 0, 0], batch.lower[:, 0])
        assert torch.equal(batch.betas["r"][:, 1, 2], -batch.lower[:, 0])
        assert len(queue) == total - len(seen)
        assert queue.nbytes() == sum(p.nbytes() for p in queue.parts)
        if n == 4:
            queue.add([part(100, 2)])
            total += 2
    assert seen == [*range(12), 100.0, 101.0] and len(queue) == 0 and queue.nbytes() == 0


def test_filtered_branching_picks_the_candidate_whose_better_child_bounds_best():
    """The batched choice (domains x candidates x sides in one CROWN pass) against each child bounded alone:
    for every domain, the chosen neuron is the candidate with the largest max over its two children."""
    from certify.engine.bab import _clamped, _filtered_choice, _with_split
    from certify.engine.crown import compute_boxes, crown_lower
    from certify.engine.fp import FAST
    from certify.sets import LpBall

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3)).eval()
    g = from_module(net, (6,)).graph.to(dtype=torch.float32)
    s = LpBall(torch.zeros(1, 6), torch.tensor([1.0]), float("inf"))
    root = compute_boxes(g, s, FAST)
    relus = {n.name: n.inputs[0] for n in g.nodes if n.op == "relu"}
    C, d, cor = torch.tensor([[[1.0, -1.0, 0.5]]]), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    n, k = 5, 3
    signs = {r: torch.zeros(n, *root[z].shape, dtype=torch.int8) for r, z in relus.items()}
    signs = _with_split(signs, torch.tensor([0, 1, 2, 10, 11]), torch.tensor([1, -1, 1, -1, 1], dtype=torch.int8))
    alphas = {r: torch.rand(n, 1, *root[z].shape) for r, z in relus.items()}
    betas = {r: torch.rand(n, 1, *root[z].shape) for r, z in relus.items()}
    boxes = _clamped(root, relus, signs, n)
    score = torch.rand(n, 18)
    score[:, :3] = torch.where(signs[next(iter(relus))].flatten(1)[:, :3] != 0, -torch.inf, score[:, :3])
    choice = _filtered_choice(g, s, C, d, cor, 1, relus, score, k, boxes, signs, alphas, betas)
    for i in range(n):
        cand = score[i].topk(k).indices
        better = []
        for j in cand:
            sides = []
            for side in (1, -1):
                ch = _with_split({r: v[i:i + 1] for r, v in signs.items()}, j.reshape(1), side)
                sides.append(float(crown_lower(g, s, C, d, FAST, boxes=_clamped(root, relus, ch, 1),
                                               alphas={r: a[i:i + 1] for r, a in alphas.items()},
                                               betas={r: (betas[r][i:i + 1], ch[r].float()) for r in relus})))
            better.append(max(sides) if torch.isfinite(score[i, j]) else -float("inf"))
        assert int(choice[i]) in cand.tolist()
        assert max(better) - better[cand.tolist().index(int(choice[i]))] <= 1e-5, (i, better, choice[i])
