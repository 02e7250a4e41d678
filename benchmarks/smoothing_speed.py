"""Randomized-smoothing sampling throughput against a plain batched forward pass, same process.

    python benchmarks/smoothing_speed.py [--batch 10000] [--threads 1]

For each base network: samples per second of ``Smoothed.counts`` (Gaussian fill of the batch buffer,
shift, forward, argmax, bincount, over 10 batches) and of the plain forward pass of the same graph on
one fixed batch of the same size (the peer: what the network costs with no sampling at all), and the
ratio certify / forward (the issue's target: >= 0.9). ``certify`` is the default sampler (through the
first layer when that layer has fewer outputs than inputs); ``input-space`` draws the noise on the
inputs, as a plain implementation does. Networks: the bundled digits MLP, the MNIST-FC
networks of ../shared (when present), and two conv nets built here (digits 1x8x8 and MNIST-shaped
1x28x28, random weights: throughput does not depend on the weights).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from certify.examples.digits import DigitsCNN
from certify.models import from_module, load_model
from certify.smoothing import Smoothed, example_generator

from common import REPO, SHARED, markdown


def mnist_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def networks():
    yield "digits MLP (bundled)", load_model(REPO / "certify/examples/digits/digits_mlp.onnx")
    for k in (2, 4, 6):
        path = SHARED / "mnist_fc" / "onnx" / f"mnist-net_256x{k}.onnx"
        if path.exists():
            yield f"mnist-net_256x{k}", load_model(path)
    torch.manual_seed(0)
    yield "digits CNN 1x8x8", from_module(DigitsCNN(), (1, 8, 8))
    yield "MNIST CNN 1x28x28", from_module(mnist_cnn(), (1, 28, 28))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=10, help="batches per timed sampling run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, model in networks():
        g = Smoothed.of_model(model, 0.25)
        x = torch.rand(model.input_shape)
        batch = torch.rand(args.batch, *model.input_shape)
        n = args.batch * args.batches

        def forward_rate() -> float:  # the same number of batches as one sampling run, timed the same way
            with torch.inference_mode():
                g.base(batch)
                t0 = time.perf_counter()
                for _ in range(args.batches):
                    g.base(batch)
                return n / (time.perf_counter() - t0)

        plain = Smoothed.of_model(model, 0.25, factorize=False)

        def rate(sampler) -> float:
            sampler.counts(x, args.batch, args.batch, example_generator(0, 0))  # warm
            t0 = time.perf_counter()
            sampler.counts(x, n, args.batch, example_generator(0, 0))
            return n / (time.perf_counter() - t0)

        fwd, smp, inp = [], [], []
        for _ in range(args.rounds):  # interleaved rounds: drift of the machine's speed affects all alike
            fwd.append(forward_rate())
            smp.append(rate(g))
            inp.append(rate(plain))
        med = statistics.median
        rows.append([name, args.batch, "yes" if g.first_layer is not None else "no", f"{med(fwd):,.0f}",
                     f"{med(smp):,.0f}", f"{med(s / f for s, f in zip(smp, fwd)):.3f}", f"{med(inp):,.0f}",
                     f"{med(s / f for s, f in zip(inp, fwd)):.3f}"])
        print(rows[-1], flush=True)
    print()
    print(markdown(rows, ["network", "batch", "through first layer", "forward samples/s", "certify samples/s",
                          "ratio certify/forward", "input-space samples/s", "ratio input-space/forward"]))


if __name__ == "__main__":
    main()
