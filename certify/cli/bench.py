"""``certify bench``: run a VNN-COMP instances file and score it against its expected answers."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import (MEMORY_HELP, SEMANTICS_HELP, THREADS_HELP, Progress, Usage, add_scale_options, apply_threads,
                     check_backend, check_device, check_memory_limit, check_output_paths, close_scale, open_scale,
                     positive_seconds, write_output)

BENCH_EXAMPLES = """examples:
  certify bench ../shared/benchmarks/acasxu/instances.csv            # the competition's timeouts
  certify bench ../shared/benchmarks/acasxu/expected_results.csv --timeout 30 --csv acas.csv --markdown acas.md
  certify bench suite/instances.csv --every 10 --json                # a 10 % sample, JSON lines
  certify bench ../shared/benchmarks/acasxu/instances.csv --workers 2 --csv acas.csv --resume acas.jsonl
                                                                     # 2 local workers; rerun to resume
  certify bench suite.csv --ray 10.0.0.1:6379                        # on a Ray cluster

answers are the competition's: sat (counterexample found and replayed), unsat (proved), timeout, unknown,
error (unreadable model or property). Score: +10 per answer matching the expected one, -150 per
contradicting one.

exit codes: 0 no answer contradicts the expected results, 1 at least one does, 2 usage, 4 bad input
"""


def add_parsers(sub) -> None:
    s = sub.add_parser("bench", help="run a VNN-COMP suite (instances.csv) and score it",
                       description="Run every instance of a VNN-COMP instances file (onnx, vnnlib, timeout rows; "
                                   "paths relative to the file) and report answers, times and the competition's "
                                   "score against an expected column when there is one.",
                       epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("instances", help="instances CSV: no header (onnx, vnnlib, timeout[, expected]) or a header "
                                     "naming onnx, vnnlib, timeout_s and optionally expected")
    s.add_argument("--method", default="auto", help="auto (default) or one backend; see 'certify backends'")
    s.add_argument("--timeout", type=positive_seconds, metavar="S",
                   help="seconds per instance, instead of each row's own (must be positive)")
    s.add_argument("--device", default="cpu", help="torch device for bound computation")
    s.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    s.add_argument("--memory-limit", type=float, metavar="MIB", help=MEMORY_HELP)
    s.add_argument("--semantics", choices=("runtime", "real"), default="runtime", help=SEMANTICS_HELP)
    s.add_argument("--every", type=int, default=1, metavar="K", help="run every K-th instance only (a quick sample)")
    s.add_argument("--csv", metavar="FILE", help="write per-instance rows (answer, expected, time, ...) as CSV, "
                                                 "each as soon as it is known")
    s.add_argument("--markdown", metavar="FILE", help="write the summary and per-instance tables as markdown")
    s.add_argument("--json", action="store_true", help="one JSON object per instance on stdout, then a summary")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    add_scale_options(s, "instance")


def cmd_bench(args) -> int:
    from .. import bench

    if args.every < 1:
        raise Usage(f"--every: expected a positive integer, got {args.every}")
    check_memory_limit(args.memory_limit)
    check_output_paths(("--csv", args.csv), ("--markdown", args.markdown))
    check_device(args.device)
    apply_threads(args.threads)
    if args.method != "auto":
        check_backend(args.method)
    instances = bench.read_instances(args.instances)[:: args.every]
    progress = Progress(len(instances), "instances", enabled=not args.quiet, label="certify bench")
    header = dict(command="bench", instances=str(Path(args.instances).resolve()), every=args.every,
                  method=args.method, timeout=args.timeout, semantics=args.semantics, memory_limit=args.memory_limit)
    executor, journal = open_scale(args, header, progress)
    wrong = 0
    log = None

    def report(o: "bench.Outcome") -> None:
        nonlocal wrong
        wrong += o.wrong
        if log is not None:
            log.write(o)
        if args.json:
            print(json.dumps({**o.__dict__, "correct": o.correct, "wrong": o.wrong}), flush=True)
        progress.step(o.answer, f"{Path(o.vnnlib).stem}: {o.answer}, wrong {wrong}")

    try:  # the CSV is opened (truncated) only once the journal was accepted
        log = bench.CsvLog(args.csv) if args.csv else None
        outcomes = bench.run(instances, args.method, timeout=args.timeout, device=args.device,
                             memory_mb=args.memory_limit, on_outcome=report, semantics=args.semantics,
                             executor=executor, journal=journal, on_event=progress.note)
    finally:
        progress.close()
        if log is not None:
            log.close()
        close_scale(executor, journal)
    if args.csv:  # rows were streamed as they finished; the final file is in the instances' order
        bench.write_csv(outcomes, args.csv)
    title = Path(args.instances).parent.name or Path(args.instances).stem
    if args.json:
        print(json.dumps({"summary": bench.summary(outcomes)}))
    else:
        for o in outcomes:
            if o.wrong:
                print(f"WRONG: {o.onnx} {o.vnnlib}: expected {o.expected}, answered {o.answer}")
        print(bench.markdown(outcomes, title))
    if args.markdown:
        write_output(args.markdown, bench.markdown(outcomes, title, per_instance=True))
    return 1 if any(o.wrong for o in outcomes) else 0
