"""Command line: ``certify verify | bench | backends | smooth | train | audit | audit-suite | audit-mutations``.

One module per subcommand (``verify``, ``bench``, ``smooth``, ``train``, ``audit``), each with ``add_parsers``
and its handlers; ``common`` holds what they share. This module assembles the parser and maps exceptions
to exit codes, the contract the tests walk (never renumbered):

  0  PROVED       every property proved
  1  FALSIFIED    at least one property falsified (each with a replayed counterexample)
  2  USAGE        a bad option value or a missing argument: one line ``certify <command>: error: ...``
  3  UNKNOWN      none falsified, at least one unknown (timeout or inconclusive)
  4  INPUT_ERROR  a bad model, property or data file (the message names the file, line or node)
  5  INTERNAL     a bug in certify (re-run with --debug for the traceback)
  130             interrupted

Every error is one line on stderr with the prefix ``certify <command>: error:``. Library warnings (torch,
onnx, cvxpy) are silenced unless ``--debug``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from ..errors import CertifyError, UsageError
from .common import EXIT_CODES_HELP, ExitCode, Parser, table, version

__all__ = ["ExitCode", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from . import audit, bench, smooth, train, verify

    parser = Parser(
        prog="certify",
        description="Formal verification of neural networks: prove, falsify (with a replayed counterexample) "
                    "or report unknown, per property.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"certify {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    verify.add_parsers(sub)
    bench.add_parsers(sub)
    smooth.add_parsers(sub)
    train.add_parsers(sub)
    audit.add_parsers(sub)
    b = sub.add_parser("backends", help="list verification backends and whether they are available")
    b.add_argument("--json", action="store_true")
    return parser


def cmd_backends(args) -> int:
    import json

    from .. import registry

    infos = registry.available()
    if args.json:
        print(json.dumps([{"name": i.name, "available": i.available, "reason": i.reason or None,
                           "description": i.description} for i in infos]))
    else:
        rows = [[i.name, "yes" if i.available else "no", i.description if i.available else i.reason] for i in infos]
        print(table(rows, ["backend", "available", "description / why not"]))
    return ExitCode.PROVED


def _handler(command: str):
    from . import audit, bench, smooth, train, verify

    return {"verify": verify.cmd_verify, "bench": bench.cmd_bench, "backends": cmd_backends,
            "smooth": smooth.cmd_smooth, "train": train.cmd_train, "audit": audit.cmd_audit,
            "audit-suite": audit.cmd_audit_suite, "audit-mutations": audit.cmd_audit_mutations}[command]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's own parser, so that the message names the subcommand
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    prefix = f"certify {args.command}"
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        if not debug:  # torch / onnx / cvxpy warnings are not messages to our user; --debug shows them
            warnings.simplefilter("ignore")
        try:
            return int(_handler(args.command)(args))
        except UsageError as exc:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return ExitCode.USAGE
        except CertifyError as exc:
            if debug:
                raise
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            from .verify import write_error_result

            write_error_result(args)
            return ExitCode.INPUT_ERROR
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader of stdout went away (| head): stop quietly, as SIGPIPE would
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + 13
        except Exception as exc:
            if debug:
                raise
            print(f"{prefix}: error: internal error: {type(exc).__name__}: {exc} (please report; re-run with --debug "
                  "for the traceback)", file=sys.stderr)
            from .verify import write_error_result

            write_error_result(args)
            return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
