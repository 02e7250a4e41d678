"""Certified training against ground truth, not against itself.

* The training bounds (fast float32 rules on the live module) contain every sampled output, and equal the
  sound float64 bounds of the *imported* model (the graph ``certify verify`` builds from the checkpoint)
  up to float32 rounding: the training sees the network the verifier certifies.
* Finite differences (``torch.autograd.gradcheck``, float64) agree with the gradients of IBP and CROWN-IBP
  margins with respect to the parameters, BatchNorm batch statistics included.
* BatchNorm in training mode computes what ``nn.BatchNorm`` computes, running statistics included.
* SABR's box lies inside the eps-ball and the domain; the eps schedule has the published shape.
* Runs are reproducible, and a resumed run ends where an uninterrupted one ends.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from certify.errors import CertifyError
from certify.engine.crown import compute_boxes, crown_lower
from certify.engine.fp import sound_context, sound_rounding
from certify.engine.ibp import interval_bounds, sound_interval_bounds
from certify.models import from_module
from certify.sets import Box
from certify.training import EvalSet, TrainOptions, evaluate, train
from certify.training.arch import CNN3, MLP, Normalize
from certify.training.bounds import (BoundModel, crown_ibp_margins, elided, fused_crown_ibp_loss, ibp_margin_bounds,
                                     ibp_margins, spec_rows,
                                     with_label_column)
from certify.training.losses import LOSSES, Step, sabr_box
from certify.training.schedule import EpsSchedule


def _nets(seed: int):
    torch.manual_seed(seed)
    mlp = MLP((1, 6, 6), n_classes=5, hidden=(12, 10), mean=0.3, std=0.4)
    cnn = CNN3((1, 8, 8), n_classes=4, width=0.5, mean=0.2, std=0.5)
    for m in (mlp, cnn):  # non-trivial statistics so that BatchNorm is not the identity
        m.train()
        with torch.no_grad():
            for _ in range(3):
                m(torch.rand(16, *m.input_shape))
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return mlp, cnn


def _box(x: torch.Tensor, eps: float) -> Box:
    return Box((x - eps).clamp(0, 1), (x + eps).clamp(0, 1))


def _samples(box: Box, n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand((n, *box.lower.shape), generator=gen, dtype=box.lower.dtype)
    return box.lower + u * (box.upper - box.lower)  # [n, B, ...]


@pytest.mark.parametrize("seed", range(4))
def test_training_margins_contain_sampled_margins(seed):
    gen = torch.Generator().manual_seed(seed)
    for net in _nets(seed):
        net.eval()
        x = torch.rand(6, *net.input_shape, generator=gen)
        y = torch.randint(0, net.body[-1].out_features, (6,), generator=gen)
        box = _box(x, 0.05)
        graph, _ = BoundModel(net, net.input_shape)(x)
        with torch.no_grad():
            m_ibp, m_crown = ibp_margins(graph, box, y), crown_ibp_margins(graph, box, y)
            pts = _samples(box, 200, gen)
            logits = net(pts.flatten(0, 1)).reshape(200, 6, -1)
        true = logits.gather(2, y.reshape(1, 6, 1).expand(200, 6, 1)) - logits  # [n, B, K]
        slack = 1e-4 * (1 + true.abs().max())
        assert (m_ibp <= true.min(0).values + slack).all()
        assert (m_crown <= true.min(0).values + slack).all()
        assert torch.allclose(m_ibp.gather(1, y[:, None]), torch.zeros(6, 1)) and (m_crown.gather(1, y[:, None]) == 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_training_bounds_equal_the_sound_bounds_of_the_imported_model(seed):
    """IBP (plain and elided) and CROWN-IBP on the live module vs the verifier's float64 sound bounds on the
    ONNX-imported graph: the sound ones are below, and within float32 rounding of, the training ones."""
    gen = torch.Generator().manual_seed(100 + seed)
    for net in _nets(seed):
        net.eval()
        x = torch.rand(5, *net.input_shape, generator=gen)
        y = torch.randint(0, net.body[-1].out_features, (5,), generator=gen)
        box = _box(x, 0.03)
        graph, _ = BoundModel(net, net.input_shape)(x)
        model = from_module(copy.deepcopy(net), net.input_shape)
        with torch.no_grad():
            fast_out = interval_bounds(graph, box)
            sound_out = sound_interval_bounds(model.graph, box.to(dtype=torch.float64))
            scale = 1e-4 * (1 + fast_out.upper.abs().max().item())
            assert (sound_out.lower <= fast_out.lower.double() + scale).all()
            assert (sound_out.upper >= fast_out.upper.double() - scale).all()
            assert torch.allclose(sound_out.lower, fast_out.lower.double(), atol=scale)
            assert torch.allclose(sound_out.upper, fast_out.upper.double(), atol=scale)
            m_fast = crown_ibp_margins(graph, box, y)
            g64 = model.graph.to(dtype=torch.float64)
            s64 = box.to(dtype=torch.float64)
            C = spec_rows(y, graph.n_outputs).double()
            rnd = sound_rounding(g64)
            with sound_context():
                boxes = compute_boxes(g64, s64.reshape(g64.input_shape), rnd, refine=False)
                m_sound = crown_lower(g64, s64, C, torch.zeros(C.shape[:2], dtype=torch.float64), rnd, boxes=boxes)
            m_sound = with_label_column(m_sound, y)
            assert (m_sound <= m_fast.double() + scale).all()
            assert torch.allclose(m_sound, m_fast.double(), atol=10 * scale)


def _gradcheck(net: nn.Module, x: torch.Tensor, of_graph) -> bool:
    """gradcheck in float64 of ``of_graph(graph, logits)`` (the graph built from ``x`` by ``BoundModel``) with
    respect to every parameter of ``net``."""
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    bound = BoundModel(net, tuple(x.shape[1:]))

    def f(*ps):
        with torch.nn.utils.stateless._reparametrize_module(net, dict(zip(names, ps))):
            return of_graph(*bound(x))

    return torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradients_of_the_bounds_match_finite_differences():
    """gradcheck in float64 over every parameter of a small BatchNorm CNN (train mode: batch statistics)."""
    torch.manual_seed(0)
    net = CNN3((1, 6, 6), n_classes=3, width=0.25, mean=0.2, std=0.5).double().train()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    box = _box(x, 0.05)
    for margins in (ibp_margins, crown_ibp_margins):
        assert _gradcheck(net, x, lambda graph, logits: torch.cat([margins(graph, box, y).flatten(), logits.flatten()]))


@pytest.mark.parametrize("seed", range(3))
def test_one_pass_interval_equals_the_engine_rules_on_the_graph_it_returns(seed):
    """``BoundModel.interval`` (centre-width through Linear/Conv + BatchNorm, label rows of the elided last
    layer) against ``interval_bounds`` of the returned graph and against the elided graph's IBP, in both modes;
    in training mode the graph's BatchNorm statistics are the batch means and biased variances of the box
    centres, and the running statistics move as ``nn.BatchNorm``'s would on those centres."""
    gen = torch.Generator().manual_seed(200 + seed)
    for net in _nets(seed):
        for training in (False, True):
            net.train(training)
            ref = copy.deepcopy(net)
            x = torch.rand(9, *net.input_shape, generator=gen)
            y = torch.randint(0, net.body[-1].out_features, (9,), generator=gen)
            box = _box(x, 0.04)
            bound = BoundModel(net, net.input_shape)
            graph, boxes = bound.interval(box)
            out = interval_bounds(graph, box, all_nodes=True)
            for name, b in boxes.items():
                assert torch.allclose(b.lower, out[name].lower, atol=1e-5) and torch.allclose(b.upper, out[name].upper, atol=1e-5), name
            g2, env = BoundModel(copy.deepcopy(ref), net.input_shape).interval(box, last=False)
            assert graph.output not in env
            lo, hi = ibp_margin_bounds(g2, box, y, env=env)
            want_lo, want_hi = ibp_margin_bounds(graph, box, y)  # all K^2 rows through the engine, then gathered
            assert torch.allclose(lo, want_lo, atol=1e-5) and torch.allclose(hi, want_hi, atol=1e-5)
            assert (lo.gather(1, y[:, None]) == 0).all()
            if training:  # the first BatchNorm sees the centres of its input boxes: nn.BatchNorm on the centre input
                with torch.no_grad():
                    ref((box.lower + box.upper) / 2)
                a, b = (next(m for m in k.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))) for k in (net, ref))
                assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
                assert torch.allclose(a.running_var, b.running_var, atol=1e-5)


def test_one_pass_interval_at_eps_zero_is_the_clean_network_and_its_gradient_checks():
    """At eps 0 the centres are the clean batch: the graph is the network ``nn.BatchNorm`` computes in training
    mode and the margins are its logit differences; gradcheck of the margins (centre statistics included)."""
    torch.manual_seed(4)
    net = CNN3((1, 8, 8), n_classes=4, mean=0.3, std=0.3).train()
    ref = copy.deepcopy(net)
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 4, (16,))
    graph, boxes = BoundModel(net, (1, 8, 8)).interval(Box(x, x))
    want = ref(x)
    assert torch.allclose(graph(x), want, atol=1e-4)
    assert torch.allclose(boxes[graph.output].lower, want, atol=1e-4)
    _, env = BoundModel(copy.deepcopy(ref), (1, 8, 8)).interval(Box(x, x), last=False)
    m = ibp_margin_bounds(graph, Box(x, x), y, env=env)[0]
    assert torch.allclose(m, want.gather(1, y[:, None]) - want, atol=1e-4)

    net64 = CNN3((1, 6, 6), n_classes=3, width=0.25, mean=0.2, std=0.5).double().train()
    x64 = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    y64 = torch.tensor([0, 1, 2, 1])
    box = _box(x64, 0.05)
    names = [n for n, _ in net64.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net64.parameters())
    bound = BoundModel(net64, (1, 6, 6))

    def f(*ps):
        with torch.nn.utils.stateless._reparametrize_module(net64, dict(zip(names, ps))):
            g, env = bound.interval(box, last=False)
            return torch.cat([b.flatten() for b in ibp_margin_bounds(g, box, y64, env=env)])

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_one_pass_margins_contain_sampled_margins_of_the_graph_they_bound(seed):
    gen = torch.Generator().manual_seed(300 + seed)
    for net in _nets(seed):
        net.train()
        x = torch.rand(12, *net.input_shape, generator=gen)
        y = torch.randint(0, net.body[-1].out_features, (12,), generator=gen)
        box = _box(x, 0.05)
        with torch.no_grad():
            graph, env = BoundModel(net, net.input_shape).interval(box, last=False)
            lo, hi = ibp_margin_bounds(graph, box, y, env=env)
            pts = _samples(box, 200, gen)
            logits = graph(pts.flatten(0, 1)).reshape(200, 12, -1)
        true = logits.gather(2, y.reshape(1, 12, 1).expand(200, 12, 1)) - logits
        slack = 1e-4 * (1 + true.abs().max())
        assert (lo <= true.min(0).values + slack).all() and (hi >= true.max(0).values - slack).all()


def test_batchnorm_in_training_mode_is_what_pytorch_computes():
    torch.manual_seed(1)
    net = CNN3((1, 8, 8), n_classes=4, mean=0.3, std=0.3).train()
    ref = copy.deepcopy(net)
    x = torch.rand(32, 1, 8, 8)
    graph, logits = BoundModel(net, (1, 8, 8))(x)
    want = ref(x)
    assert torch.allclose(logits, want, atol=1e-5)
    assert torch.allclose(graph(x), want, atol=1e-4)  # the graph (BatchNorm folded) is the same network
    for a, b in zip(net.modules(), ref.modules()):
        if isinstance(a, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
            assert torch.allclose(a.running_var, b.running_var, atol=1e-5)
            assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1
    net.eval(), ref.eval()
    graph, logits = BoundModel(net, (1, 8, 8))(x)
    assert torch.allclose(logits, ref(x), atol=1e-5) and torch.allclose(graph(x), ref(x), atol=1e-4)


def test_elided_graph_outputs_all_pairwise_differences():
    torch.manual_seed(2)
    net = MLP((4,), n_classes=3, hidden=(5,)).eval()
    graph, _ = BoundModel(net, (4,))(torch.rand(7, 4))
    x = torch.rand(7, 4)
    f = graph(x)
    assert torch.allclose(elided(graph)(x), (f[:, :, None] - f[:, None, :]).reshape(7, 9), atol=1e-5)


@pytest.mark.parametrize("seed", range(20))
def test_sabr_box_lies_inside_the_eps_ball_and_the_domain(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 1, 4, 4, generator=gen)
    x[:4] = 0.0  # on the domain's border
    eps = float(torch.rand(1, generator=gen)) * 0.4
    opts = TrainOptions(loss="sabr", eps=eps, sabr_lambda=float(torch.rand(1, generator=gen)))
    adv = (x + eps * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1)
    step = Step(None, None, x, None, eps, 1.0, opts, gen)
    box = sabr_box(step, adv)
    assert (box.lower <= box.upper).all()
    assert (box.lower >= (x - eps).clamp(min=0) - 1e-7).all() and (box.upper <= (x + eps).clamp(max=1) + 1e-7).all()
    assert (box.upper - box.lower <= 2 * opts.sabr_lambda * eps + 1e-6).all()


def test_eps_schedule_shape():
    s = EpsSchedule(0.3, warmup_epochs=2, ramp_epochs=5, steps_per_epoch=40)
    values = [s.eps_at(t) for t in range(0, 10 * 40)]
    assert all(v == 0 for v in values[:81])  # warm-up
    assert values[7 * 40] == pytest.approx(0.3) and all(v == pytest.approx(0.3) for v in values[7 * 40:])
    assert all(b >= a for a, b in zip(values, values[1:]))
    slopes = np.diff(values[80:7 * 40 + 1])
    assert np.max(np.abs(np.diff(slopes))) < 1e-3  # smooth: no kink where the polynomial meets the line
    assert s.progress(80) == 0 and s.progress(7 * 40) == 1


def test_unsupported_layers_are_refused_by_name():
    with pytest.raises(CertifyError, match="Sigmoid"):
        BoundModel(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()), (3,))
    with pytest.raises(CertifyError, match="MaxPool2d"):
        BoundModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), (1, 6, 6))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(CertifyError, match="traceable"):
        BoundModel(Branchy(), (3,))


def _digits(n=300):
    from certify.examples.digits import load_digits_split

    xtr, ytr, xte, yte = load_digits_split()
    return xtr[:n], ytr[:n], xte[:60], yte[:60]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_and_is_reproducible(loss):
    x, y, _, _ = _digits(200)
    opts = TrainOptions(loss=loss, eps=0.05 if loss not in ("ce", "noise") else 0.0, epochs=2, batch_size=64,
                        noise_sigma=0.2 if loss == "noise" else 0.0, ramp_epochs=1, seed=3)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        net = CNN3((1, 8, 8), mean=0.3, std=0.38)
        hist = train(net, x, y, (1, 8, 8), opts)
        assert len(hist) == 2 and all(math.isfinite(h.loss) for h in hist)
        states.append(net.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_resumed_run_ends_where_an_uninterrupted_run_ends():
    x, y, _, _ = _digits(200)
    opts = TrainOptions(loss="ibp", eps=0.05, epochs=3, batch_size=64, ramp_epochs=1, seed=5)
    torch.manual_seed(0)
    full = CNN3((1, 8, 8))
    train(full, x, y, (1, 8, 8), opts)

    saved = {}

    class Stop(Exception):
        pass

    def save(history, state):
        saved["state"], saved["weights"] = copy.deepcopy(state), copy.deepcopy(part.state_dict())
        if len(history) == 2:
            raise Stop

    torch.manual_seed(0)
    part = CNN3((1, 8, 8))
    with pytest.raises(Stop):
        train(part, x, y, (1, 8, 8), opts, save=save)
    resumed = CNN3((1, 8, 8))
    resumed.load_state_dict(saved["weights"])
    hist = train(resumed, x, y, (1, 8, 8), opts, resume=saved["state"])
    assert [h.epoch for h in hist] == [1, 2, 3]
    for k, v in full.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k


def test_evaluation_agrees_with_sampling_and_with_the_sound_backends():
    """The per-epoch certified accuracy is a lower bound of the attack accuracy, and both of clean accuracy."""
    torch.manual_seed(0)
    x, y, xt, yt = _digits(300)
    net = CNN3((1, 8, 8), mean=0.3, std=0.38)
    train(net, x, y, (1, 8, 8), TrainOptions(loss="ibp", eps=0.02, epochs=3, ramp_epochs=1, batch_size=64))
    out = evaluate(net, EvalSet(xt, yt, 0.02, ("ibp", "crown")), (1, 8, 8))
    assert out["ibp"] <= out["pgd"] <= out["clean"] and out["crown"] <= out["pgd"]
    assert out["clean"] > 0.5


@pytest.mark.parametrize("seed", range(4))
def test_fused_crown_ibp_loss_bounds_the_worst_sampled_loss_and_never_exceeds_ibps(seed):
    gen = torch.Generator().manual_seed(seed)
    for net in _nets(seed):
        net.eval()
        x = torch.rand(6, *net.input_shape, generator=gen)
        K = net.body[-1].out_features
        y = torch.randint(0, K, (6,), generator=gen)
        box = _box(x, 0.04)
        graph, _ = BoundModel(net, net.input_shape)(x)
        with torch.no_grad():
            lower, upper = ibp_margin_bounds(graph, box, y)
            fused = fused_crown_ibp_loss(graph, box, y, lower, upper)
            ibp_loss = torch.nn.functional.cross_entropy(-lower, y, reduction="none")
            pts = _samples(box, 300, gen)
            logits = net(pts.flatten(0, 1)).reshape(300, 6, K)
            sampled = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(300), reduction="none")
        worst = sampled.reshape(300, 6).max(0).values
        assert (fused >= worst - 1e-4).all(), (fused, worst)
        assert (fused <= ibp_loss + 1e-4).all()
        assert (lower <= upper).all()


def test_fused_loss_gradient_matches_finite_differences():
    torch.manual_seed(3)
    net = MLP((5,), n_classes=4, hidden=(6,)).double().train()
    x = torch.rand(5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    box = _box(x, 0.1)

    def fused(graph, logits):
        return fused_crown_ibp_loss(graph, box, y, *ibp_margin_bounds(graph, box, y))

    assert _gradcheck(net, x, fused)


def test_one_pass_interval_batchnorm_after_a_relu_takes_the_centres_statistics():
    """A BatchNorm that does not follow an affine layer (here after a ReLU) also draws its statistics from the
    centres of its input boxes, and the boxes equal the engine's on the graph returned."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3)).train()
    ref = copy.deepcopy(net)
    x = torch.rand(10, 6)
    box = _box(x, 0.1)
    graph, boxes = BoundModel(net, (6,)).interval(box)
    out = interval_bounds(graph, box, all_nodes=True)
    for name, b in boxes.items():
        assert torch.allclose(b.lower, out[name].lower, atol=1e-5) and torch.allclose(b.upper, out[name].upper, atol=1e-5)
    with torch.no_grad():
        h = out[graph.nodes[1].output]  # the ReLU's output box
        ref[2]((h.lower + h.upper) / 2)
    assert torch.allclose(net[2].running_mean, ref[2].running_mean, atol=1e-6)
    assert torch.allclose(net[2].running_var, ref[2].running_var, atol=1e-6)


def test_kappa_schedule_runs_from_kappa_start_to_kappa():
    opts = TrainOptions(loss="ibp", eps=0.1, kappa_start=1.0, kappa=0.5)
    kappas = [Step(None, None, None, None, 0.1, p, opts, None).kappa for p in (0.0, 0.5, 1.0)]
    assert kappas == pytest.approx([1.0, 0.75, 0.5])
    assert Step(None, None, None, None, 0.1, 0.3, TrainOptions(loss="ibp", eps=0.1), None).kappa == 0.0


def test_warmup_regulariser_is_the_published_formula():
    """The dot-product form against the definitions written out plainly (Shi et al. 2021, section 3.2)."""
    from certify.training.regularisers import warmup_regulariser

    gen = torch.Generator().manual_seed(7)
    tol = 0.5
    box_in = Box(torch.zeros(8, 3, dtype=torch.float64), torch.full((8, 3), 0.2, dtype=torch.float64))
    boxes = []
    for shape in ((8, 4, 3, 3), (8, 6)):
        c = torch.randn(shape, generator=gen, dtype=torch.float64)
        r = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.6
        boxes.append(Box(c - r, c + r))
    want = 0.0
    r0 = ((box_in.upper - box_in.lower) / 2).mean()
    for b in boxes:
        c, r = (b.upper + b.lower) / 2, (b.upper - b.lower) / 2
        want += max(0.0, tol - float(r0 / r.mean())) / tol
        act, inact = c[b.lower > 0], c[b.upper < 0]
        rho_mean = float(act.sum() / c.numel()) / -float(inact.sum() / c.numel())
        dev = (c - c.mean()) ** 2
        rho_var = float(dev[b.lower > 0].sum() / dev[b.upper < 0].sum())
        rho_mean, rho_var = min(rho_mean, 1 / rho_mean), min(rho_var, 1 / rho_var)
        want += (max(0.0, tol - rho_mean) + max(0.0, tol - rho_var)) / tol
    got = warmup_regulariser(box_in, boxes, tol)
    assert float(got) == pytest.approx(want / len(boxes), rel=1e-12)
