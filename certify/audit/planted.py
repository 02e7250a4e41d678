"""Networks with a planted counterexample hidden in a narrow pocket (after Zhou et al., "Testing Neural
Network Verifiers: A Soundness Benchmark with Hidden Counterexamples").

A *spike* is the ReLU bump

    s(x) = ReLU(1 - ||x - x*||_1 / w),   ||x - x*||_1 = sum_i ReLU(x_i - x*_i) + ReLU(x*_i - x_i),

equal to 1 at the planted point ``x*``, positive only on the L1 ball of radius ``w`` around it, and
flat (zero value, zero gradient) everywhere else. The planted network is ``f(x) = f0(x) + s(x) A v``:
``f0`` is a trained body on which the property provably holds, ``v`` solves ``C v = -1`` for the rows
of one unsafe clause, and ``A`` is large enough that ``f(x*)`` lies inside that clause. Outside the
pocket ``f = f0``, so gradient attacks get no signal and random restarts hit the pocket with a
probability that the width ``w`` sets.

For ReLU MLPs the spike is merged into the hidden layers (two hidden layers carry it, deeper ones pass
it on through an identity neuron, since ``s >= 0``), then every hidden layer is permuted and its neurons
positively rescaled, which preserves the function; other bodies get the spike as a parallel branch
added to the logits. Either way the instance is only kept after its counterexample has been replayed
in onnxruntime and an attack gauntlet has missed it (``certify.audit.generate``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Spike(nn.Module):
    """``x -> s(x) * out`` with ``out = A v`` (``[K]``), on flat or image inputs."""

    def __init__(self, center: Tensor, width: float, out: Tensor):
        super().__init__()
        d = center.numel()
        c = center.reshape(-1).float()
        self.dist = nn.Linear(d, 2 * d)
        self.bump = nn.Linear(2 * d, 1)
        self.head = nn.Linear(1, out.numel(), bias=False)
        with torch.no_grad():
            eye = torch.eye(d)
            self.dist.weight.copy_(torch.cat([eye, -eye]))
            self.dist.bias.copy_(torch.cat([-c, c]))
            self.bump.weight.fill_(-1.0 / width)
            self.bump.bias.fill_(1.0)
            self.head.weight.copy_(out.reshape(-1, 1).float())

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.dist(x.reshape(x.shape[0], -1)))
        return self.head(torch.relu(self.bump(h)))


class Branch(nn.Module):
    """``f0(x) + spike(x)``: the spike as a parallel branch (any body)."""

    def __init__(self, body: nn.Module, spike: Spike):
        super().__init__()
        self.body, self.spike = body, spike

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.spike(x)


def mergeable(body: nn.Module) -> bool:
    """A ``Sequential`` of ``Linear, ReLU, Linear, ReLU, ..., Linear`` with at least two hidden layers."""
    if not isinstance(body, nn.Sequential):
        return False
    layers = list(body)
    linears = layers[0::2]
    acts = layers[1::2]
    return (len(layers) >= 5 and len(layers) % 2 == 1 and all(isinstance(m, nn.Linear) for m in linears)
            and all(isinstance(m, nn.ReLU) for m in acts))


def merge(body: nn.Sequential, spike: Spike, generator: torch.Generator) -> nn.Sequential:
    """One MLP computing ``body(x) + spike(x)``, the spike's neurons shuffled among the body's and every
    hidden neuron rescaled by a random positive factor (ReLU(c z) = c ReLU(z) for c > 0)."""
    lin = [m for m in body if isinstance(m, nn.Linear)]
    d = lin[0].in_features
    W = [m.weight.detach().double() for m in lin]
    b = [m.bias.detach().double() for m in lin]
    sw, sb = spike.dist.weight.detach().double(), spike.dist.bias.detach().double()
    bw, bb = spike.bump.weight.detach().double(), spike.bump.bias.detach().double()
    out = spike.head.weight.detach().double()  # [K, 1]
    new_W, new_b = [torch.cat([W[0], sw])], [torch.cat([b[0], sb])]
    # second layer: body block and the bump neuron reading the 2d distance neurons
    h1 = W[0].shape[0]
    top = torch.cat([W[1], torch.zeros(W[1].shape[0], 2 * d, dtype=W[1].dtype)], 1)
    bottom = torch.cat([torch.zeros(1, h1, dtype=W[1].dtype), bw], 1)
    new_W.append(torch.cat([top, bottom]))
    new_b.append(torch.cat([b[1], bb]))
    for k in range(2, len(W) - 1):  # deeper hidden layers pass the bump on unchanged
        hk = W[k].shape[1]
        top = torch.cat([W[k], torch.zeros(W[k].shape[0], 1, dtype=W[k].dtype)], 1)
        bottom = torch.cat([torch.zeros(1, hk, dtype=W[k].dtype), torch.ones(1, 1, dtype=W[k].dtype)], 1)
        new_W.append(torch.cat([top, bottom]))
        new_b.append(torch.cat([b[k], torch.zeros(1, dtype=b[k].dtype)]))
    new_W.append(torch.cat([W[-1], out], 1))
    new_b.append(b[-1].clone())
    # hide the structure: permute and positively rescale every hidden layer
    for k in range(len(new_W) - 1):
        n = new_W[k].shape[0]
        perm = torch.randperm(n, generator=generator)
        scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-0.7, 0.7, generator=generator))
        new_W[k] = new_W[k][perm] * scale[:, None]
        new_b[k] = new_b[k][perm] * scale
        new_W[k + 1] = new_W[k + 1][:, perm] / scale[None, :]
    layers: list[nn.Module] = []
    for k, (w, bias) in enumerate(zip(new_W, new_b)):
        m = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            m.weight.copy_(w.float())
            m.bias.copy_(bias.float())
        layers.append(m)
        if k < len(new_W) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def plant(body: nn.Module, spike: Spike, generator: torch.Generator) -> nn.Module:
    """The planted network: merged into a ReLU MLP when possible, else a parallel branch."""
    return merge(body, spike, generator) if mergeable(body) else Branch(body, spike)
