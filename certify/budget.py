"""A time budget carried by value: backends check it; op rules never see it."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


def now() -> float:
    """The clock every budget reads (a function of its own, so tests can substitute a virtual clock)."""
    return time.perf_counter()


@dataclass
class Budget:
    """``seconds`` of wall-clock time from creation (``inf`` for none)."""

    seconds: float = math.inf
    start: float = field(default_factory=lambda: now())

    def elapsed(self) -> float:
        return now() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def sub(self, fraction: float = 1.0, cap: float = math.inf) -> "Budget":
        """A child budget: ``fraction`` of what remains, at most ``cap`` seconds."""
        return Budget(max(0.0, min(self.remaining() * fraction, cap)))
