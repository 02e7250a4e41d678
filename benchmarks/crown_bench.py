"""Bound tightness and time of IBP, CROWN and alpha-CROWN, as ratios to a plain forward pass in the
same run (and to auto_LiRPA's CROWN when it is importable).

    python benchmarks/crown_bench.py [--threads 1] [--alpha-iterations 20]

Models: the MNIST-FC networks and an ACAS Xu network from ../shared/benchmarks (properties from their
VNN-LIB files: MNIST robustness at L-inf 0.03 clipped to [0, 1], 9 rows; ACAS Xu property 3), and two
convolutional networks built here with fixed random weights (the CROWN-IBP papers' 4-layer CNN on 1x28x28
and a smaller one on 1x8x8, L-inf 0.005 / 0.02 around random images). For each: median time of the
float32 forward pass, of fast IBP and fast CROWN (float32, unrounded), of sound CROWN (float64, rounding
accounted for: what a verdict uses) and of alpha-CROWN (optimisation + sound re-certification), at
batch 1 and batch 64 (CNNs: batch 1); and the mean certified lower bound over the rows (higher is tighter).
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import torch
from torch import nn

from certify.engine import FAST, certify_margin, interval_bounds, sound_interval_bounds
from certify.engine.alpha import AlphaOptions, alpha_crown_lower
from certify.engine.crown import crown_lower, sound_crown_lower
from certify.models import from_module, load_model
from certify.sets import Box
from certify.vnnlib import read_vnnlib

from common import markdown, shared, timeit


def _mnist_batch(root, batch: int):
    specs = [read_vnnlib(root / "vnnlib" / f"prop_{i}_0.03.vnnlib").specs[0] for i in range(15)]
    pick = [specs[i % 15] for i in range(batch)]
    lo = torch.cat([s.input.bounds().lower for s in pick])
    hi = torch.cat([s.input.bounds().upper for s in pick])
    C = torch.cat([s.matrix()[0] for s in pick])
    d = torch.cat([s.matrix()[1] for s in pick])
    return Box(lo, hi), C, d


def _acas_batch(root, batch: int):
    spec = read_vnnlib(root / "vnnlib" / "prop_3.vnnlib").specs[0]
    C, d, _ = spec.matrix()
    box = spec.input.bounds()
    return Box(box.lower.expand(batch, -1), box.upper.expand(batch, -1)), C.expand(batch, -1, -1), d.expand(batch, -1)


def _cnn(kind: str):
    torch.manual_seed(0)
    if kind == "cnn_4layer (1x28x28)":
        net = nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
        return from_module(net.eval(), (1, 28, 28)), 0.005
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
    return from_module(net.eval(), (1, 8, 8)), 0.02


def _cnn_batch(model, eps: float, batch: int):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *model.input_shape, generator=g, dtype=torch.float64)
    labels = model.graph.forward(x).argmax(1)
    C = torch.zeros(batch, 9, 10, dtype=torch.float64)
    for b in range(batch):
        others = [j for j in range(10) if j != int(labels[b])]
        C[b, torch.arange(9), int(labels[b])] = 1.0
        C[b, torch.arange(9), others] = -1.0
    return Box((x - eps).clamp(0, 1), (x + eps).clamp(0, 1)), C, torch.zeros(batch, 9, dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--alpha-iterations", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    alpha_opts = AlphaOptions(iterations=args.alpha_iterations)
    mnist, acas = shared("mnist_fc"), shared("acasxu")
    cases = [(f"mnist-net_256x{k}", load_model(mnist / "onnx" / f"mnist-net_256x{k}.onnx"), lambda b: _mnist_batch(mnist, b))
             for k in (2, 4, 6)]
    cases.append(("ACASXU_1_1 prop_3", load_model(acas / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"),
                  lambda b: _acas_batch(acas, b)))
    for kind in ("cnn_4layer (1x28x28)", "cnn_small (1x8x8)"):
        model, eps = _cnn(kind)
        cases.append((kind, model, lambda b, m=model, e=eps: _cnn_batch(m, e, b)))
    time_rows, tight_rows = [], []
    lirpa = importlib.util.find_spec("auto_LiRPA") is not None
    for name, model, make in cases:
        for batch in ((1, 64) if not name.startswith("cnn") else (1,)):  # CNNs: intermediate rows are many
            box, C, d = make(batch)
            box = box.reshape(model.input_shape)
            g32 = model.graph.to(dtype=torch.float32)
            b32 = box.to(dtype=torch.float32)
            x32 = b32.center
            with torch.no_grad():
                t_fwd = timeit(lambda: g32.forward(x32), 20)
                t_ibp = timeit(lambda: interval_bounds(g32, b32, FAST), 20)
                t_crown = timeit(lambda: crown_lower(g32, b32, C.float(), d.float(), FAST), args.repeat)
            t_sound = timeit(lambda: sound_crown_lower(model.graph, box, C, d), args.repeat, warmup=1)
            alpha = alpha_crown_lower(model.graph, box, C, d, alpha_opts)  # also the warm-up of its timing
            t_alpha = timeit(lambda: alpha_crown_lower(model.graph, box, C, d, alpha_opts), 3 if batch == 1 else 1,
                             warmup=0)
            crown = sound_crown_lower(model.graph, box, C, d)
            ibp = certify_margin(C, d, sound_interval_bounds(model.graph, box))
            peer, ratio, peer_bound, peer_rows = "-", "-", "-", "-"
            if lirpa:
                try:
                    t_peer, lb_peer = _lirpa(model, b32, C, d, args.repeat)
                    peer, ratio = f"{t_peer * 1e3:.1f}", f"{t_sound / t_peer:.2f}"
                    peer_bound, peer_rows = f"{lb_peer.mean():.4g}", int((lb_peer > 0).sum())
                except Exception as exc:  # the peer fails on some inputs: say so in the table, keep going
                    peer = f"failed ({type(exc).__name__})"
            time_rows.append([name, batch, f"{t_fwd * 1e3:.3f}", f"{t_ibp / t_fwd:.2f}", f"{t_crown * 1e3:.1f}",
                              f"{t_sound * 1e3:.1f}", f"{t_alpha * 1e3:.0f}", f"{t_sound / t_fwd:.0f}", peer, ratio])
            if batch == 1:
                tight_rows.append([name, f"{ibp.mean():.4g}", f"{crown.mean():.4g}", f"{alpha.mean():.4g}", peer_bound,
                                   int((ibp > 0).sum()), int((crown > 0).sum()), int((alpha > 0).sum()), peer_rows,
                                   C.shape[1]])
    print(markdown(time_rows, ["model", "batch", "forward ms", "IBP/fwd", "CROWN fp32 ms", "CROWN sound ms",
                               f"alpha-CROWN ({args.alpha_iterations} it) ms", "CROWN sound/fwd", "auto_LiRPA CROWN ms",
                               "CROWN sound / auto_LiRPA"]))
    print()
    print(markdown(tight_rows, ["model (batch 1)", "IBP mean bound", "CROWN mean bound", "alpha-CROWN mean bound",
                                "auto_LiRPA CROWN mean bound", "rows > 0 IBP", "rows > 0 CROWN", "rows > 0 alpha",
                                "rows > 0 auto_LiRPA", "rows"]))


def _lirpa(model, box, C, d, repeat):
    """auto_LiRPA's CROWN on the same graph and inputs: (median seconds, lower bounds of C f(x) - d)."""
    from verifiers.lirpa import bounded_box

    bm, bt = bounded_box(model.graph, box)
    C32 = C.float().contiguous()
    run = lambda: bm.compute_bounds(x=(bt,), C=C32, method="CROWN", bound_upper=False)  # noqa: E731
    t = timeit(run, repeat, warmup=1)
    return t, run()[0].detach().double() - d


if __name__ == "__main__":
    main()
