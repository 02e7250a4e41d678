"""Training a base classifier from the command line (``certify train``).

The loss is the cross-entropy of ``f(x + eps)`` with ``eps ~ N(0, noise_sigma^2 I)`` drawn afresh
for every example of every batch (Gaussian data augmentation, Cohen et al. 2019, section 4): the base
classifier a smoothed classifier at that ``sigma`` needs. ``noise_sigma = 0`` is plain training.
Certified losses (IBP, CROWN-IBP, ...) plug in as further ``loss`` choices over the engine's
differentiable bounds.

Checkpoints are state dicts with the architecture (``arch``, ``arch_kwargs``) and ``input_shape``,
which ``certify.models.load_model`` reads without ``--arch``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import CertifyError


@dataclass(frozen=True)
class TrainOptions:
    """Adam with learning rate ``lr`` for ``epochs`` passes of shuffled batches of ``batch_size``."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 3e-3
    noise_sigma: float = 0.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise CertifyError(f"epochs and batch size must be positive, got {self.epochs} and {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CertifyError(f"learning rate must be a positive number, got {self.lr}")
        if not (self.noise_sigma >= 0 and math.isfinite(self.noise_sigma)):
            raise CertifyError(f"noise sigma must be a non-negative number, got {self.noise_sigma}")


def train_classifier(module: nn.Module, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...],
                     options: TrainOptions = TrainOptions(),
                     on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``module`` in place; returns the mean loss of each epoch. ``on_epoch(epoch, loss)`` reports progress."""
    device = torch.device(options.device)
    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    torch.manual_seed(options.seed)
    xt = torch.as_tensor(x, dtype=torch.float32).reshape(-1, *input_shape).to(device)
    yt = torch.as_tensor(y, dtype=torch.long).to(device)
    module.to(device).train()
    opt = torch.optim.Adam(module.parameters(), lr=options.lr)
    ce = nn.CrossEntropyLoss()
    history = []
    for epoch in range(options.epochs):
        perm = torch.randperm(len(yt), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(perm), options.batch_size):
            idx = perm[start:start + options.batch_size]
            xb = xt[idx]
            if options.noise_sigma > 0:
                noise = torch.randn(xb.shape, generator=gen).to(device)
                xb = xb + options.noise_sigma * noise
            loss = ce(module(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(yt))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    module.eval()
    return history


@torch.no_grad()
def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...],
             noise_sigma: float = 0.0, seed: int = 0) -> float:
    """Top-1 accuracy of ``module`` on ``x`` (plus one Gaussian draw of ``noise_sigma`` per example)."""
    module.eval()
    xt = torch.as_tensor(x, dtype=torch.float32).reshape(-1, *input_shape)
    if noise_sigma > 0:
        xt = xt + noise_sigma * torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed))
    return float((module(xt).argmax(1) == torch.as_tensor(y)).float().mean())


def save_checkpoint(module: nn.Module, path: str | Path, arch: str, arch_kwargs: dict[str, Any],
                    input_shape: tuple[int, ...], options: TrainOptions, extra: dict[str, Any] | None = None) -> None:
    """A state-dict checkpoint that ``load_model`` reads on its own (architecture and input shape inside)."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"state_dict": state, "arch": arch, "arch_kwargs": dict(arch_kwargs),
                "input_shape": list(input_shape), "training": {**asdict(options), **(extra or {})}}, path)


def export_onnx(module: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> None:
    module.eval().cpu()
    torch.onnx.export(module, (torch.zeros(1, *input_shape),), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"], opset_version=17)
