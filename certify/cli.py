"""Command line: ``certify verify``, ``certify bench``, ``certify backends``; ``certify smooth`` and
``certify train`` live in ``certify.cli_smooth``, ``certify audit``, ``audit-suite`` and ``audit-mutations`` in ``certify.cli_audit``.

Exit codes (never renumbered):
  0  PROVED       every property proved
  1  FALSIFIED    at least one property falsified (each with a replayed counterexample)
  2  USAGE        bad command-line usage
  3  UNKNOWN      none falsified, at least one unknown (timeout or inconclusive)
  4  INPUT_ERROR  a bad model, property or data file (the message names the file, line or node)
  5  INTERNAL     a bug in certify (re-run with --debug for the traceback)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from .cli_common import (EXIT_CODES_HELP, ExitCode, Progress, Usage as _Usage, check_device,  # noqa: F401
                         check_output_paths, parse_clip, parse_shape as _parse_shape, table as _table,
                         write_output as _write_output)
from .errors import CertifyError

VERIFY_EXAMPLES = """examples:
  certify verify net.onnx prop.vnnlib                      # one VNN-LIB property, method auto
  certify verify net.onnx specs/*.vnnlib --json            # many properties, JSON lines on stdout
  certify verify net.onnx --data test.npz --eps 0.02 --norm inf --clip 0,1
                                                           # local robustness of labelled inputs
  certify verify model.pt --arch mypkg.nets:MLP --data test.pt --eps 0.1 --norm 2
  certify verify net.onnx prop.vnnlib --vnncomp-result out.txt --timeout 116

verdicts: proved (sound: holds for every input of the set, floating point included),
falsified (a counterexample was replayed on onnxruntime / the eager model), unknown (with a reason).
"""


BENCH_EXAMPLES = """examples:
  certify bench ../shared/benchmarks/acasxu/instances.csv            # the competition's timeouts
  certify bench ../shared/benchmarks/acasxu/expected_results.csv --timeout 30 --csv acas.csv --markdown acas.md
  certify bench suite/instances.csv --every 10 --json                # a 10 % sample, JSON lines

answers are the competition's: sat (counterexample found and replayed), unsat (proved), timeout, unknown,
error (unreadable model or property). Score: +10 per answer matching the expected one, -150 per
contradicting one.

exit codes: 0 no answer contradicts the expected results, 1 at least one does, 2 usage, 4 bad input
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("certify")
    except Exception:
        return "0+unknown"


SEMANTICS_HELP = ("what 'proved' covers. runtime (default): the network in exact arithmetic AND as its runtime "
                  "evaluates it in the model's precision (any summation order, FMA, flush-to-zero); real: the "
                  "exact network only (a float counterexample may still exist). Recorded in every result")
MEMORY_HELP = ("memory cap in MiB for branch-and-bound's open domains (default 4096); past it the "
               "property is unknown with the reason, never a crash")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certify",
        description="Formal verification of neural networks: prove, falsify (with a replayed counterexample) "
                    "or report unknown, per property.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"certify {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    v = sub.add_parser("verify", help="verify properties of a model",
                       description="Verify VNN-LIB properties, or local robustness of labelled inputs, on a model.",
                       epilog=VERIFY_EXAMPLES + "\n" + EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("model", help="an .onnx file, or a PyTorch checkpoint (TorchScript, torch.export .pt2, "
                                 "or a state dict with --arch)")
    v.add_argument("specs", nargs="*", metavar="SPEC", help="VNN-LIB files (.vnnlib or .vnnlib.gz)")
    data = v.add_argument_group("robustness of labelled inputs (instead of VNN-LIB files)")
    data.add_argument("--data", metavar="FILE", help=".npz with arrays x and y, or a .pt holding {'x': ..., 'y': ...}")
    data.add_argument("--eps", help="radius of the perturbation ball, read exactly (0.02 is 2/100)")
    data.add_argument("--norm", default="inf", help="inf, 2 or 1 (default: inf)")
    data.add_argument("--clip", metavar="LO,HI", help="intersect the ball with the input domain, e.g. 0,1")
    data.add_argument("--limit", type=int, metavar="N", help="only the first N inputs")
    m = v.add_argument_group("method")
    m.add_argument("--method", default="auto",
                   help="auto (default: PGD attack, then ever tighter sound bounds), or one backend; "
                        "see 'certify backends'")
    m.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds per property (default: 300)")
    m.add_argument("--device", default="cpu", help="torch device for bound computation, e.g. cpu or cuda")
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
    out.add_argument("--quiet", action="store_true", help="no table, only the summary line")
    out.add_argument("--debug", action="store_true", help="show tracebacks")

    s = sub.add_parser("bench", help="run a VNN-COMP suite (instances.csv) and score it",
                       description="Run every instance of a VNN-COMP instances file (onnx, vnnlib, timeout rows; "
                                   "paths relative to the file) and report answers, times and the competition's "
                                   "score against an expected column when there is one.",
                       epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("instances", help="instances CSV: no header (onnx, vnnlib, timeout[, expected]) or a header "
                                     "naming onnx, vnnlib, timeout_s and optionally expected")
    s.add_argument("--method", default="auto", help="auto (default) or one backend; see 'certify backends'")
    s.add_argument("--timeout", type=float, metavar="S", help="seconds per instance, instead of each row's own")
    s.add_argument("--device", default="cpu", help="torch device for bound computation")
    s.add_argument("--memory-limit", type=float, metavar="MIB", help=MEMORY_HELP)
    s.add_argument("--semantics", choices=("runtime", "real"), default="runtime", help=SEMANTICS_HELP)
    s.add_argument("--every", type=int, default=1, metavar="K", help="run every K-th instance only (a quick sample)")
    s.add_argument("--csv", metavar="FILE", help="write per-instance rows (answer, expected, time, ...) as CSV, "
                                                 "each as soon as it is known")
    s.add_argument("--markdown", metavar="FILE", help="write the summary and per-instance tables as markdown")
    s.add_argument("--json", action="store_true", help="one JSON object per instance on stdout, then a summary")
    s.add_argument("--debug", action="store_true", help="show tracebacks")

    from . import cli_audit, cli_smooth, cli_train

    cli_smooth.add_parsers(sub)
    cli_train.add_parsers(sub)
    cli_audit.add_parsers(sub)
    b = sub.add_parser("backends", help="list verification backends and whether they are available")
    b.add_argument("--json", action="store_true")
    return parser


# ----------------------------------------------------------------------------------------------
def _robustness_properties(model, args) -> list:
    import torch

    from .data import load_labelled
    from .errors import ShapeError
    from .spec import Property, robustness

    if args.eps is None:
        raise CertifyError("--data needs --eps")
    try:  # exact: the decimal the user wrote, not its float (robustness() rounds the float ball outward)
        eps = Fraction(args.eps.strip())
    except (ValueError, ZeroDivisionError):
        raise CertifyError(f"--eps: expected a number, got {args.eps!r}") from None
    x, y = load_labelled(args.data, args.limit)
    if x[0].size != model.n_inputs:
        raise ShapeError(f"{args.data}: input size (data vs model with input shape {list(model.input_shape)})",
                         model.n_inputs, x[0].size)
    clip = parse_clip(args.clip) if args.clip else None
    stem = Path(args.data).stem
    props = []
    for i in range(x.shape[0]):
        xi = torch.as_tensor(x[i]).reshape(1, *model.input_shape)
        spec = robustness(xi, [int(y[i])], eps, args.norm, n_classes=model.n_outputs, clip=clip)
        props.append(Property(f"{stem}[{i}] label={int(y[i])} eps={args.eps} norm={args.norm}", (spec,),
                              source=args.data))
    return props, (x, y)


def _methods(text: str) -> list[str]:
    """``--method``: one name, or several comma-separated (each checked before any work)."""
    from . import registry

    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise _Usage(f"--method: expected a backend name or distinct comma-separated names, got {text!r}")
    for m in methods:
        if m != "auto":
            registry.get(m)  # an unknown or unavailable backend is an input error, before any work
    return methods


def _best_answers(per_method: dict, props: list) -> list:
    """Per property, the most informative answer over the methods: a sound proof, else a replayed
    counterexample, else the first method's unknown. A sound proof and a counterexample for the same
    property would mean a bug in a backend: that is an internal error, never a silent pick."""
    from .results import Guarantee, Verdict

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


def _accuracy_summary(model, labelled, per_method: dict) -> dict:
    """Clean accuracy on the model's own runtime; per method, certified accuracy (sound proofs: a lower bound
    on robust accuracy) and the share not falsified (every falsification is a replayed counterexample: an
    upper bound); ``pgd_upper_bound`` is the tightest of those upper bounds."""
    import numpy as np

    from .results import Guarantee, Verdict

    x, y = labelled
    logits = model.reference(np.asarray(x).reshape(len(y), *model.input_shape))
    n = len(y)
    out = {"n": n, "clean": float(np.mean(np.argmax(logits, 1) == y)), "methods": {}}
    for m, (rs, t) in per_method.items():
        proved = sum(r.verdict is Verdict.PROVED and r.guarantee is Guarantee.SOUND for r in rs)
        falsified = sum(r.verdict is Verdict.FALSIFIED for r in rs)
        out["methods"][m] = {"certified": proved / n, "not_falsified": (n - falsified) / n, "proved": proved,
                             "falsified": falsified, "unknown": n - proved - falsified, "time_s": round(t, 3)}
    out["pgd_upper_bound"] = min(v["not_falsified"] for v in out["methods"].values())
    return out


def _accuracy_table(acc: dict, args) -> str:
    rows = [[m, f"{v['certified']:.3f}", f"{v['not_falsified']:.3f}", str(v["unknown"]), f"{v['time_s']:.1f}"]
            for m, v in acc["methods"].items()]
    head = (f"accuracy on {acc['n']} inputs at eps {args.eps} (norm {args.norm}): clean {acc['clean']:.3f}, "
            f"attack (upper bound on robust accuracy) {acc['pgd_upper_bound']:.3f}")
    return head + "\n" + _table(rows, ["method", "certified (lower bound)", "not falsified (upper bound)",
                                         "unknown", "time_s"])


def _write_error_result(args) -> None:
    """Best effort 'error' in the VNN-COMP result file: the failure being reported may be that very file."""
    if getattr(args, "vnncomp_result", None):
        try:
            Path(args.vnncomp_result).write_text("error\n")
        except OSError:
            pass


def _fmt_bound(result) -> str:
    values = [v for spec in result.bounds for v in spec]
    if not values:
        return "-"
    low = min(values)
    return f"{low:+.4g}" if math.isfinite(low) else str(low)


def _check_memory_limit(value: float | None) -> None:
    if value is not None and not value > 0:
        raise CertifyError(f"--memory-limit: expected a positive number of MiB, got {value}")


def cmd_verify(args) -> int:
    from . import api
    from .models import check_spec_fits, load_model
    from .results import Guarantee, Verdict
    from .vnnlib import read_vnnlib

    if not args.specs and not args.data:
        raise _Usage("give VNN-LIB files, or --data FILE --eps E for robustness of labelled inputs")
    if args.specs and args.data:
        raise _Usage("give either VNN-LIB files or --data, not both")
    if not args.timeout >= 0:  # negative or nan; checked here to name the flag and fail before loading anything
        raise CertifyError(f"--timeout: expected a non-negative number of seconds, got {args.timeout}")
    _check_memory_limit(args.memory_limit)
    check_output_paths(("--out", args.out), ("--vnncomp-result", args.vnncomp_result))
    check_device(args.device)
    methods = _methods(args.method)
    if len(methods) > 1 and (args.out or args.vnncomp_result):
        raise _Usage("--out and --vnncomp-result record one method: give one --method")
    model = load_model(args.model, arch=args.arch, input_shape=_parse_shape(args.input_shape),
                       allow_unsafe_pickle=args.allow_unsafe_pickle)
    labelled = None
    if args.specs:
        props = []
        for s in args.specs:
            prop = read_vnnlib(s)
            check_spec_fits(model, prop.n_inputs, prop.n_outputs, s)
            props.append(prop)
    else:
        props, labelled = _robustness_properties(model, args)

    progress = Progress(len(props) * len(methods), "prop", enabled=len(props) * len(methods) > 1 and not args.json)
    per_method: dict[str, tuple[list, float]] = {}
    t0 = time.perf_counter()
    for method in methods:
        results, t_method = [], time.perf_counter()
        for prop in props:
            r = api.verify(model, prop, method, timeout=args.timeout, device=args.device, attack=not args.no_attack,
                           memory_mb=args.memory_limit, semantics=args.semantics)
            results.append(r)
            if args.json:
                print(json.dumps({"source": prop.source, **({"requested": method} if len(methods) > 1 else {}),
                                  **r.to_dict()}), flush=True)
            progress.step(f"{method}: {r.verdict.value}" if len(methods) > 1 else r.verdict.value)
        per_method[method] = (results, time.perf_counter() - t_method)
    progress.close()
    total = time.perf_counter() - t0
    results = per_method[methods[0]][0] if len(methods) == 1 else _best_answers(per_method, props)

    counts = {v: sum(r.verdict is v for r in results) for v in Verdict}
    summary = {"proved": counts[Verdict.PROVED], "falsified": counts[Verdict.FALSIFIED],
               "unknown": counts[Verdict.UNKNOWN], "total": len(results), "time_s": round(total, 3),
               "semantics": args.semantics}
    probabilistic = sum(r.verdict is Verdict.PROVED and r.guarantee is Guarantee.PROBABILISTIC for r in results)
    if probabilistic:
        summary["proved_probabilistic"] = probabilistic
    if labelled is not None:
        summary["accuracy"] = _accuracy_summary(model, labelled, per_method)
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        if not args.quiet:
            rows = [[r.property, r.verdict.value, r.method, f"{r.time_s:.3f}", _fmt_bound(r),
                     r.reason or r.claim or ("counterexample replayed on " + r.counterexample.runtime
                                             if r.counterexample else "")]
                    for r in results]
            print(_table(rows, ["property", "verdict", "method", "time_s", "min_bound", "note"]))
        note = (f" ({probabilistic} of them only with probability, about the smoothed classifier, not the network)"
                if probabilistic else "")
        print(f"\n{summary['proved']} proved{note}, {summary['falsified']} falsified, {summary['unknown']} unknown "
              f"of {summary['total']} in {total:.2f}s  (model {Path(args.model).name}, method {args.method}, semantics {args.semantics})")
        if labelled is not None:
            print("\n" + _accuracy_table(summary["accuracy"], args))

    if args.vnncomp_result:
        from .vnncomp import result_file_text

        _write_output(args.vnncomp_result, result_file_text(results))
    if args.out:
        _write_certificate(args, model, props, results, summary)
    if counts[Verdict.FALSIFIED]:
        return ExitCode.FALSIFIED
    if counts[Verdict.UNKNOWN]:
        return ExitCode.UNKNOWN
    return ExitCode.PROVED


def _write_certificate(args, model, props, results, summary) -> None:
    from .models import sha256_file

    sources = {}
    for p in props:
        if p.source and p.source not in sources and Path(p.source).exists():
            sources[p.source] = sha256_file(p.source)
    cert = {
        "tool": "certify",
        "version": _version(),
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
    _write_output(args.out, json.dumps(cert, indent=1) + "\n")


def cmd_bench(args) -> int:
    from . import bench, registry

    if args.timeout is not None and not args.timeout >= 0:
        raise CertifyError(f"--timeout: expected a non-negative number of seconds, got {args.timeout}")
    if args.every < 1:
        raise _Usage(f"--every: expected a positive integer, got {args.every}")
    _check_memory_limit(args.memory_limit)
    check_output_paths(("--csv", args.csv), ("--markdown", args.markdown))
    if args.method != "auto":
        registry.get(args.method)
    instances = bench.read_instances(args.instances)[:: args.every]
    progress = Progress(len(instances), "instance", enabled=not args.json)
    wrong = 0
    log = bench.CsvLog(args.csv) if args.csv else None

    def report(o: "bench.Outcome") -> None:
        nonlocal wrong
        wrong += o.wrong
        if log is not None:
            log.write(o)
        if args.json:
            print(json.dumps({**o.__dict__, "correct": o.correct, "wrong": o.wrong}), flush=True)
        progress.step(f"{Path(o.vnnlib).stem}: {o.answer}, wrong {wrong}")

    try:
        outcomes = bench.run(instances, args.method, timeout=args.timeout, device=args.device,
                             memory_mb=args.memory_limit, on_outcome=report, semantics=args.semantics)
    finally:
        progress.close()
        if log is not None:
            log.close()
    title = Path(args.instances).parent.name or Path(args.instances).stem
    if args.json:
        print(json.dumps({"summary": bench.summary(outcomes)}))
    else:
        for o in outcomes:
            if o.wrong:
                print(f"WRONG: {o.onnx} {o.vnnlib}: expected {o.expected}, answered {o.answer}")
        print(bench.markdown(outcomes, title))
    if args.markdown:
        _write_output(args.markdown, bench.markdown(outcomes, title, per_instance=True))
    return 1 if any(o.wrong for o in outcomes) else 0


def cmd_backends(args) -> int:
    from . import registry

    infos = registry.available()
    if args.json:
        print(json.dumps([{"name": i.name, "available": i.available, "reason": i.reason or None,
                           "description": i.description} for i in infos]))
    else:
        rows = [[i.name, "yes" if i.available else "no", i.description if i.available else i.reason] for i in infos]
        print(_table(rows, ["backend", "available", "description / why not"]))
    return ExitCode.PROVED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    from .cli_audit import cmd_audit, cmd_audit_mutations, cmd_audit_suite
    from .cli_smooth import cmd_smooth
    from .cli_train import cmd_train

    handler = {"verify": cmd_verify, "bench": cmd_bench, "backends": cmd_backends, "smooth": cmd_smooth,
               "train": cmd_train, "audit": cmd_audit, "audit-suite": cmd_audit_suite,
               "audit-mutations": cmd_audit_mutations}[args.command]
    try:
        return int(handler(args))
    except _Usage as exc:
        print(f"certify {args.command}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except CertifyError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"certify: error: {exc}", file=sys.stderr)
        _write_error_result(args)
        return ExitCode.INPUT_ERROR
    except KeyboardInterrupt:
        print("certify: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        print(f"certify: internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)",
              file=sys.stderr)
        _write_error_result(args)
        return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
