"""``certify verify``: VNN-LIB properties, or local robustness of labelled inputs (one radius, or an eps sweep
with its accuracy table and plot), with one or several methods."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import time
from fractions import Fraction
from pathlib import Path

from .common import (EXIT_CODES_HELP, MEMORY_HELP, SEMANTICS_HELP, THREADS_HELP, ExitCode, Progress, Usage,
                     add_scale_options, apply_threads, check_backend, check_device, check_memory_limit,
                     check_output_paths, close_scale, open_scale, parse_clip, parse_eps_list, parse_shape,
                     positive_seconds, table, version, write_output)

VERIFY_EXAMPLES = """examples:
  certify verify net.onnx prop.vnnlib                      # one VNN-LIB property, method auto
  certify verify net.onnx specs/*.vnnlib --json            # many properties, JSON lines on stdout
  certify verify net.onnx --data test.npz --eps 0.02 --norm inf --clip 0,1
                                                           # local robustness of labelled inputs
  certify verify model.pt --arch mypkg.nets:MLP --data test.pt --eps 0.1 --norm 2
  certify verify net.onnx --data digits:test --limit 100 --eps 0.01,0.02,0.05,0.1 \\
                 --method crown,alpha-crown,auto --timeout 5 --plot acc.png
                                                           # eps sweep: accuracy table and plot
  certify verify net.onnx prop.vnnlib --vnncomp-result out.txt --timeout 116
  certify verify net.onnx --data mnist5k:test --eps 0.02 --workers 2 --resume run.jsonl
                                                           # 2 local workers; rerun the same to resume

verdicts: proved (sound: holds for every input of the set, floating point included), with its certified lower
bound of the margin; falsified (a counterexample was replayed on onnxruntime / the eager model), with the
counterexample's margin; unknown (with a reason, and the best certified bound when a method computed one).
"""


def add_parsers(sub) -> None:
    v = sub.add_parser("verify", help="verify properties of a model",
                       description="Verify VNN-LIB properties, or local robustness of labelled inputs, on a model.",
                       epilog=VERIFY_EXAMPLES + "\n" + EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("model", help="an .onnx file, or a PyTorch checkpoint (TorchScript, torch.export .pt2, "
                                 "or a state dict with --arch)")
    v.add_argument("specs", nargs="*", metavar="SPEC", help="VNN-LIB files (.vnnlib or .vnnlib.gz)")
    data = v.add_argument_group("robustness of labelled inputs (instead of VNN-LIB files)")
    data.add_argument("--data", metavar="FILE", help=".npz with arrays x and y, a .pt holding {'x': ..., 'y': ...}, "
                                                     "or a built-in set: digits:test, mnist5k:test, fashion-mnist:test")
    data.add_argument("--eps", help="radius of the perturbation ball, read exactly (0.02 is 2/100); several "
                                    "comma-separated radii (0.01,0.02,0.05) make an eps sweep: accuracy per radius")
    data.add_argument("--norm", default="inf", choices=("inf", "2", "1"), help="inf, 2 or 1 (default: inf)")
    data.add_argument("--clip", metavar="LO,HI", help="intersect the ball with the input domain, e.g. 0,1")
    data.add_argument("--limit", type=int, metavar="N", help="only the first N inputs")
    data.add_argument("--plot", metavar="PNG", help="with --data: clean, attack (upper bound) and certified accuracy "
                                                    "against eps, one line per method, as a PNG")
    m = v.add_argument_group("method")
    m.add_argument("--method", default="auto",
                   help="auto (default: PGD attack, then ever tighter sound bounds, then branch-and-bound with milp "
                        "beside it on piecewise-linear networks), one backend, or several "
                        "comma-separated (each runs on every property; see 'certify backends')")
    m.add_argument("--timeout", type=positive_seconds, default=300.0, metavar="S",
                   help="seconds per property and method (default: 300; must be positive)")
    m.add_argument("--device", default="cpu", help="torch device for bound computation, e.g. cpu or cuda")
    m.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    m.add_argument("--no-attack", action="store_true", help="skip the PGD falsifier")
    m.add_argument("--memory-limit", type=float, metavar="MIB", help=MEMORY_HELP)
    m.add_argument("--semantics", choices=("runtime", "real"), default="runtime", help=SEMANTICS_HELP)
    ld = v.add_argument_group("model loading")
    ld.add_argument("--arch", metavar="MODULE:CLASS", help="architecture class for a state-dict checkpoint")
    ld.add_argument("--input-shape", metavar="D1,D2,...", help="input shape without batch, e.g. 1,28,28 "
                                                                "(needed for TorchScript and some state dicts)")
    ld.add_argument("--allow-unsafe-pickle", action="store_true",
                    help="allow loading a pickled nn.Module; this EXECUTES CODE from the file, only for files you trust")
    out = v.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object per property on stdout, then a summary")
    out.add_argument("--out", metavar="FILE", help="write a certificate (JSON: results, sha256 of model and specs)")
    out.add_argument("--vnncomp-result", metavar="FILE",
                     help="write the VNN-COMP result file (sat + counterexample / unsat / timeout / unknown / error)")
    out.add_argument("--quiet", action="store_true", help="no table and no progress, only the summary")
    out.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    add_scale_options(v, "property and method (with --data: per input, radius and method)")


# ----------------------------------------------------------------------------------------------
def _robustness_properties(model, x, y, eps: Fraction, clip: tuple[float, float] | None, args) -> list:
    import torch

    from ..spec import Property, robustness

    stem = Path(args.data).stem
    text = _eps_text(eps)
    props = []
    for i in range(x.shape[0]):
        xi = torch.as_tensor(x[i]).reshape(1, *model.input_shape)
        spec = robustness(xi, [int(y[i])], eps, args.norm, n_classes=model.n_outputs, clip=clip)
        props.append(Property(f"{stem}[{i}] label={int(y[i])} eps={text} norm={args.norm}", (spec,),
                              source=args.data))
    return props


def _eps_text(eps: Fraction) -> str:
    """The radius as the user would write it: a short decimal when it is one, else the fraction."""
    f = float(eps)
    return f"{f:g}" if Fraction(f"{f:g}") == eps else str(eps)


def _methods(text: str) -> list[str]:
    """``--method``: one name, or several comma-separated (each checked before any work)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise Usage(f"--method: expected a backend name or distinct comma-separated names, got {text!r}")
    for m in methods:
        if m != "auto":
            check_backend(m)
    return methods


def _best_answers(per_method: dict, props: list) -> list:
    """Per property, the most informative answer over the methods: a sound proof, else a replayed
    counterexample, else the first method's unknown. A sound proof and a counterexample for the same
    property would mean a bug in a backend: that is an internal error, never a silent pick."""
    from ..results import Guarantee, Verdict

    best = []
    for i, prop in enumerate(props):
        answers = [(m, rs[i]) for m, (rs, _) in per_method.items()]
        proved = [(m, r) for m, r in answers if r.verdict is Verdict.PROVED and r.guarantee is Guarantee.SOUND]
        falsified = [(m, r) for m, r in answers if r.verdict is Verdict.FALSIFIED]
        if proved and falsified:
            raise RuntimeError(f"{prop.name}: {proved[0][0]} proved it but {falsified[0][0]} found a counterexample")
        pick = proved or falsified or [(m, r) for m, r in answers if r.verdict is Verdict.PROVED] or answers
        best.append(pick[0][1])
    return best


def _accuracy_summary(clean: float, n: int, per_method: dict) -> dict:
    """Clean accuracy on the model's own runtime; per method, certified accuracy (sound proofs: a lower bound
    on robust accuracy) and the share not falsified (every falsification is a replayed counterexample: an
    upper bound); ``pgd_upper_bound`` is the tightest of those upper bounds."""
    from ..results import Guarantee, Verdict

    out = {"n": n, "clean": clean, "methods": {}}
    for m, (rs, t) in per_method.items():
        proved = sum(r.verdict is Verdict.PROVED and r.guarantee is Guarantee.SOUND for r in rs)
        falsified = sum(r.verdict is Verdict.FALSIFIED for r in rs)
        out["methods"][m] = {"certified": proved / n, "not_falsified": (n - falsified) / n, "proved": proved,
                             "falsified": falsified, "unknown": n - proved - falsified, "time_s": round(t, 3)}
    out["pgd_upper_bound"] = min(v["not_falsified"] for v in out["methods"].values())
    return out


def _clean_accuracy(model, x, y) -> float:
    import numpy as np

    logits = model.reference(np.asarray(x).reshape(len(y), *model.input_shape))
    return float(np.mean(np.argmax(logits, 1) == y))


def _accuracy_table(acc: dict, args) -> str:
    rows = [[m, f"{v['certified']:.3f}", f"{v['not_falsified']:.3f}", str(v["unknown"]), f"{v['time_s']:.1f}"]
            for m, v in acc["methods"].items()]
    head = (f"accuracy on {acc['n']} inputs at eps {acc['eps']} (norm {args.norm}): clean {acc['clean']:.3f}, "
            f"attack (upper bound on robust accuracy) {acc['pgd_upper_bound']:.3f}")
    return head + "\n" + table(rows, ["method", "certified (lower bound)", "not falsified (upper bound)",
                                        "unknown", "time_s"])


def _sweep_table(sweep: list[dict], methods: list[str]) -> str:
    rows = [[s["eps"], f"{s['clean']:.3f}", f"{s['pgd_upper_bound']:.3f}",
             *(f"{s['methods'][m]['certified']:.3f}" for m in methods),
             f"{sum(v['time_s'] for v in s['methods'].values()):.1f}"] for s in sweep]
    return table(rows, ["eps", "clean", "attack (upper)", *(f"certified: {m}" for m in methods), "time_s"])


def plot_sweep(sweep: list[dict], methods: list[str], path: str, title: str) -> None:
    """Accuracy against eps: clean (dashed), the attack's upper bound, and certified accuracy per method."""
    from ..plotting import figure, save

    fig, ax = figure()
    eps = [float(Fraction(s["eps"])) for s in sweep]
    ax.plot(eps, [s["clean"] for s in sweep], "--", color="grey", label="clean")
    ax.plot(eps, [s["pgd_upper_bound"] for s in sweep], marker="v", color="black", label="attack (upper bound)")
    for i, m in enumerate(methods):
        ax.plot(eps, [s["methods"][m]["certified"] for s in sweep], marker="o", ms=4, color=f"C{i}",
                label=f"certified: {m}")
    save(fig, ax, path, xlabel="eps", ylabel="accuracy", title=title)


def write_error_result(args) -> None:
    """Best effort 'error' in the VNN-COMP result file: the failure being reported may be that very file."""
    if getattr(args, "vnncomp_result", None):
        try:
            Path(args.vnncomp_result).write_text("error\n")
        except OSError:
            pass


def fmt_margin(result) -> str:
    """What the answer certified about the property's margin: ``>= L`` (certified lower bound; a proof has
    L > 0), ``<= U`` (a replayed counterexample's margin), or ``-`` (nothing certified: an attack)."""
    def num(v: float) -> str:
        return f"{v:+.4g}" if math.isfinite(v) else str(v)

    if result.margin_upper is not None:
        return f"<= {num(result.margin_upper)} (cex)"
    if result.margin_lower is not None:
        return f">= {num(result.margin_lower)}"
    return "-"


def _verify_task(shared: dict, payload: tuple) -> dict:
    """One property and method, where a worker runs it (the model loaded once per worker)."""
    from .. import api
    from ..scale.worker import model_of

    method, prop = payload
    model = model_of(shared["model"], shared["load"])
    o = shared["options"]
    return api.verify(model, prop, method, timeout=o["timeout"], device=o["device"], attack=o["attack"],
                      memory_mb=o["memory_mb"], semantics=o["semantics"]).to_dict()


def _failed_task(task, failure) -> dict:
    """An answer whose worker died or overran its deadline: unknown, with the reason."""
    from ..results import TIMEOUT, Result, Verdict

    method, prop = task.payload
    reason = f"{TIMEOUT} ({failure.reason})" if failure.kind == "deadline" else f"backend_error: {failure.reason}"
    return Result(Verdict.UNKNOWN, method, 0.0, reason=reason, property=prop.name).to_dict()


def _run(model, groups: list[tuple[str | None, list]], methods: list[str], args, progress: Progress, emit,
         executor, journal) -> list[dict]:
    """Every method on every property of every group (one group per radius; one for VNN-LIB files), as
    tasks on ``executor``: per group ``{method: (results, seconds)}``, seconds summed over its answers;
    ``emit(prop, method, result, eps)`` per answer as it finishes."""
    from ..replay import result_from_dict
    from ..scale import FileRef, Serial, Task, deadline_for, execute

    tasks, where = [], []
    for g, (eps, props) in enumerate(groups):
        for method in methods:
            for i, prop in enumerate(props):
                key = f"{eps}|{method}|{i}" if eps is not None else f"{method}|{i}|{prop.source}"
                tasks.append(Task(len(tasks), key, (method, prop), deadline_for(args.timeout)))
                where.append((g, method, i))
    shared = dict(model=model if isinstance(executor, Serial) else FileRef(str(args.model)),
                  load=dict(arch=args.arch, input_shape=parse_shape(args.input_shape),
                            allow_unsafe_pickle=args.allow_unsafe_pickle),
                  options=dict(timeout=args.timeout, device=args.device, attack=not args.no_attack,
                               memory_mb=args.memory_limit, semantics=args.semantics))
    results: dict[int, object] = {}

    def on_row(task, row) -> None:
        g, method, i = where[task.index]
        r = results[task.index] = result_from_dict(row, model, task.payload[1])
        emit(task.payload[1], method, r, groups[g][0])
        progress.step(r.verdict.value)

    execute(_verify_task, shared, tasks, executor, _failed_task, journal=journal, on_row=on_row,
            on_event=progress.note)
    out: list[dict] = [{} for _ in groups]
    for index, (g, method, i) in enumerate(where):
        rs, t = out[g].get(method, ([], 0.0))
        out[g][method] = (rs + [results[index]], t + results[index].time_s)
    return out


def cmd_verify(args) -> int:
    from ..models import check_spec_fits, load_model
    from ..results import Guarantee, Verdict
    from ..vnnlib import read_vnnlib

    if not args.specs and not args.data:
        raise Usage("give VNN-LIB files, or --data FILE --eps E for robustness of labelled inputs")
    if args.specs and args.data:
        raise Usage("give either VNN-LIB files or --data, not both")
    eps_list = parse_eps_list(args.eps) if args.data else []
    if args.eps is not None and not args.data:
        raise Usage("--eps needs --data (a VNN-LIB file states its own input set)")
    if args.plot and not args.data:
        raise Usage("--plot needs --data: it draws accuracy against eps")
    clip = parse_clip(args.clip) if args.clip else None
    check_memory_limit(args.memory_limit)
    check_output_paths(("--out", args.out), ("--vnncomp-result", args.vnncomp_result), ("--plot", args.plot))
    check_device(args.device)
    apply_threads(args.threads)
    methods = _methods(args.method)
    if len(methods) > 1 and (args.out or args.vnncomp_result):
        raise Usage("--out and --vnncomp-result record one method: give one --method")
    if len(eps_list) > 1 and (args.out or args.vnncomp_result):
        raise Usage("--out and --vnncomp-result record one radius: give one --eps")
    if args.data:  # before the model: a bad --limit or data file fails without loading it
        from ..data import load_labelled

        x, y = load_labelled(args.data, args.limit)
    model = load_model(args.model, arch=args.arch, input_shape=parse_shape(args.input_shape),
                       allow_unsafe_pickle=args.allow_unsafe_pickle)
    if args.specs:
        props = []
        for path in args.specs:
            prop = read_vnnlib(path)
            check_spec_fits(model, prop.n_inputs, prop.n_outputs, path)
            props.append(prop)
    elif x[0].size != model.n_inputs:
        from ..errors import ShapeError

        raise ShapeError(f"{args.data}: input size (data vs model with input shape {list(model.input_shape)})",
                         model.n_inputs, x[0].size)

    def emit(prop, method, r, eps):
        if args.json:
            print(json.dumps({"source": prop.source, **({"requested": method} if len(methods) > 1 else {}),
                              **({"eps": eps} if eps is not None else {}), **r.to_dict()}), flush=True)

    runs = len(methods) * max(1, len(eps_list))
    progress = Progress(runs * (len(props) if args.specs else len(y)), "answers" if runs > 1 else "properties",
                        enabled=not args.quiet, label="certify verify")
    header = dict(command="verify", model=str(Path(args.model).resolve()), model_sha256=model.sha256,
                  specs=[str(Path(p).resolve()) for p in args.specs], data=args.data, limit=args.limit,
                  eps=args.eps, norm=args.norm, clip=args.clip, methods=methods, timeout=args.timeout,
                  attack=not args.no_attack, semantics=args.semantics, memory_limit=args.memory_limit)
    executor, journal = open_scale(args, header, progress)
    t0 = time.perf_counter()
    sweep: list[dict] = []
    try:
        if args.specs:
            groups = [(None, props)]
        else:
            clean = _clean_accuracy(model, x, y)
            groups = [(_eps_text(eps), _robustness_properties(model, x, y, eps, clip, args)) for eps in eps_list]
        per_group = _run(model, groups, methods, args, progress, emit, executor, journal)
        all_results = [_answers(per_method, methods, props) for per_method, (_, props) in zip(per_group, groups)]
        if not args.specs:
            sweep = [{"eps": eps, **_accuracy_summary(clean, len(y), per_method)}
                     for per_method, (eps, _) in zip(per_group, groups)]
    finally:
        progress.close()
        close_scale(executor, journal)
    total = time.perf_counter() - t0
    every = [r for rs in all_results for r in rs]

    counts = {v: sum(r.verdict is v for r in every) for v in Verdict}
    summary = {"proved": counts[Verdict.PROVED], "falsified": counts[Verdict.FALSIFIED],
               "unknown": counts[Verdict.UNKNOWN], "total": len(every), "time_s": round(total, 3),
               "semantics": args.semantics}
    probabilistic = sum(r.verdict is Verdict.PROVED and r.guarantee is Guarantee.PROBABILISTIC for r in every)
    if probabilistic:
        summary["proved_probabilistic"] = probabilistic
    if len(sweep) == 1:
        summary["accuracy"] = sweep[0]
    elif sweep:
        summary["sweep"] = sweep
    if args.plot:
        title = (f"{Path(args.model).name} on {args.data}, {len(y)} inputs (L{args.norm} ball"
                 + (f", clip {args.clip})" if args.clip else ")"))
        plot_sweep(sweep, methods, args.plot, title)
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        if not args.quiet and len(sweep) <= 1:
            rows = [[r.property, r.verdict.value, r.method, f"{r.time_s:.3f}", fmt_margin(r),
                     r.reason or r.claim or ("counterexample replayed on " + r.counterexample.runtime
                                             if r.counterexample else "")]
                    for r in every]
            print(table(rows, ["property", "verdict", "method", "time_s", "margin", "note"]))
            print()
        note = (f" ({probabilistic} of them only with probability, about the smoothed classifier, not the network)"
                if probabilistic else "")
        print(f"{summary['proved']} proved{note}, {summary['falsified']} falsified, {summary['unknown']} unknown "
              f"of {summary['total']} in {total:.2f}s  (model {Path(args.model).name}, method {args.method}, "
              f"semantics {args.semantics})")
        if len(sweep) == 1:
            print("\n" + _accuracy_table(sweep[0], args))
        elif sweep:
            print(f"\naccuracy on {sweep[0]['n']} inputs of {args.data} (norm {args.norm}) against eps:")
            print(_sweep_table(sweep, methods))
        if args.plot:
            print(f"\nplot written to {args.plot}")

    results = all_results[0]
    if args.vnncomp_result:
        from ..vnncomp import result_file_text

        write_output(args.vnncomp_result, result_file_text(results))
    if args.out:
        _write_certificate(args, model, props, results, summary)
    if counts[Verdict.FALSIFIED]:
        return ExitCode.FALSIFIED
    if counts[Verdict.UNKNOWN]:
        return ExitCode.UNKNOWN
    return ExitCode.PROVED


def _answers(per_method: dict, methods: list[str], props: list) -> list:
    return per_method[methods[0]][0] if len(methods) == 1 else _best_answers(per_method, props)


def _write_certificate(args, model, props, results, summary) -> None:
    from ..models import sha256_file

    sources = {}
    for p in props:
        if p.source and p.source not in sources and Path(p.source).exists():
            sources[p.source] = sha256_file(p.source)
    cert = {
        "tool": "certify",
        "version": version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(args.model), "sha256": model.sha256, "kind": model.kind,
                  "reference_runtime": model.reference_name},
        "method": args.method,
        "timeout_s": args.timeout,
        "specs": [{"path": s, "sha256": h} for s, h in sources.items()],
        "data": {"eps": float(Fraction(args.eps)), "norm": args.norm, "clip": args.clip} if args.data else None,
        "results": [{"source": p.source, "spec_sha256": sources.get(p.source), **r.to_dict()}
                    for p, r in zip(props, results)],
        "summary": summary,
    }
    write_output(args.out, json.dumps(cert, indent=1) + "\n")
