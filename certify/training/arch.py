"""Built-in architectures for certified training on a CPU: an MLP and two small CNNs with BatchNorm in the
style of CTBench's CNN-7 (convolution, BatchNorm, ReLU blocks, then a dense block), sized so that an epoch of
IBP training on 60,000 28x28 images takes about a minute on two cores.

Every one starts with ``Normalize(mean, std)``: the data set's normalisation is part of the saved model, so
inputs, eps and ``--clip`` stay in the [0, 1] pixel space the user thinks in.

* ``mlp``: ``hidden`` dense layers (default 2 x 256) with BatchNorm.
* ``cnn3``: conv 16 4x4/2, conv 32 4x4/2, dense -> classes (3 weight layers).
* ``cnn5``: conv 16 3x3/1, conv 32 4x4/2, conv 64 4x4/2, dense 256, dense -> classes (5 weight layers).

Each block is conv (or dense), BatchNorm, ReLU; ``width`` scales the channel and unit counts.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

#: short names accepted by ``certify train --arch``
ARCHS = {"mlp": "certify.training.arch:MLP", "cnn3": "certify.training.arch:CNN3", "cnn5": "certify.training.arch:CNN5"}


class Normalize(nn.Module):
    """``(x - mean) / std``, stored as ``x * scale + shift`` (exported as one Mul and one Add)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0 / std))
        self.register_buffer("shift", torch.tensor(-mean / std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _conv_block(c_in: int, c_out: int, k: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


def _dense_block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]


class _Net(nn.Module):
    def __init__(self, input_shape: Sequence[int], mean: float, std: float):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.norm = Normalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x.reshape(x.shape[0], *self.input_shape)))


class MLP(_Net):
    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), n_classes: int = 10, hidden: Sequence[int] = (256, 256),
                 mean: float = 0.0, std: float = 1.0):
        super().__init__(input_shape, mean, std)
        layers: list[nn.Module] = [nn.Flatten()]
        n = math.prod(self.input_shape)
        for h in hidden:
            layers += _dense_block(n, int(h))
            n = int(h)
        self.body = nn.Sequential(*layers, nn.Linear(n, n_classes))


def _conv_out(size: int, k: int, stride: int) -> int:
    return (size + 2 - k) // stride + 1


class _CNN(_Net):
    CONVS: tuple[tuple[int, int, int], ...] = ()  # (channels, kernel, stride)
    DENSE: tuple[int, ...] = ()

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), n_classes: int = 10, width: float = 1.0,
                 mean: float = 0.0, std: float = 1.0):
        super().__init__(input_shape, mean, std)
        if len(self.input_shape) != 3:
            raise ValueError(f"a CNN needs an image input shape (C, H, W), got {list(self.input_shape)}")
        c, h, w = self.input_shape
        layers: list[nn.Module] = []
        for ch, k, s in self.CONVS:
            ch = max(1, round(ch * width))
            layers += _conv_block(c, ch, k, s)
            c, h, w = ch, _conv_out(h, k, s), _conv_out(w, k, s)
        layers.append(nn.Flatten())
        n = c * h * w
        for units in self.DENSE:
            units = max(1, round(units * width))
            layers += _dense_block(n, units)
            n = units
        self.body = nn.Sequential(*layers, nn.Linear(n, n_classes))


class CNN3(_CNN):
    CONVS = ((16, 4, 2), (32, 4, 2))


class CNN5(_CNN):
    CONVS = ((16, 3, 1), (32, 4, 2), (64, 4, 2))
    DENSE = (256,)
