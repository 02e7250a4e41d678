"""``certify audit`` (one verifier on a suite with known answers), ``certify audit-suite`` (generate a
suite with hidden counterexamples) and ``certify audit-mutations`` (inject known bugs, report the catch
rate): parsers and handlers, registered by ``certify.cli``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import CertifyError
from .common import Usage, add_scale_options, close_scale, open_scale, positive_seconds

AUDIT_EXAMPLES = """examples:
  certify audit-suite audit_suite --instances 50 --seed 0       # generate (about a minute)
  certify audit audit_suite --verifier crown                     # one of our backends
  certify audit audit_suite --verifier auto --json
  certify audit audit_suite --verifier external:/opt/tool/vnncomp/run_instance.sh --timeout 60
  certify audit ../shared/benchmarks/acasxu/expected_results.csv --verifier bab
  certify audit audit_suite --verifier crown,milp,bab,auto         # several: disagreements are contradictions
  certify audit-suite traps --family traps && certify audit traps --verifier crown,milp,auto
  certify audit audit_suite --verifier auto --workers 2 --resume audit.jsonl   # 2 workers, resumable

statuses: unsound (proved on an instance with a known counterexample), bad_counterexample (a sat answer
whose counterexample leaves the box or does not reach an unsafe clause when re-run in onnxruntime),
contradiction (a replayed counterexample on an instance expected to hold, or with several verifiers one
proving what another refutes with a replayed counterexample), correct, crash (an exception or a
backend_error), unknown. Counterexamples are fed to the model in its declared input type and judged
exactly (rationals, strict bounds strictly) against the suite's manifest.json, independently of
certify's own parser, or against the VNN-LIB's exact statement for a plain instances file.

exit codes: 0 no unsound claim, no bad counterexample and no contradiction, 1 at least one, 2 usage, 4 bad input
"""

SUITE_EXAMPLES = """examples:
  certify audit-suite audit_suite                               # 50 instances, seed 0
  certify audit-suite fresh --instances 100 --seed 7            # regenerate with fresh hidden points

each sat instance hides a counterexample in a narrow ReLU pocket merged into the network (or a parallel
branch); it is kept only if onnxruntime confirms the planted point violates the property and the attack
gauntlet (PGD at several step sizes with restarts, uniform and corner sampling) misses it. Unsat
instances are proved by milp. The manifest records every planted point.

--family traps writes tiny ONNX models whose truth onnxruntime decides: cancellation against 2^24,
subnormal weights, 1e-10 next to 1e9, BatchNorm with a large mean, casts to float16, VNN-LIB constants
that cancel, strict bounds; sat traps record the runtime's counterexample, unsat traps state the
argument (e.g. every float32 input of a 1-D box enumerated) in the manifest.
"""


def add_parsers(sub) -> None:
    a = sub.add_parser("audit", help="audit a verifier's soundness on a suite with known answers",
                       description="Run one verifier on every instance of a suite and judge each answer "
                                   "against the known one, re-running counterexamples in onnxruntime.",
                       epilog=AUDIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("suite", help="a folder with instances.csv (and manifest.json), or an instances CSV")
    a.add_argument("--verifier", required=True, metavar="NAME[,NAME...]",
                   help="a backend (see 'certify backends'), auto, or external:PATH/run_instance.sh; several "
                        "separated by commas run on the same suite and are checked against each other")
    a.add_argument("--timeout", type=positive_seconds, metavar="S",
                   help="seconds per instance, instead of each row's own (must be positive)")
    a.add_argument("--json", action="store_true", help="one JSON object per instance, then the totals")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    add_scale_options(a, "instance (all its verifiers)")

    g = sub.add_parser("audit-suite", help="generate soundness-audit instances with hidden counterexamples",
                       description="Generate ONNX + VNN-LIB instances with planted, attack-resistant "
                                   "counterexamples (and some proved ones), with instances.csv and manifest.json.",
                       epilog=SUITE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("out", help="output folder")
    g.add_argument("--family", choices=("planted", "traps"), default="planted",
                   help="planted: hidden counterexamples in trained networks (default); traps: tiny "
                        "floating-point and import traps whose truth onnxruntime decides")
    g.add_argument("--instances", type=int, default=50, metavar="N", help="(planted only)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--timeout", type=positive_seconds, default=60.0, metavar="S",
                   help="timeout written for each instance (default 60)")
    g.add_argument("--unsat-fraction", type=float, default=0.2, metavar="F",
                   help="share of unsat (proved) instances, at least one from 2 instances on (default 0.2)")
    g.add_argument("--quick", action="store_true", help="a lighter attack gauntlet (for CI-sized suites)")
    g.add_argument("--debug", action="store_true", help="show tracebacks")

    m = sub.add_parser("audit-mutations", help="inject known bugs into certify and report how many the audit catches",
                       description="The mutation audit: each bug of the catalogue is injected in turn and the "
                                   "audit's checks (bound containment against the eager model, exact rational "
                                   "values, VNN-LIB against the suite manifest, tight properties, certify audit "
                                   "of our backends on SUITE) must catch it. The checks first run unmutated and "
                                   "must pass.",
                       epilog="example:\n  certify audit-suite audit_suite --instances 10 --quick\n"
                              "  certify audit-mutations audit_suite --json\n\nexit codes: 0 every mutation "
                              "caught and the unmutated checks pass, 1 otherwise",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("suite", help="a suite folder written by certify audit-suite")
    m.add_argument("--only", metavar="NAME,...", help="only these mutations (names as in the table)")
    m.add_argument("--json", action="store_true", help="one JSON object per mutation, then the summary")
    m.add_argument("--debug", action="store_true", help="show tracebacks")


def cmd_audit(args) -> int:
    from ..audit.run import FAILURES, _verifier_list, audit, totals
    from .common import ExitCode, Progress, table as _table

    names = _verifier_list(args.verifier)
    progress = Progress(None, "instances", enabled=not args.quiet, label="certify audit")
    header = dict(command="audit", suite=str(Path(args.suite).resolve()), verifiers=names, timeout=args.timeout)
    executor, journal = open_scale(args, header, progress)

    def on_row(row):
        if args.json:
            print(json.dumps(row.__dict__), flush=True)
        progress.step(row.status)

    try:
        rows = audit(args.suite, names, args.timeout, on_row, executor=executor, journal=journal,
                     on_event=progress.note)
    finally:
        progress.close()
        close_scale(executor, journal)
    tot = totals(rows)
    per = {v: totals(rows, v) for v in names}
    if args.json:
        summary = {"verifier": ",".join(names), **(per[names[0]] if len(names) == 1 else tot)}
        if len(names) > 1:
            summary["per_verifier"] = per
        print(json.dumps({"summary": summary}))
    else:
        table = [([r.verifier] if len(names) > 1 else []) + [r.instance, r.expected or "-", r.answer, r.status,
                                                              f"{r.time_s:.2f}", r.note[:80]] for r in rows]
        print(_table(table, (["verifier"] if len(names) > 1 else []) + ["instance", "expected", "answer", "status",
                                                                         "time_s", "note"]))
        print()
        for v in names:
            t = per[v]
            print(f"{v}: {t['unsound']} unsound, {t['bad_counterexample']} bad counterexamples, "
                  f"{t['contradiction']} contradictions, {t['crash']} crashes, {t['correct']} correct, "
                  f"{t['unknown']} unknown of {t['instances']} in {t['time_s']:.1f}s")
    return ExitCode.FALSIFIED if any(tot[s] for s in FAILURES) else ExitCode.PROVED


def cmd_audit_mutations(args) -> int:
    from ..audit.mutations import CATALOGUE, run_mutation_audit
    from .common import ExitCode, table as _table

    suite = Path(args.suite)
    if not (suite / "manifest.json").exists():
        raise CertifyError(f"{suite}: no manifest.json; make a suite with certify audit-suite")
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or []) - {m.name for m in CATALOGUE})
    if unknown:
        raise Usage(f"--only: unknown mutation(s) {unknown}; known: {', '.join(m.name for m in CATALOGUE)}")
    outcomes, control = run_mutation_audit(suite, only=only, log=lambda s: print(s, file=sys.stderr))
    caught = sum(o.caught for o in outcomes)
    rate = caught / len(outcomes) if outcomes else 0.0
    if args.json:
        for o in outcomes:
            print(json.dumps(o.__dict__))
        print(json.dumps({"summary": {"mutations": len(outcomes), "caught": caught, "catch_rate": rate,
                                      "control_failures": control}}))
    else:
        print(_table([[o.name, "yes" if o.caught else "NO", o.by or "-", o.description] for o in outcomes],
                     ["mutation", "caught", "by check", "bug"]))
        if control:
            print("\nTHE UNMUTATED CHECKS FAIL (the audit is broken):\n  " + "\n  ".join(control))
        print(f"\ncaught {caught} of {len(outcomes)} mutations ({100 * rate:.0f} %)")
    return ExitCode.PROVED if caught == len(outcomes) and not control else ExitCode.FALSIFIED


def cmd_audit_suite(args) -> int:
    from ..audit.generate import GauntletOptions, generate_suite
    from .common import ExitCode

    if args.family == "traps":
        from ..audit.traps import generate_traps

        t0 = time.perf_counter()
        records = generate_traps(args.out, timeout=args.timeout, log=lambda s: print(s, file=sys.stderr))
        sat = sum(r["expected"] == "sat" for r in records)
        print(f"wrote {len(records)} traps ({sat} sat with recorded counterexamples, {len(records) - sat} unsat) "
              f"to {Path(args.out) / 'instances.csv'} in {time.perf_counter() - t0:.1f}s")
        return ExitCode.PROVED
    if args.instances < 1:
        raise Usage(f"--instances: expected a positive number, got {args.instances}")
    if not 0 <= args.unsat_fraction < 1:
        raise Usage(f"--unsat-fraction: expected a number in [0, 1), got {args.unsat_fraction}")
    opts = GauntletOptions(restarts=128, steps=60, samples=20_000, rounds=1) if args.quick else GauntletOptions()
    t0 = time.perf_counter()
    records = generate_suite(args.out, args.instances, args.seed, args.timeout, opts, args.unsat_fraction,
                             log=lambda s: print(s, file=sys.stderr))
    sat = sum(r.expected == "sat" for r in records)
    print(f"wrote {len(records)} instances ({sat} sat with hidden counterexamples, {len(records) - sat} unsat) "
          f"to {Path(args.out) / 'instances.csv'} in {time.perf_counter() - t0:.1f}s")
    return ExitCode.PROVED if len(records) == args.instances else ExitCode.UNKNOWN
