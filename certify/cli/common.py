"""What every ``certify`` subcommand shares: exit codes, one-line errors, tables, progress, argument checks.

The subcommand modules (``verify``, ``bench``, ``smooth``, ``train``, ``audit``) import from here and never from
each other; the package's ``__init__`` assembles the parser and maps exceptions to exit codes.
"""
from __future__ import annotations

import argparse
import sys
import time
from enum import IntEnum
from fractions import Fraction
from pathlib import Path
from typing import NoReturn, TextIO

from ..errors import CertifyError, UsageError

EXIT_CODES_HELP = """exit codes:
  0  all properties proved
  1  at least one property falsified (each with a counterexample replayed on the model's own runtime)
  2  usage error: a bad option value or a missing argument (one line: certify <command>: error: ...)
  3  no property falsified, at least one unknown (timeout or bounds too loose)
  4  bad input: unreadable model, unsupported operator, malformed VNN-LIB, shape mismatch, missing file
  5  internal error (please report; --debug shows the traceback)
  130 interrupted (Ctrl-C)"""


class ExitCode(IntEnum):
    PROVED = 0
    FALSIFIED = 1
    USAGE = 2
    UNKNOWN = 3
    INPUT_ERROR = 4
    INTERNAL = 5


SEMANTICS_HELP = ("what 'proved' covers. runtime (default): the network in exact arithmetic AND as its runtime "
                  "evaluates it in the model's precision (any summation order, FMA, flush-to-zero); real: the "
                  "exact network only (a float counterexample may still exist). Recorded in every result")
MEMORY_HELP = ("memory cap in MiB for branch-and-bound's open domains (default 4096); past it the "
               "property is unknown with the reason, never a crash")


def version() -> str:
    try:
        from importlib.metadata import version as _v

        return _v("certify")
    except Exception:
        return "0+unknown"


def check_backend(name: str, flag: str = "--method") -> None:
    """A name no backend is registered under is a usage error (exit 2) listing the names; a registered
    backend whose dependencies are missing is an input error (exit 4) naming the missing module."""
    from .. import registry

    if name not in registry.names():
        raise UsageError(f"{flag}: unknown backend {name!r}; registered: {', '.join(registry.names())}")
    registry.get(name)


THREADS_HELP = ("torch threads for this process (default: the cores it may use that no other running process "
                "occupies, at least 1: threads that share a busy core wait on each other, 3x slower measured)")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cores(samples: int = 5) -> int:
    """Other processes running right now: the kernel's count of runnable tasks (``/proc/loadavg``), minus
    this one, the largest of a few samples 2 ms apart; 0 where the count is not available."""
    import time

    busy = 0
    for _ in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        busy = max(busy, running - 1)
        time.sleep(0.002)
    return busy


def apply_threads(threads: int | None) -> int:
    """``--threads``: a positive count; or None: ``OMP_NUM_THREADS`` when set (the test runner sets 1), else
    the usable cores no other running process occupies (at least 1). Sets torch's intra-op threads and
    returns the count. Why: on 2 cores with one busy, 2 torch threads took 40.5 s where 1 took 12.7 s
    (spinning OpenMP threads wait for the one that shares the busy core); alone, 1 and 2 took 14.1 s."""
    import os

    if threads is not None and threads < 1:
        raise UsageError(f"--threads: expected a positive number, got {threads}")
    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return torch.get_num_threads()
    n = threads if threads is not None else max(1, usable_cores() - busy_cores())
    torch.set_num_threads(n)
    return n


def check_memory_limit(value: float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"--memory-limit: expected a positive number of MiB, got {value}")


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--input-shape: expected integers like 1,28,28, got {text!r}") from None


def parse_clip(text: str) -> tuple[float, float]:
    """``--clip LO,HI``: the input domain, ``LO <= HI``."""
    try:
        lo, hi = (float(s) for s in text.split(","))
    except ValueError:
        raise UsageError(f"--clip: expected LO,HI such as 0,1, got {text!r}") from None
    if not lo <= hi:
        raise UsageError(f"--clip: LO must not exceed HI, got {text!r}")
    return lo, hi


def write_output(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise CertifyError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def check_output_paths(*targets: tuple[str, str | None]) -> None:
    """``(flag, path)`` pairs: a path whose directory does not exist is an input error before any work."""
    for flag, target in targets:
        if target and not Path(target).resolve().parent.is_dir():
            raise CertifyError(f"{flag} {target}: directory {Path(target).parent} does not exist")


class Progress:
    """Progress of a run of ``total`` items on stderr, unless ``enabled`` is false (``--quiet``).

    On a terminal: a bar. Elsewhere (a log file, a pipe, CI): one plain line at the first finished item,
    then at most every ``every`` seconds, and at the end: items done, outcomes so far, elapsed time and
    an estimate of the rest, so that the log of a long run shows life."""

    def __init__(self, total: int | None, unit: str, enabled: bool = True, label: str = "certify",
                 every: float = 5.0, stream: TextIO | None = None):
        self.total, self.unit, self.label, self.every = total, unit, label, every
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done, self.counts = 0, {}
        self._bar = None
        self._t0 = time.perf_counter()
        self._last: float | None = None
        self._printed = 0
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, file=self.stream, leave=False)

    def step(self, outcome: str | None = None, note: str = "") -> None:
        """One item finished, with its ``outcome`` (e.g. proved) counted, and an optional ``note``."""
        self.done += 1
        if outcome:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self._bar is not None:
            if note or outcome:
                self._bar.set_postfix_str(note or self._tally())
            self._bar.update(1)
        elif self.enabled:
            now = time.perf_counter()
            if self._last is None or now - self._last >= self.every:
                self._line(now)

    def note(self, message: str) -> None:
        """A line that must be seen even with ``--quiet`` (a worker died, a task was retried)."""
        if self._bar is not None:
            self._bar.write(f"{self.label}: {message}", file=self.stream)
        else:
            print(f"{self.label}: {message}", file=self.stream, flush=True)

    def _tally(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items())

    def _line(self, now: float) -> None:
        self._last, self._printed = now, self.done
        elapsed = now - self._t0
        of = f"/{self.total}" if self.total else ""
        rest = ""
        if self.total and 0 < self.done < self.total:
            rest = f", about {elapsed / self.done * (self.total - self.done):.0f} s left"
        tally = f": {self._tally()}" if self.counts else ""
        print(f"{self.label}: {self.done}{of} {self.unit}{tally}; {elapsed:.1f} s elapsed{rest}",
              file=self.stream, flush=True)

    def close(self) -> None:
        """The bar goes away; a plain log gets its final line (unless the last one already said it all)."""
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.done and self._printed != self.done:
            self._line(time.perf_counter())


def check_device(name: str) -> None:
    """An unknown or unavailable ``--device`` is an input error before any work."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r} (e.g. cpu, cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available in this torch installation")


Usage = UsageError  # the subcommands' name for it


def add_scale_options(parser: argparse.ArgumentParser, unit: str) -> None:
    """``--workers``, ``--ray``, ``--resume``: where the tasks (one per ``unit``) run, and the journal."""
    g = parser.add_argument_group(f"scale-out (one task per {unit}; see README, Running on a cluster)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run tasks on N local worker processes, one torch thread each (default 1: in this "
                        "process). Answers and output order are those of a serial run")
    g.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run tasks on a Ray cluster: HOST:PORT of its head, or auto (the default when no "
                        "value is given): the cluster this machine belongs to, else a local one for this run. "
                        "Needs pip install 'certify[ray]'")
    g.add_argument("--resume", metavar="FILE",
                   help="journal of finished rows (JSON lines): rows already in FILE are kept and not run "
                        "again, new ones are appended as they finish. After an interruption run the same "
                        "command again; a file from other settings is refused")


def open_scale(args: argparse.Namespace, header: dict, progress: "Progress"):
    """The executor and journal the scale-out options ask for (usage checked first, then the journal)."""
    from ..scale import Journal, make_executor

    if args.workers < 1:
        raise UsageError(f"--workers: expected a positive number, got {args.workers}")
    if args.ray is not None and args.workers != 1:
        raise UsageError("--workers and --ray: give one of them (Ray runs one worker per CPU it has)")
    check_output_paths(("--resume", args.resume))
    journal = Journal(args.resume, header) if args.resume else None
    try:
        executor = make_executor(args.workers, args.ray, getattr(args, "memory_limit", None))
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    if journal is not None and journal.rows:
        progress.note(f"resuming from {args.resume}: {len(journal.rows)} finished rows kept")
    return executor, journal


def close_scale(executor, journal) -> None:
    try:
        executor.close()
    finally:
        if journal is not None:
            journal.close()


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage error is one line, ``certify <command>: error: ...``
    with a pointer to ``--help``, and exit code 2; never the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(ExitCode.USAGE)


def positive_seconds(text: str) -> float:
    """``--timeout S``: a positive number of seconds (0 would answer timeout without trying: refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def parse_eps_list(text: str | None, flag: str = "--eps") -> list[Fraction]:
    """``--eps E[,E2,...]``: each read exactly (0.02 is 2/100, not its float), non-negative, distinct."""
    if text is None:
        raise UsageError("--data needs --eps (one radius, or several comma-separated for a sweep)")
    values = []
    for part in text.split(","):
        try:
            values.append(Fraction(part.strip()))
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"{flag}: expected a number or comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise UsageError(f"{flag}: expected non-negative radii, got {text!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"{flag}: radii must be distinct, got {text!r}")
    return values
