"""What every ``certify`` subcommand shares: exit codes, one-line errors, tables, progress, argument checks.

The subcommand modules (``cli``, ``cli_smooth``, ``cli_train``, ``cli_audit``) import from here and never from
each other, except ``cli``, which assembles the parser.
"""
from __future__ import annotations

import sys
from enum import IntEnum
from pathlib import Path

from .errors import CertifyError

EXIT_CODES_HELP = """exit codes:
  0  all properties proved
  1  at least one property falsified (each with a counterexample replayed on the model's own runtime)
  2  usage error
  3  no property falsified, at least one unknown (timeout or bounds too loose)
  4  bad input: unreadable model, unsupported operator, malformed VNN-LIB, shape mismatch, missing file
  5  internal error (please report; --debug shows the traceback)"""


class ExitCode(IntEnum):
    PROVED = 0
    FALSIFIED = 1
    USAGE = 2
    UNKNOWN = 3
    INPUT_ERROR = 4
    INTERNAL = 5


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise CertifyError(f"--input-shape: expected integers like 1,28,28, got {text!r}") from None


def parse_clip(text: str) -> tuple[float, float]:
    """``--clip LO,HI``: the input domain, ``LO <= HI``."""
    try:
        lo, hi = (float(s) for s in text.split(","))
    except ValueError:
        raise CertifyError(f"--clip: expected LO,HI such as 0,1, got {text!r}") from None
    if not lo <= hi:
        raise CertifyError(f"--clip: LO must not exceed HI, got {text!r}")
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
    """A progress bar on stderr when it is a terminal and ``enabled``; otherwise it does nothing."""

    def __init__(self, total: int | None, unit: str, enabled: bool = True):
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False)

    def step(self, note: str = "") -> None:
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def check_device(name: str) -> None:
    """An unknown or unavailable ``--device`` is an input error before any work."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise CertifyError(f"--device: unknown device {name!r} (e.g. cpu, cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CertifyError(f"--device {name}: CUDA is not available in this torch installation")


class Usage(Exception):
    pass
