"""``certify smooth`` (randomized smoothing over a data set): parser and handler, registered by ``certify.cli``.
Base classifiers for it come from ``certify train --noise-sigma`` (``certify.cli_train``)."""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ..errors import CertifyError
from .common import THREADS_HELP, Usage, add_scale_options, apply_threads, check_backend, close_scale, open_scale

SMOOTH_EXAMPLES = """examples:
  certify smooth model.pt --data digits:test --sigma 0.25                   # Cohen et al.'s defaults
  certify smooth m012.pt m025.pt m050.pt --sigma 0.12 0.25 0.5 --data digits:test --plot curves.png
  certify smooth net.onnx --data test.npz --sigma 0.25 --n 10000 --json    # quicker, JSON lines
  certify smooth model.pt --data digits:test --sigma 0.25 --compare crown   # beside a sound L2 radius
  certify smooth model.pt --data digits:test --sigma 0.25 --workers 2       # 2 local workers, same rows

what it certifies: with probability >= 1 - alpha over the noise, the SMOOTHED classifier g(x) =
argmax_c P(f(x + N(0, sigma^2 I)) = c) predicts the reported class on the whole L2 ball of the
reported radius (Cohen, Rosenfeld and Kolter 2019). It is not a statement about the network f; for
that, use 'certify verify --norm 2' (or --compare here, which adds the largest L2 radius a sound
backend proves for f). 'abstain' is an answer: g's top class could not be told apart at level alpha.

one model and several sigmas: every sigma on that model; several models: one sigma each, in order.
"""

def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise Usage(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise Usage(f"{flag}: expected non-negative numbers, got {text!r}")
    return values


def add_parsers(sub) -> None:
    sm = sub.add_parser("smooth", help="randomized smoothing: probabilistic L2 certificates over a data set",
                        description="Certify a data set with randomized smoothing (Cohen et al. 2019): per-example "
                                    "prediction and certified L2 radius of the smoothed classifier, certified "
                                    "accuracy at radii, optional plot.",
                        epilog=SMOOTH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sm.add_argument("models", nargs="+", metavar="MODEL", help=".onnx or PyTorch checkpoint(s)")
    sm.add_argument("--data", required=True, metavar="FILE",
                    help=".npz with x and y, a .pt holding {'x', 'y'}, or digits:test / digits:train")
    sm.add_argument("--sigma", type=float, nargs="+", required=True, metavar="S", help="Gaussian noise level(s)")
    sm.add_argument("--n0", type=int, default=100, help="selection samples (default 100)")
    sm.add_argument("--n", type=int, default=100_000, help="estimation samples (default 100000)")
    sm.add_argument("--alpha", type=float, default=0.001, help="failure probability per example (default 0.001)")
    sm.add_argument("--batch", type=int, default=10_000, help="noisy copies per forward pass (default 10000)")
    sm.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0); runs are reproducible")
    sm.add_argument("--radii", default="0,0.25,0.5,0.75,1,1.5,2", metavar="R1,R2,...",
                    help="radii for the certified-accuracy table (default 0,0.25,0.5,0.75,1,1.5,2)")
    sm.add_argument("--limit", type=int, metavar="N", help="only the first N examples")
    sm.add_argument("--compare", metavar="METHOD",
                    help="also find the largest L2 radius METHOD (e.g. crown, alpha-crown) proves for the base network")
    sm.add_argument("--device", default="cpu", help="torch device for sampling, e.g. cpu or cuda")
    sm.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    sm.add_argument("--arch", metavar="MODULE:CLASS", help="architecture class for state-dict checkpoints")
    sm.add_argument("--input-shape", metavar="D1,D2,...", help="input shape without batch, when the file does not say")
    out = sm.add_argument_group("output")
    out.add_argument("--plot", metavar="PNG", help="write certified accuracy against radius (all models/sigmas)")
    out.add_argument("--csv", metavar="FILE", help="write the per-example rows as CSV")
    out.add_argument("--json", action="store_true", help="one JSON object per example on stdout, then a summary")
    out.add_argument("--quiet", action="store_true", help="no per-example table and no progress, only the summary")
    out.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    add_scale_options(sm, "example and sigma")


def _pairs(models: list[str], sigmas: list[float]) -> list[tuple[str, float]]:
    for s in sigmas:
        if not (math.isfinite(s) and s > 0):
            raise Usage(f"--sigma: expected positive numbers, got {s:g}")
    if len(models) == 1:
        return [(models[0], s) for s in sigmas]
    if len(models) == len(sigmas):
        return list(zip(models, sigmas))
    raise Usage(f"{len(models)} models and {len(sigmas)} sigmas: give one model with any number of sigmas, "
                       "or one sigma per model")


def _smooth_task(shared: dict, payload: tuple) -> dict:
    """One example under one (model, sigma), where a worker runs it: its own noise stream, so the row does
    not depend on the worker or the order; with ``--compare``, the largest L2 radius proved for the network."""
    import dataclasses

    from ..scale.worker import memo, model_of
    from ..smooth_report import certify_example, largest_proved_radius
    from ..smoothing import Smoothed

    path, sigma, index, x, label = payload
    o = shared["options"]
    model = model_of(shared["models"][path], shared["load"])
    g = memo(("smoothed", path, sigma, o["device"]), lambda: Smoothed.of_model(model, sigma, o["device"]))
    row = certify_example(g, x, label, index, sigma, n0=o["n0"], n=o["n"], alpha=o["alpha"], batch=o["batch"],
                          seed=o["seed"], device=o["device"], name=path)
    if o["compare"]:
        row = dataclasses.replace(row, det_radius=largest_proved_radius(model, x, label, o["compare"],
                                                                        device=o["device"]))
    return dataclasses.asdict(row)


def _smooth_failed(task, failure) -> dict:
    """No certificate: the example is recorded as an abstention (radius 0); the reason went to stderr."""
    import dataclasses

    from ..smooth_report import SmoothRow

    path, sigma, index, _, label = task.payload
    return dataclasses.asdict(SmoothRow(path, float(sigma), index, int(label), None, 0.0, 0.0, False, 0.0))


def cmd_smooth(args) -> int:
    from .common import ExitCode, Progress, check_device, check_output_paths, parse_shape as _parse_shape, table as _table
    from ..data import load_labelled
    from ..errors import ShapeError
    from ..models import load_model
    from ..smooth_report import group_label, plot_curves, summary

    pairs = _pairs(args.models, args.sigma)
    radii = _floats(args.radii, "--radii")
    if args.n0 < 1 or args.n < 1 or args.batch < 1:
        raise Usage(f"--n0, --n and --batch must be positive, got {args.n0}, {args.n}, {args.batch}")
    if not 0 < args.alpha < 1:
        raise Usage(f"--alpha: expected a number in (0, 1), got {args.alpha}")
    check_output_paths(("--plot", args.plot), ("--csv", args.csv))
    check_device(args.device)
    apply_threads(args.threads)
    if args.compare:
        check_backend(args.compare, "--compare")
    x, y = load_labelled(args.data, args.limit)
    models = {}
    for path, _ in pairs:
        if path not in models:
            m = load_model(path, arch=args.arch, input_shape=_parse_shape(args.input_shape))
            if x[0].size != m.n_inputs:
                raise ShapeError(f"{args.data}: input size (data vs model {Path(path).name} with input shape "
                                 f"{list(m.input_shape)})", m.n_inputs, x[0].size)
            if int(y.max()) >= m.n_outputs or int(y.min()) < 0:
                raise CertifyError(f"{args.data}: labels span [{int(y.min())}, {int(y.max())}] but model "
                                   f"{Path(path).name} has {m.n_outputs} outputs")
            models[path] = m

    from ..scale import FileRef, Serial, Task, execute
    from ..smooth_report import SmoothRow

    progress = Progress(len(pairs) * len(y), "examples", enabled=not args.quiet, label="certify smooth")
    header = dict(command="smooth", models=[str(Path(p).resolve()) for p in args.models],
                  model_sha256=[models[p].sha256 for p, _ in pairs], sigma=args.sigma, data=args.data,
                  limit=args.limit, n0=args.n0, n=args.n, alpha=args.alpha, batch=args.batch, seed=args.seed,
                  compare=args.compare)
    executor, journal = open_scale(args, header, progress)
    serial = isinstance(executor, Serial)
    shared = dict(models={p: m if serial else FileRef(p) for p, m in models.items()},
                  load=dict(arch=args.arch, input_shape=_parse_shape(args.input_shape)),
                  options=dict(n0=args.n0, n=args.n, alpha=args.alpha, batch=args.batch, seed=args.seed,
                               device=args.device, compare=args.compare))
    tasks = [Task(k * len(y) + i, f"{k}|{path}|{sigma!r}|{i}",
                  (path, sigma, i, x[i], int(y[i])), None)
             for k, (path, sigma) in enumerate(pairs) for i in range(len(y))]

    def on_row(task, row) -> None:
        r = SmoothRow(**row)
        if args.json:
            print(json.dumps(r.to_dict()), flush=True)
        progress.step("abstain" if r.prediction is None else ("correct" if r.correct else "wrong"),
                      f"sigma={r.sigma:g}")

    t0 = time.perf_counter()
    try:
        rows = [SmoothRow(**row) for row in execute(_smooth_task, shared, tasks, executor, _smooth_failed,
                                                     journal=journal, on_row=on_row, on_event=progress.note)]
    finally:
        progress.close()
        close_scale(executor, journal)
    groups: dict[str, list] = {}
    for k in range(len(pairs)):
        part = rows[k * len(y):(k + 1) * len(y)]
        groups[group_label(part)] = part
    total = time.perf_counter() - t0
    every = [r for rows in groups.values() for r in rows]
    summ = summary(groups, radii, args.alpha)

    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(every[0].to_dict()))
            w.writeheader()
            w.writerows(r.to_dict() for r in every)
    if args.plot:
        plot_curves(groups, args.plot, args.compare)
    if args.json:
        print(json.dumps({"summary": summ, "time_s": round(total, 3)}))
        return ExitCode.PROVED
    if not args.quiet:
        rows = [[Path(r.model).name, f"{r.sigma:g}", r.index, r.label, "abstain" if r.prediction is None else r.prediction,
                 f"{r.radius:.4f}", "yes" if r.correct else "no", f"{r.time_s:.3f}"]
                + ([f"{r.det_radius:.4f}"] if args.compare else []) for r in every]
        print(_table(rows, ["model", "sigma", "index", "label", "prediction", "radius", "correct", "time_s"]
                     + ([f"{args.compare}_radius"] if args.compare else [])))
        print()
    header = ["model", "sigma", "method"] + [f"r={r:g}" for r in radii]
    table = []
    for s in summ:
        table.append([Path(s["model"]).name, f"{s['sigma']:g}", "smoothing"]
                     + [f"{v:.3f}" for v in s["certified_accuracy"].values()])
        if "deterministic_certified_accuracy" in s:
            table.append([Path(s["model"]).name, "-", args.compare]
                         + [f"{v:.3f}" for v in s["deterministic_certified_accuracy"].values()])
    print("certified accuracy (smoothing: probabilistic, about the smoothed classifier g, "
          f"alpha={args.alpha:g} per example" + (f"; {args.compare}: sound, about the base network" if args.compare
                                                 else "") + ")")
    print(_table(table, header))
    print(f"\n{len(every)} certifications in {total:.2f}s" + (f"; plot written to {args.plot}" if args.plot else ""))
    return ExitCode.PROVED
