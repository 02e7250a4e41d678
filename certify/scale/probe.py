"""A task that does nothing but be observed: for measuring an executor's per-task overhead
(``benchmarks/scale_bench.py``) and for tests that kill a worker mid-task.

``probe(shared, payload)``: ``payload`` is ``{"sleep": seconds, "mark": folder or None}``; with a folder, the
task first writes a file named after its worker's process id there (so a test can find and kill the worker
while it sleeps). Returns ``[pid, payload's "value"]``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def probe(shared: Any, payload: dict) -> list:
    if payload.get("mark"):
        (Path(payload["mark"]) / f"{os.getpid()}.{payload.get('value')}").write_text(str(time.time()))
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    if payload.get("raise"):
        raise RuntimeError(payload["raise"])
    return [os.getpid(), payload.get("value")]
