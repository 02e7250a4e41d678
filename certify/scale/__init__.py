"""Scale-out: the same per-instance work serially, on local worker processes (``--workers N``) or on a Ray
cluster (``--ray [ADDRESS|auto]``), with the same rows in the same final order, nothing lost on failure,
and a journal to resume an interrupted run (``--resume FILE``).

A command describes its work as :class:`Task` s (``index`` fixes the output order, ``key`` names the task
in the journal) and a top-level function ``fn(shared, payload) -> row`` (a JSON-able value). Every task
draws its randomness from its own seed (the attack's fixed seed, smoothing's per-example stream), so a
row does not depend on which worker ran it or when. :func:`execute` runs the tasks that the journal does
not already hold, hands each row to ``on_row`` as it finishes (CSV, JSON lines, progress) and returns
all rows in task order.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .executors import GRACE_S, Failure, ProcessPool, Serial, Task
from .journal import Journal
from .worker import FileRef

__all__ = ["Failure", "FileRef", "GRACE_S", "Journal", "Task", "execute", "make_executor", "deadline_for"]


def make_executor(workers: int = 1, ray: str | None = None, memory_mb: float | None = None, retries: int = 2):
    """``Serial`` for one worker, ``ProcessPool`` for several, ``RayPool`` when ``ray`` names a cluster
    (``"auto"``: the one this machine belongs to, else a local one for the run)."""
    if ray is not None:
        from .ray_pool import RayPool

        return RayPool(ray, retries, memory_mb)
    if workers > 1:
        return ProcessPool(workers, retries)
    return Serial()


def deadline_for(timeout: float | None) -> float | None:
    """Seconds after which a task is stopped: its own timeout plus :data:`GRACE_S` (start-up, loading, replay)."""
    return None if timeout is None else float(timeout) + GRACE_S


def execute(fn: Callable[[Any, Any], Any], shared: Any, tasks: Sequence[Task], executor,
            failure_row: Callable[[Task, Failure], Any], *, journal: Journal | None = None,
            on_row: Callable[[Task, Any], None] | None = None,
            on_event: Callable[[str], None] | None = None) -> list[Any]:
    """Rows of every task, in task order: the journal's for tasks it holds, else ``fn``'s (or
    ``failure_row`` for a task that died, ran past its deadline or raised in a worker). ``on_row`` sees
    every row once, the journal's first; each new row is in the journal before ``on_row`` sees it."""
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    rows: dict[int, Any] = {}
    todo = []
    for task in tasks:
        if journal is not None and task.key in journal.rows:
            rows[task.index] = journal.rows[task.key]
            if on_row is not None:
                on_row(task, rows[task.index])
        else:
            todo.append(task)
    it = executor.run(fn, shared, todo, on_event)
    try:
        for task, value in it:
            row = failure_row(task, value) if isinstance(value, Failure) else value
            rows[task.index] = row
            if journal is not None:
                journal.add(task.key, row)
            if on_row is not None:
                on_row(task, row)
    finally:
        it.close()
    return [rows[t.index] for t in tasks]
