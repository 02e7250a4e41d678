"""Executors: run ``fn(shared, payload)`` for every task and yield ``(task, value)`` as tasks finish.

* :class:`Serial` runs in this process, in order (exceptions propagate, as in a plain loop).
* :class:`ProcessPool` (``--workers N``) runs N local worker processes (spawned, one torch thread each).
  ``shared`` is sent once per worker (a model travels once per worker, not once per task); tasks are
  handed out one at a time, so a slow task never holds others back.
* ``certify.scale.ray_pool.RayPool`` (``--ray``) does the same on a Ray cluster.

Failures never lose a task: the value yielded is then a :class:`Failure`. A worker that dies mid-task
(killed, out of memory, a crash in native code) has its task retried on a fresh worker up to
``retries`` times, then yields ``Failure("died", ...)``; a task still running ``deadline`` seconds after it
started is killed and yields ``Failure("deadline", ...)`` (it is not retried: it would hang again); an
exception raised by ``fn`` yields ``Failure("error", "Type: message")``. Closing the iterator (Ctrl-C)
stops every worker; tasks already yielded are the caller's to keep.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

#: Seconds a task may run past its own timeout before its worker is killed (start-up, model loading, replay).
GRACE_S = 60.0


@dataclass(frozen=True)
class Task:
    """One unit of work: ``index`` fixes its place in the final output, ``key`` names it in a resume
    journal, ``deadline`` (seconds from its start) bounds it."""

    index: int
    key: str
    payload: Any
    deadline: float | None = None


@dataclass(frozen=True)
class Failure:
    """Why a task has no value: ``kind`` is ``died``, ``deadline`` or ``error``."""

    kind: str
    reason: str


Event = Callable[[str], None]


class Serial:
    """In-process, in order: the plain loop."""

    workers = 1

    def run(self, fn: Callable, shared: Any, tasks: Iterable[Task], on_event: Event | None = None
            ) -> Iterator[tuple[Task, Any]]:
        from .worker import forget

        try:
            for task in tasks:
                yield task, fn(shared, task.payload)
        finally:
            forget()

    def close(self) -> None:
        pass


def _worker_main(conn, fn: Callable, shared: Any) -> None:
    """A worker's loop: receive ``(index, payload)``, send ``("ok"|"error", index, value)``; ``None`` ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    from .worker import one_thread

    one_thread()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        index, payload = msg
        try:
            conn.send(("ok", index, fn(shared, payload)))
        except Exception as exc:  # noqa: BLE001 - reported as the task's failure, the worker lives on
            conn.send(("error", index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))


class _Worker:
    def __init__(self, ctx, fn: Callable, shared: Any):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, shared), daemon=True)
        try:  # started with Ctrl-C ignored (kept across exec): no traceback from a worker still importing
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread: nothing to restore
            previous = None
        try:
            self.proc.start()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        child.close()
        self.task: Task | None = None
        self.started = 0.0

    def give(self, task: Task) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send((task.index, task.payload))

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessPool:
    """``workers`` local processes (``spawn``: no state inherited from a multi-threaded parent)."""

    def __init__(self, workers: int, retries: int = 2):
        if workers < 1:
            raise ValueError("workers must be positive")
        self.workers, self.retries = workers, retries
        self._pool: list[_Worker] = []

    def run(self, fn: Callable, shared: Any, tasks: Iterable[Task], on_event: Event | None = None
            ) -> Iterator[tuple[Task, Any]]:
        ctx = mp.get_context("spawn")
        pending = deque(tasks)
        attempts: dict[int, int] = {}
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # inherited by the spawned workers
        try:
            self._pool = [_Worker(ctx, fn, shared) for _ in range(min(self.workers, len(pending)))]
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        try:
            while pending or any(w.task is not None for w in self._pool):
                for i, w in enumerate(self._pool):
                    if w.task is None and pending:
                        if not w.proc.is_alive():  # died while idle: nothing lost, replace it
                            w.kill()
                            w = self._pool[i] = _Worker(ctx, fn, shared)
                        task = pending.popleft()
                        try:
                            w.give(task)
                        except OSError:  # died just now: the task did not start; the death is seen below
                            pass
                busy = [w for w in self._pool if w.task is not None]
                now = time.monotonic()
                deadlines = [w.started + w.task.deadline - now for w in busy if w.task.deadline is not None]
                ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                             timeout=max(0.0, min(deadlines)) if deadlines else None)
                for i, w in enumerate(list(self._pool)):
                    if w.task is None:
                        continue
                    task = w.task
                    if w.conn in ready:
                        try:
                            status, _, value = w.conn.recv()
                        except (EOFError, OSError):
                            status = None  # died while sending: handled as a death below
                        else:
                            w.task = None
                            yield task, value if status == "ok" else Failure("error", value)
                            continue
                    if w.proc.sentinel in ready or not w.proc.is_alive():
                        w.kill()
                        self._pool[i] = _Worker(ctx, fn, shared)
                        attempts[task.index] = attempts.get(task.index, 0) + 1
                        why = f"the worker running {task.key} died ({_exit_text(w.proc.exitcode)})"
                        if attempts[task.index] <= self.retries:
                            if on_event:
                                on_event(f"{why}; retrying ({attempts[task.index]} of {self.retries})")
                            pending.appendleft(task)
                        else:
                            if on_event:
                                on_event(f"{why}; giving up after {self.retries} retries")
                            yield task, Failure("died", f"{why}, {attempts[task.index]} times")
                    elif task.deadline is not None and time.monotonic() - w.started > task.deadline:
                        w.kill()
                        self._pool[i] = _Worker(ctx, fn, shared)
                        if on_event:
                            on_event(f"{task.key} ran past {task.deadline:g}s: its worker was stopped")
                        yield task, Failure("deadline", f"stopped after {task.deadline:g}s (its timeout plus "
                                                        f"{GRACE_S:g}s)")
        finally:
            self.close()

    def close(self) -> None:
        for w in self._pool:
            try:
                if w.task is None and w.proc.is_alive():
                    w.conn.send(None)
            except OSError:
                pass
        for w in self._pool:
            w.proc.join(0.5 if w.task is None else 0)
            w.kill()
        self._pool = []
