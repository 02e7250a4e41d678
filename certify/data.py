"""Labelled data sets: ``.npz`` files with arrays ``x`` and ``y``, ``.pt`` files holding
``{'x': ..., 'y': ...}``, and the built-in ``digits:train`` / ``digits:test`` (scikit-learn's 8x8
digits scaled to [0, 1], the fixed split the bundled example was trained on)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CertifyError

BUILTIN = ("digits:train", "digits:test")


def load_labelled(path: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (float64, one row per example) and integer labels ``y``; errors name the file and what is wrong."""
    if path in BUILTIN:
        x, y = _builtin(path)
    else:
        x, y = _from_file(path)
    if x.shape[0] != y.shape[0]:
        raise CertifyError(f"{path}: x has {x.shape[0]} rows but y has {y.shape[0]} labels")
    if limit is not None:
        if limit < 1:
            raise CertifyError(f"--limit: expected a positive number of inputs, got {limit}")
        x, y = x[:limit], y[:limit]
    if x.shape[0] == 0:
        raise CertifyError(f"{path}: no labelled inputs")
    return x, y


def _builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from .examples.digits import load_digits_split
        xtr, ytr, xte, yte = load_digits_split()
    except ImportError:
        raise CertifyError(f"{name} needs scikit-learn (pip install scikit-learn), or pass an .npz file") from None
    x, y = (xtr, ytr) if name.endswith(":train") else (xte, yte)
    return x.astype(np.float64), y.astype(np.int64)


def _from_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    p = Path(path)
    if not p.exists():
        hint = f" (built-in data sets: {', '.join(BUILTIN)})" if ":" in path else ""
        raise CertifyError(f"{path}: no such file{hint}")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise CertifyError(f"{path}: expected a dict with 'x' and 'y', got {type(obj).__name__}")
            arrays = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in obj.items()}
    except CertifyError:
        raise
    except Exception as exc:  # torch's messages span many lines: keep the first, the CLI prints one line
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CertifyError(f"{path}: cannot read data file, expected .npz or a .pt holding {{'x': ..., 'y': ...}} "
                           f"({type(exc).__name__}: {first})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise CertifyError(f"{path}: missing array(s) {missing}; found {sorted(arrays)}")
    return np.asarray(arrays["x"], dtype=np.float64), np.asarray(arrays["y"]).astype(np.int64).reshape(-1)
