"""The Ray executor (``--ray [ADDRESS|auto]``): one Ray task per certify task, results as they finish.

* ``auto`` (or no address) joins the cluster this machine already belongs to (``RAY_ADDRESS`` or a
  ``ray start`` here), else starts a local one for the run and stops it at the end; ``HOST:PORT`` (or a
  ``ray://`` client address) joins that cluster.
* Each task asks for one CPU (its worker computes on one torch thread) and, with ``--memory-limit``, that
  much memory, so Ray's scheduler places it where it fits. At most as many tasks as the cluster has CPUs
  are in flight, so a task starts when it is submitted and its deadline (timeout plus a grace period)
  counts from there; a task past its deadline is cancelled (``ray.cancel(force=True)``), not retried.
* Files travel through the object store: every distinct model or property file is ``ray.put`` once and
  written to disk once per worker process; ``shared`` (data arrays, options) once per run, deserialised
  once per worker (:func:`certify.scale.worker.memo`).
* A worker or node that dies mid-task: Ray resubmits the task (``max_retries``), then the task yields
  ``Failure("died", ...)`` with Ray's reason. An exception in the task itself is not retried.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Iterable, Iterator

from ..errors import CertifyError
from .executors import Event, Failure, Task
from .worker import Blob, FileRef, memo, one_thread


class _Shipped:
    """A file in the object store: ``key`` (content hash) and the reference, boxed in a list so Ray
    passes the reference through instead of resolving it for every task."""

    def __init__(self, key: str, box: list):
        self.key, self.box = key, box

    def resolve(self) -> Blob:
        import ray

        return memo(("shipped", self.key), lambda: ray.get(self.box[0]))


def _walk(obj: Any, f: Callable[[Any], Any]) -> Any:
    """``obj`` with ``f`` applied to every :class:`FileRef` / :class:`_Shipped` inside dicts, lists and tuples."""
    if isinstance(obj, (FileRef, _Shipped)):
        return f(obj)
    if isinstance(obj, dict):
        return {k: _walk(v, f) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(v, f) for v in obj)
    return obj


def _ray_task(fn: Callable, shared_box: list, shared_key: str, payload: Any) -> tuple[str, Any]:
    """Runs on a Ray worker: resolve files and ``shared`` (once per worker), then ``fn(shared, payload)``."""
    import ray

    one_thread()
    shared = memo(("shared", shared_key),
                  lambda: _walk(ray.get(shared_box[0]), lambda s: s.resolve()))
    payload = _walk(payload, lambda s: s.resolve())
    try:
        return "ok", fn(shared, payload)
    except Exception as exc:  # noqa: BLE001 - the task's own failure, reported as its row
        return "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"


def _quiet_init(ray, **kwargs: Any) -> None:
    import logging

    ray.init(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False, **kwargs)


class RayPool:
    """Tasks on a Ray cluster (module docstring)."""

    def __init__(self, address: str | None = "auto", retries: int = 2, memory_mb: float | None = None):
        try:
            import ray
        except ImportError:
            raise CertifyError("--ray needs Ray, which is not installed: pip install 'certify[ray]' "
                               "(or pip install ray)") from None
        self.retries, self.memory_mb = retries, memory_mb
        self.started_local = False
        if ray.is_initialized():
            ray.shutdown()
        try:
            if address in (None, "", "auto"):
                try:
                    _quiet_init(ray, address="auto")
                except (ConnectionError, RuntimeError, ValueError):
                    _quiet_init(ray)  # no cluster here: a local one for this run
                    self.started_local = True
            else:
                _quiet_init(ray, address=address)
        except Exception as exc:  # noqa: BLE001 - any failure to join is the user's address or cluster
            raise CertifyError(f"--ray {address}: cannot join the Ray cluster ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})") from None
        self._ray = ray
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(_ray_task)
        self._inflight: dict = {}

    def _ship(self, blobs: dict, ref: FileRef) -> _Shipped:
        blob = Blob.of(ref)
        if blob.key not in blobs:
            blobs[blob.key] = _Shipped(blob.key, [self._ray.put(blob)])
        return blobs[blob.key]

    def run(self, fn: Callable, shared: Any, tasks: Iterable[Task], on_event: Event | None = None
            ) -> Iterator[tuple[Task, Any]]:
        ray = self._ray
        blobs: dict[str, _Shipped] = {}
        shared_ref = ray.put(_walk(shared, lambda r: self._ship(blobs, r)))
        shared_key = shared_ref.hex()
        opts: dict[str, Any] = dict(num_cpus=1, max_retries=self.retries, retry_exceptions=False)
        if self.memory_mb:
            opts["memory"] = int(self.memory_mb * 2 ** 20)
        remote = self._remote.options(**opts)
        pending = list(tasks)[::-1]
        self._inflight = {}  # ref -> (task, submitted)
        try:
            while pending or self._inflight:
                while pending and len(self._inflight) < self.workers:
                    task = pending.pop()
                    payload = _walk(task.payload, lambda r: self._ship(blobs, r))
                    self._inflight[remote.remote(fn, [shared_ref], shared_key, payload)] = (task, time.monotonic())
                now = time.monotonic()
                waits = [t.deadline - (now - s) for t, s in self._inflight.values() if t.deadline is not None]
                done, _ = ray.wait(list(self._inflight), num_returns=1,
                                   timeout=max(0.0, min(waits)) if waits else None)
                for ref in done:
                    task, _ = self._inflight.pop(ref)
                    try:
                        status, value = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # died (retries spent), node lost, object lost
                        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        if on_event:
                            on_event(f"{task.key}: the task failed after {self.retries} retries ({why})")
                        yield task, Failure("died", f"{type(exc).__name__}: {why}")
                        continue
                    yield task, value if status == "ok" else Failure("error", value)
                now = time.monotonic()
                for ref, (task, started) in list(self._inflight.items()):
                    if task.deadline is not None and now - started > task.deadline:
                        ray.cancel(ref, force=True)
                        del self._inflight[ref]
                        if on_event:
                            on_event(f"{task.key} ran past {task.deadline:g}s: its task was cancelled")
                        yield task, Failure("deadline", f"cancelled after {task.deadline:g}s")
        finally:
            for ref in list(self._inflight):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            self._inflight = {}

    def close(self) -> None:
        if self._ray.is_initialized():
            self._ray.shutdown()
