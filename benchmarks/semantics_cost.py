"""The cost of covering the runtime's floating point (``--semantics runtime``, the default) against the
exact network alone (``--semantics real``): CROWN bound and time per instance of a VNN-COMP suite, both
semantics in the same process, instance by instance (so machine drift affects both alike).

    python benchmarks/semantics_cost.py acasxu mnist_fc

For each suite: the median and largest loss of the sound CROWN bound (real minus runtime, per clause's
best row), that loss relative to the bound's magnitude, the median time ratio runtime / real, and the
instances whose CROWN verdict alone changes (proved under real, not under runtime).
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from certify.bench import read_instances
from certify.engine.crown import sound_crown_lower
from certify.models import load_model
from certify.spec import clause_max
from certify.vnnlib import read_vnnlib

from common import shared


def crown_clauses(graph, prop):
    """Per spec of the property, per clause: the best row's sound CROWN bound; and the seconds."""
    t0 = time.perf_counter()
    out = []
    for spec in prop.specs:
        spec = spec.reshape_input(graph.input_shape)
        C, d, clause_of_row = spec.matrix()
        rows = sound_crown_lower(graph, spec.input, C, d)
        out.append(clause_max(rows, clause_of_row, len(spec.unsafe))[0])
    return torch.cat(out), time.perf_counter() - t0


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    for name in names:
        root = shared(name)
        insts = read_instances(root / "instances.csv")
        models, losses, rel, ratios, changed, tighter = {}, [], [], [], [], 0
        for inst in insts:
            if inst.onnx not in models:
                models[inst.onnx] = load_model(inst.onnx)
            model, prop = models[inst.onnx], read_vnnlib(inst.vnnlib)
            real, t_real = crown_clauses(model.graph.with_semantics("real"), prop)
            runtime, t_rt = crown_clauses(model.graph, prop)
            tighter += int(bool((runtime > real).any()))  # CROWN's adaptive slopes follow the boxes
            loss = (real - runtime)
            losses.append(float(loss.max()))
            rel.append(float((loss / (1e-12 + real.abs())).max()))
            ratios.append(t_rt / t_real)
            if bool((real > 0).all()) and not bool((runtime > 0).all()):
                changed.append(f"{inst.onnx.name} {inst.vnnlib.name}")
        print(f"## {name}: {len(insts)} instances")
        print(f"bound loss (real - runtime): median {statistics.median(losses):.3g}, max {max(losses):.3g}; "
              f"relative to |bound|: median {statistics.median(rel):.3g}, max {max(rel):.3g}")
        print(f"time runtime / real: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}")
        print(f"proved by CROWN under real but not under runtime: {len(changed)} {changed}")
        print(f"instances where a runtime clause bound is tighter (other intermediate boxes, other slopes): {tighter}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["acasxu", "mnist_fc"])
