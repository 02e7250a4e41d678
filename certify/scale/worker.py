"""What runs inside a worker: files that travel with the tasks, and a per-process memo so a model is loaded
once per worker, not once per task.

A :class:`FileRef` names a file by path. On the machine that started the run (serial, ``--workers``) it is
read where it is; for Ray the driver turns it into a :class:`Blob` (the file's bytes in Ray's object store,
so no shared file system is assumed) and the worker writes it once into a private temporary folder, keeping
the file name (its suffix tells the loaders what it is).
"""
from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_MEMO: dict[Any, Any] = {}
_TMP: list[str] = []


@dataclass(frozen=True)
class FileRef:
    """A file the task needs, by path (read where the task runs: same machine, or a shared file system)."""

    path: str

    def local(self) -> Path:
        return Path(self.path)

    @property
    def key(self) -> str:
        path = Path(self.path).resolve()
        try:
            st = path.stat()
        except OSError:  # the loader says what is wrong with it
            return str(path)
        return f"{path}:{st.st_mtime_ns}:{st.st_size}"


@dataclass(frozen=True)
class Blob:
    """A file's bytes, shipped to the worker; ``local()`` materialises it once per process."""

    name: str
    data: bytes
    digest: str

    @classmethod
    def of(cls, ref: FileRef) -> "Blob":
        data = Path(ref.path).read_bytes()
        return cls(Path(ref.path).name, data, hashlib.sha256(data).hexdigest())

    @property
    def key(self) -> str:
        return self.digest

    def local(self) -> Path:
        def write() -> Path:
            if not _TMP:
                _TMP.append(tempfile.mkdtemp(prefix="certify-worker-"))
                atexit.register(shutil.rmtree, _TMP[0], True)
            folder = Path(_TMP[0]) / self.digest[:16]
            folder.mkdir(exist_ok=True)
            path = folder / self.name
            path.write_bytes(self.data)
            return path

        return memo(("blob", self.digest), write)


def memo(key: Any, make: Callable[[], Any]) -> Any:
    """``make()`` once per worker process for ``key`` (a loaded model, a parsed property)."""
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def forget() -> None:
    """Drop every memoised object (an in-process run's models, when the run ends)."""
    _MEMO.clear()


def one_thread() -> None:
    """Workers compute on one torch thread each: on a shared machine more would oversubscribe its cores."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def load_model_ref(ref: "FileRef | Blob", **kwargs: Any):
    """``certify.models.load_model`` on the task's file, memoised per worker (by path or content hash)."""
    from ..models import load_model

    return memo(("model", ref.key, tuple(sorted(kwargs.items()))), lambda: load_model(ref.local(), **kwargs))


def model_of(value: Any, load: dict):
    """The task's model: ``value`` itself when the driver passed its loaded ``Model`` (serial runs), else
    :func:`load_model_ref` of the file reference with the driver's loading options ``load``."""
    return value if hasattr(value, "graph") else load_model_ref(value, **load)


def read_vnnlib_ref(ref: "FileRef | Blob"):
    from ..vnnlib import read_vnnlib

    return memo(("vnnlib", ref.key), lambda: read_vnnlib(ref.local()))
