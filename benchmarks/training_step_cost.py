"""The cost of one certified-training step against a plain (``ce``) step, per loss and per phase, and the
parts that explain it.

    python benchmarks/training_step_cost.py                 # CNN3 on 1x28x28, batch 128, one thread
    python benchmarks/training_step_cost.py --arch mlp --rounds 5

A step is what ``certify.training.train`` runs per batch: the loss, ``zero_grad``, ``backward``, gradient
clipping and the Adam step, on the same module, batch and optimiser. Phases: *warm-up* (eps 0, regularisers
on), *ramp* (eps at half the target, progress 0.5: regularisers, CROWN-IBP's CROWN pass with weight 0.5),
*settled* (eps at the target: the epochs after the ramp). Each loss is timed in every round, rounds
interleaved, and the minimum over rounds of the mean step is kept (the machine's noise only adds time).
The parts: the IBP pass alone (forward and backward), the FGSM step of sabr / cc-ibp / mtl-ibp, the warm-up
regulariser, and one CROWN-IBP backward pass with K - 1 rows or one fused row.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

PHASES = {"warm-up": 0.0, "ramp": 0.5, "settled": 1.0}
LOSSES = ("ce", "ibp", "crown-ibp", "crown-ibp+lf", "sabr", "cc-ibp", "mtl-ibp", "pgd")


def mean_ms(fn, n: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cnn3")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=20, help="steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--losses", default=",".join(LOSSES))
    args = p.parse_args()
    torch.set_num_threads(1)
    from certify.models import _import_arch
    from certify.sets import Box
    from certify.training.arch import ARCHS
    from certify.training.attack import pgd_ce
    from certify.training.bounds import BoundModel, crown_ibp_margins, fused_crown_ibp_loss, ibp_margin_bounds
    from certify.training.loop import keep_freed_memory
    from certify.training.losses import LOSSES as FNS, Step
    from certify.training.options import TrainOptions
    from certify.training.regularisers import warmup_regulariser

    keep_freed_memory()
    torch.manual_seed(0)
    shape = (1, 28, 28)
    net = _import_arch(ARCHS[args.arch], {"input_shape": list(shape), "n_classes": 10, "mean": 0.3, "std": 0.35})
    net.train()
    x = torch.rand(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    bound = BoundModel(net, shape)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    gen = torch.Generator().manual_seed(0)

    def step_fn(loss: str, progress: float):
        name, fusion = loss.removesuffix("+lf"), loss.endswith("+lf")
        o = TrainOptions(loss=name, eps=args.eps if name != "ce" else 0.0, loss_fusion=fusion)
        eps = args.eps * progress

        def run():
            value, _ = FNS[name](Step(net, bound, x, y, eps if name != "ce" else 0.0, progress, o, gen))
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
        return run

    box = Box((x - args.eps).clamp(0, 1), (x + args.eps).clamp(0, 1))

    def ibp_pass(relus=None, boxes=None):
        graph, env = bound.interval(box, last=False)
        lo, hi = ibp_margin_bounds(graph, box, y, relus, boxes, env=env)
        return graph, lo, hi

    def part_ibp():
        F.cross_entropy(-ibp_pass()[1], y).backward()

    def part_reg():
        relus: list = []
        _, lo, _ = ibp_pass(relus)
        (F.cross_entropy(-lo, y) + warmup_regulariser(box, relus)).backward()

    def part_crown(fusion: bool):
        def run():
            boxes: dict = {}
            graph, lo, hi = ibp_pass(None, boxes)
            if fusion:
                fused_crown_ibp_loss(graph, box, y, lo, hi, boxes).mean().backward()
            else:
                F.cross_entropy(-crown_ibp_margins(graph, box, y, boxes), y).backward()
        return run

    def part_attack():
        pgd_ce(net, x, y, args.eps, 1, 1.25 * args.eps, (0.0, 1.0), gen)

    losses = args.losses.split(",")
    cells = {(loss, ph): step_fn(loss, pr) for loss in losses for ph, pr in PHASES.items()
             if not (loss in ("ce", "pgd") and ph != "settled")}
    parts = {"IBP pass (fwd + bwd)": part_ibp, "IBP pass + regulariser": part_reg,
             "IBP + CROWN-IBP, K - 1 rows": part_crown(False), "IBP + CROWN-IBP, one fused row": part_crown(True),
             "FGSM step (sabr, cc-ibp, mtl-ibp)": part_attack}
    best: dict = {}
    for r in range(args.rounds):
        for key, fn in list(cells.items()) + list(parts.items()):
            v = mean_ms(fn, args.steps)
            best[key] = min(best.get(key, v), v)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    ce = best[("ce", "settled")]
    print(f"\n{args.arch}, batch {args.batch}, eps {args.eps}, one thread; ce step {ce:.2f} ms\n")
    print("| loss | warm-up ms (x ce) | ramp ms (x ce) | settled ms (x ce) |\n|---|---|---|---|")
    for loss in losses:
        row = [f"{best[(loss, ph)]:.2f} ({best[(loss, ph)] / ce:.2f}x)" if (loss, ph) in best else "-" for ph in PHASES]
        print(f"| {loss} | " + " | ".join(row) + " |")
    print("\n| part | ms | x ce step |\n|---|---|---|")
    for key in parts:
        print(f"| {key} | {best[key]:.2f} | {best[key] / ce:.2f} |")


if __name__ == "__main__":
    main()
