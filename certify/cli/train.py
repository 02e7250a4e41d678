"""``certify train``: plain, noise, adversarial and certified training (IBP, CROWN-IBP, SABR, CC-IBP,
MTL-IBP) of a built-in or user architecture, writing a checkpoint ``certify verify`` reads as it is."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from ..errors import CertifyError, UsageError
from .common import THREADS_HELP

TRAIN_EXAMPLES = """examples:
  certify train --data fashion-mnist:train --loss ibp --eps 0.1 --epochs 20 --out ibp.pt
  certify train --data mnist5k:train --arch cnn5 --loss sabr --eps 0.3 --epochs 40 --plot sabr.png --out sabr.pt
  certify train --data digits:train --loss cc-ibp --alpha 0.5 --eps 0.1 --out cc.pt --json
  certify train --data digits:train --arch certify.examples.digits:DigitsMLP --noise-sigma 0.25 --out m025.pt
  certify train --data train.npz --arch mypkg.nets:Net --input-shape 1,28,28 --loss pgd --eps 0.1 --out net.pt
  certify train ... --out ibp.pt --resume        # continue an interrupted run from its last epoch

then certify it (eps, norm and clip as trained):
  certify verify ibp.pt --data fashion-mnist:test --eps 0.1 --clip 0,1 --limit 1000 --method ibp,crown,auto

losses (eps in [0, 1] pixel units; the data set's normalisation is part of the model):
  ce         cross-entropy                       noise      on x + N(0, S^2 I) (--noise-sigma S)
  pgd        PGD adversarial training (Madry et al. 2018, --pgd-steps)
  ibp        IBP worst-case logits (Gowal et al. 2018), mixed with ce by kappa --kappa-start -> --kappa
  crown-ibp  CROWN-IBP (Zhang et al. 2020): CROWN over IBP boxes, weight beta 1 -> 0 over the ramp
  sabr       IBP over a box of radius --sabr-lambda * eps around an attack point (Mueller et al. 2023)
  cc-ibp     CE of (1 - alpha) attack margins + alpha IBP margins (De Palma et al. 2024)
  mtl-ibp    (1 - alpha) CE at the attack point + alpha CE of the IBP worst case (De Palma et al. 2024)
certified losses follow Shi et al. 2021: IBP initialisation, --warmup-epochs at eps 0, a smooth eps ramp over
--ramp-epochs, tightness and ReLU-balance regularisers during the ramp, BatchNorm with batch statistics
(of the box centres, the clean batch at eps 0) inside the bounds, gradient clipping. Each epoch reports
clean, PGD and certified (sound IBP / CROWN) accuracy on the first --eval-size test examples.
"""


def add_parsers(sub) -> None:
    tr = sub.add_parser("train", help="train a classifier: plain, noise, adversarial or certified (IBP, CROWN-IBP, SABR, ...)",
                        description="Train a classifier with a plain or certified loss through the engine's own bounds; "
                                    "writes a self-describing checkpoint that 'certify verify' reads as it is.",
                        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--data", required=True, metavar="SET",
                    help="training data: digits:train, mnist5k:train, fashion-mnist:train, or .npz/.pt with x and y")
    tr.add_argument("--test", metavar="SET", help="held-out data (default: the built-in set's :test split)")
    tr.add_argument("--out", required=True, metavar="FILE.pt", help="checkpoint to write (after every epoch)")
    tr.add_argument("--onnx", metavar="FILE.onnx", help="also export ONNX at the end")
    a = tr.add_argument_group("model")
    a.add_argument("--arch", metavar="NAME", help="mlp, cnn3, cnn5 (built in, with BatchNorm; default cnn3 for "
                                                  "images, mlp otherwise) or MODULE:CLASS")
    a.add_argument("--arch-kwargs", default="{}", metavar="JSON", help='constructor arguments, e.g. \'{"width": 2}\'')
    a.add_argument("--input-shape", metavar="D1,D2,...", help="input shape without batch (default: the data's)")
    lo = tr.add_argument_group("loss")
    lo.add_argument("--loss", help="ce, noise, pgd, ibp, crown-ibp, sabr, cc-ibp, mtl-ibp (default ce, or noise "
                                   "with --noise-sigma)")
    lo.add_argument("--eps", type=float, default=0.0, help="L-inf training radius in pixel units, e.g. 0.1")
    lo.add_argument("--clip", default="0,1", metavar="LO,HI", help="input domain the eps-ball is cut to (default 0,1)")
    lo.add_argument("--noise-sigma", type=float, default=0.0, metavar="S", help="Gaussian augmentation (loss noise)")
    lo.add_argument("--kappa", type=float, default=0.0,
                    help="ibp/crown-ibp: weight of the clean loss at the end of the ramp (default 0 as Shi et al.; "
                         "Gowal et al. used 0.5)")
    lo.add_argument("--kappa-start", type=float, default=0.0,
                    help="ibp/crown-ibp: weight of the clean loss at the start of the ramp (default 0: Shi et al. train "
                         "on the robust loss alone; Gowal et al. start at 1)")
    lo.add_argument("--sabr-lambda", type=float, default=0.4, help="sabr: box radius as a fraction of eps (default 0.4, "
                                                                   "the paper's MNIST 0.1 setting)")
    lo.add_argument("--alpha", type=float, default=0.5, help="cc-ibp/mtl-ibp: weight of the IBP part (default 0.5; "
                                                            "the paper tunes it per data set and eps)")
    lo.add_argument("--loss-fusion", action="store_true",
                    help="crown-ibp: bound the loss itself with one CROWN row (Xu et al. 2020) instead of the K - 1 "
                         "margins: about 3x cheaper per ramp epoch, but here barely tighter than IBP's loss")
    lo.add_argument("--pgd-steps", type=int, default=10, help="pgd: attack steps per batch (default 10)")
    lo.add_argument("--attack-steps", type=int, default=1,
                    help="sabr/cc-ibp/mtl-ibp: attack steps (default 1: FGSM with random start)")
    r = tr.add_argument_group("recipe (Shi et al. 2021)")
    r.add_argument("--warmup-epochs", type=int, default=1, help="epochs at eps 0 first (default 1)")
    r.add_argument("--ramp-epochs", type=int, help="epochs of the eps ramp (default 10, at most half the rest)")
    r.add_argument("--reg-lambda", type=float, default=0.5, help="weight of the warm-up regularisers (0 disables)")
    r.add_argument("--reg-tol", type=float, default=0.5, help="their tolerance tau (default 0.5)")
    r.add_argument("--no-ibp-init", action="store_true", help="keep PyTorch's initialisation")
    o = tr.add_argument_group("optimiser")
    o.add_argument("--epochs", type=int, default=20)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--lr", type=float, help="Adam learning rate (default 5e-4 for certified losses as Shi et al., 1e-3 otherwise)")
    o.add_argument("--lr-decay", type=float, default=0.2, help="factor at 75%% and 90%% of the epochs (default 0.2)")
    o.add_argument("--grad-clip", type=float, default=10.0, help="gradient norm clip (default 10)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="cpu")
    o.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    ev = tr.add_argument_group("evaluation and output")
    ev.add_argument("--eval-size", type=int, default=500, help="test examples evaluated after each epoch (0: none)")
    ev.add_argument("--eval-methods", default="ibp,crown", help="sound backends for the per-epoch certified accuracy")
    ev.add_argument("--resume", action="store_true", help="continue from --out if it holds an unfinished run")
    ev.add_argument("--plot", metavar="PNG", help="write accuracy and eps curves over the epochs")
    ev.add_argument("--json", action="store_true", help="one JSON object per epoch on stdout, then a summary")
    ev.add_argument("--quiet", action="store_true", help="no progress and no per-epoch lines on stderr")
    ev.add_argument("--debug", action="store_true", help="show tracebacks")


def _arch(args, data: str, x, n_classes: int, shape_arg) -> tuple[str, dict, tuple[int, ...]]:
    from ..data import image_shape
    from ..training.arch import ARCHS

    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--arch-kwargs: not JSON ({exc.msg} at column {exc.colno}): {args.arch_kwargs!r}") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--arch-kwargs: expected a JSON object such as '{{\"width\": 2}}', got {args.arch_kwargs!r}")
    image = image_shape(data)
    name = args.arch or ("cnn3" if len(shape_arg or image or x.shape[1:]) == 3 else "mlp")
    # built-in networks see images as images; a user's class gets the rows as the data file holds them
    shape = shape_arg or (image if name in ARCHS else None) or tuple(x.shape[1:])
    if math.prod(shape) != x[0].size:
        raise UsageError(f"--input-shape {list(shape)} has {math.prod(shape)} values but each example of "
                           f"{data} has {x[0].size}")
    if name in ARCHS:  # built in: input shape, classes and the data's normalisation are part of the model
        defaults = {"input_shape": list(shape), "n_classes": n_classes, "mean": float(x.mean()),
                    "std": float(x.std()) or 1.0}
        return ARCHS[name], {**defaults, **kwargs}, shape
    if ":" not in name:
        raise UsageError(f"--arch: expected one of {', '.join(ARCHS)} or MODULE:CLASS, got {name!r}")
    return name, kwargs, shape


def cmd_train(args) -> int:
    import torch

    from .common import (ExitCode, Progress, apply_threads, check_device, check_output_paths, parse_clip, parse_shape,
                         table)
    from ..data import BUILTIN, load_labelled
    from ..models import _import_arch
    from ..training import EvalSet, TrainOptions, export_onnx, load_checkpoint, save_checkpoint, train

    check_output_paths(("--out", args.out), ("--onnx", args.onnx), ("--plot", args.plot))
    check_device(args.device)
    apply_threads(args.threads)
    loss = args.loss or ("noise" if args.noise_sigma > 0 else "ce")
    options = TrainOptions(loss=loss, eps=args.eps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           lr_decay=args.lr_decay, grad_clip=args.grad_clip, warmup_epochs=args.warmup_epochs,
                           ramp_epochs=args.ramp_epochs, kappa=args.kappa, kappa_start=args.kappa_start,
                           sabr_lambda=args.sabr_lambda,
                           alpha=args.alpha, loss_fusion=args.loss_fusion, pgd_steps=args.pgd_steps, attack_steps=args.attack_steps,
                           noise_sigma=args.noise_sigma, reg_lambda=args.reg_lambda, reg_tol=args.reg_tol,
                           ibp_init=not args.no_ibp_init, clip=parse_clip(args.clip), seed=args.seed, device=args.device)
    methods = tuple(m.strip() for m in args.eval_methods.split(",") if m.strip())
    for m in methods:
        if m not in ("ibp", "crown"):
            raise UsageError(f"--eval-methods: expected ibp and/or crown, got {m!r}")
    x, y = load_labelled(args.data)
    arch, arch_kwargs, shape = _arch(args, args.data, x, int(y.max()) + 1, parse_shape(args.input_shape))
    test = args.test
    if test is None and args.data in BUILTIN and args.data.endswith(":train"):
        test = args.data.replace(":train", ":test")
    evaluation = None
    if test:
        xt, yt = load_labelled(test)
        if args.eval_size > 0:
            evaluation = EvalSet(xt[:args.eval_size], yt[:args.eval_size], args.eps, methods)

    resume = None
    torch.manual_seed(options.seed)  # the initial weights too: runs are reproducible on the CPU
    module = _import_arch(arch, arch_kwargs)
    if args.resume and Path(args.out).exists():
        ckpt = load_checkpoint(args.out)
        if ckpt.get("arch") != arch or ckpt.get("resume") is None:
            raise CertifyError(f"--resume: {args.out} is not an unfinished run of {arch}")
        module.load_state_dict(ckpt["state_dict"])
        resume = ckpt["resume"]
        if len(resume["history"]) >= options.epochs:
            raise CertifyError(f"--resume: {args.out} already finished its {len(resume['history'])} epochs")

    done_before = len(resume["history"]) if resume else 0
    progress = Progress((options.epochs - done_before) * math.ceil(len(y) / options.batch_size), "batches",
                        enabled=not args.quiet, label="certify train")
    t_start = time.perf_counter()

    def on_batch(i: int, n: int, eps: float) -> None:
        progress.step(f"eps={eps:.4g}")

    def on_epoch(s) -> None:
        if args.json:
            print(json.dumps({"epoch": s.to_dict()}), flush=True)
        elif not args.quiet:
            ev = " ".join(f"{k}={v:.3f}" for k, v in s.eval.items())
            print(f"epoch {s.epoch}/{options.epochs}  eps={s.eps:.4g}  loss={s.loss:.4f}  train_acc={s.train_acc:.3f}  "
                  f"{ev}  {s.time_s:.1f}s", file=sys.stderr, flush=True)

    def save(history, state) -> None:
        save_checkpoint(module, args.out, arch, arch_kwargs, shape, options, _info(history), resume=state)

    try:
        history = train(module, x, y, shape, options, evaluation=evaluation, on_epoch=on_epoch, on_batch=on_batch,
                        resume=resume, save=save)
    except RuntimeError as exc:  # shape errors inside the user's module
        first = str(exc).strip().splitlines()[0][:300]
        raise CertifyError(f"{arch} on inputs of shape {list(shape)}: {first}") from None
    finally:
        progress.close()
    module.cpu()
    info = _info(history)
    info["time_s"] = round(time.perf_counter() - t_start, 3)
    if test:
        from ..training import accuracy

        info["test_accuracy"] = accuracy(module, xt, yt, shape)
        if options.noise_sigma > 0:
            info["test_accuracy_under_noise"] = accuracy(module, xt, yt, shape, options.noise_sigma, options.seed)
    save_checkpoint(module, args.out, arch, arch_kwargs, shape, options, info)  # finished: no resume state
    if args.onnx:
        export_onnx(module, args.onnx, shape)
    if args.plot:
        from ..training.plot import plot_history

        plot_history(history, args.plot, f"{loss}, eps {options.eps:g}")
    if args.json:
        print(json.dumps({"summary": info, "epochs_resumed": done_before}))
        return ExitCode.PROVED
    if history and history[-1].eval:
        keys = list(history[-1].eval)
        print(table([[str(h.epoch), f"{h.eps:.4g}", f"{h.loss:.4f}"] + [f"{h.eval.get(k, float('nan')):.3f}" for k in keys]
                     + [f"{h.time_s:.1f}"] for h in history], ["epoch", "eps", "loss"] + keys + ["time_s"]))
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
                   if not isinstance(v, (list, dict))))
    print(f"wrote {args.out}" + (f" and {args.onnx}" if args.onnx else "") + (f"; plot {args.plot}" if args.plot else ""))
    if test and options.eps > 0:
        print(f"certify it: certify verify {args.out} --data {test} --eps {options.eps:g} "
              f"--clip {options.clip[0]:g},{options.clip[1]:g} --method ibp,crown,auto")
    return ExitCode.PROVED


def _info(history) -> dict:
    last = history[-1] if history else None
    info = {"epochs_done": len(history), "history": [h.to_dict() for h in history]}
    if last is not None:
        info.update({"train_loss": last.loss, "train_accuracy": last.train_acc,
                     "epoch_time_s": round(sum(h.time_s for h in history) / len(history), 3)})
        info.update({f"eval_{k}": v for k, v in last.eval.items()})
    return info
