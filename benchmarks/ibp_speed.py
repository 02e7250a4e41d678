"""IBP time relative to a plain forward pass of the same network, in the same process.

    python benchmarks/ibp_speed.py [--batch 64] [--threads 1]

For each MNIST-FC network (../shared/benchmarks/mnist_fc) and the bundled digits MLP: the median time
of the graph's forward pass (float32), of fast IBP (float32, the differentiable transform used for
training) and of sound IBP (float64 with outward rounding, the transform behind a proved verdict),
on a batch of L-inf boxes of radius 0.03 around random points. When auto_LiRPA is importable, its
IBP is timed on the same inputs as a peer.
"""
from __future__ import annotations

import argparse
import importlib.util

import torch

from certify.engine import FAST, interval_bounds, sound_interval_bounds
from certify.models import load_model
from certify.sets import Box

from common import REPO, markdown, shared, timeit, timeit_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = [REPO / "certify/examples/digits/digits_mlp.onnx"]
    paths += [shared("mnist_fc") / "onnx" / f"mnist-net_256x{k}.onnx" for k in (2, 4, 6)]
    rows = []
    for path in paths:
        model = load_model(path)
        g32 = model.graph.to(dtype=torch.float32)
        x = torch.rand(args.batch, *model.input_shape)
        box32 = Box((x - 0.03).clamp(0, 1), (x + 0.03).clamp(0, 1))
        box64 = box32.to(dtype=torch.float64)
        with torch.no_grad():
            t_fwd, t_fast, r_fast = timeit_pair(lambda: g32.forward(x), lambda: interval_bounds(g32, box32, FAST),
                                                args.repeat)
            _, t_sound, r_sound = timeit_pair(lambda: g32.forward(x), lambda: sound_interval_bounds(model.graph, box64),
                                              args.repeat)
        peer = "-"
        if importlib.util.find_spec("auto_LiRPA") is not None:
            peer = f"{_lirpa_ibp_time(model, box32, args.repeat) / t_fwd:.2f}"
        rows.append([path.name, args.batch, f"{t_fwd * 1e3:.3f}", f"{t_fast * 1e3:.3f}", f"{r_fast:.2f}",
                     f"{t_sound * 1e3:.3f}", f"{r_sound:.2f}", peer])
    print(markdown(rows, ["model", "batch", "forward ms", "IBP fp32 ms", "IBP fp32 / fwd", "IBP sound fp64 ms",
                          "sound / fwd", "auto_LiRPA IBP / fwd"]))


def _lirpa_ibp_time(model, box: Box, repeat: int) -> float:
    from verifiers.lirpa import bounded_box

    bm, bt = bounded_box(model.graph, box)
    return timeit(lambda: bm.compute_bounds(x=(bt,), method="IBP"), repeat)


if __name__ == "__main__":
    main()
