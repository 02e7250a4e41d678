"""IBP backend: sound interval bounds (float64, outward rounding), optionally after a PGD attack.

A clause is certified unreachable when one of its rows has a certified lower bound
``min (C_j y - d_j) > 0``. Two sound bounds are computed per row and the larger is kept:

* the output box's (``fp.certify_margin``): ``sum_k (C+_jk l_k - C-_jk u_k) - d_j``;
* the *elided* one (Gowal et al. 2018): the network's trailing affine layers (usually the last dense
  layer) are composed with ``C`` and bounded over the IBP box of their input, so ``y_label - y_other`` is
  bounded as one affine function of the penultimate layer instead of logit by logit. The composition is
  one CROWN pass over the affine tail alone (``engine.crown.sound_crown_lower``: float64, the tail's
  rounding and runtime error included) started from the penultimate box, which contains every exact and
  runtime value of that tensor. This is the bound IBP-trained networks are trained against.
"""
from __future__ import annotations

import torch

from certify.bounding import BoundOptions, BoundVerifier
from certify.budget import Budget
from certify.engine import certify_margin, sound_interval_bounds
from certify.engine.crown import sound_crown_lower
from certify.engine.rules import RULES
from certify.graph import Graph
from certify.models import Model
from certify.sets import Box
from certify.spec import Spec


def affine_tail(graph: Graph) -> Graph | None:
    """The trailing chain of single-input affine ops as a graph of its own (its input: the tensor the
    chain starts from), or None when the output is not produced by one."""
    tail, cur = [], graph.output
    for node in reversed(graph.nodes):
        if node.output != cur:
            continue
        if not (RULES[node.op].linear and len(node.inputs) == 1) or node.inputs[0] == graph.input:
            break
        tail.insert(0, node)
        cur = node.inputs[0]
    if not tail:
        return None
    shapes = {graph.input: graph.input_shape, **{n.output: n.shape for n in graph.nodes}}
    return Graph(cur, shapes[cur], tuple(tail), graph.output, graph.output_shape, graph.meta)


def row_bounds(model: Model, spec: Spec, options: BoundOptions, budget: Budget):
    """Certified lower bounds of ``C_r y - d_r``, ``[B, R]``: the better of the output box's and the elided one."""
    boxes = sound_interval_bounds(model.graph, spec.input.bounds(), device=options.device, all_nodes=True)
    y = boxes[model.graph.output]
    C, d, _ = spec.matrix()
    C, d = C.to(y.lower.device), d.to(y.lower.device)
    value = certify_margin(C, d, y)
    tail = affine_tail(model.graph)
    if tail is not None:
        start = boxes[tail.input]
        elided = sound_crown_lower(tail, Box(start.lower, start.upper), C, d, device=options.device)
        value = torch.maximum(value, elided)
    return value


class IBP(BoundVerifier):
    name = "ibp"
    description = "interval bound propagation with the last layer elided, float64 with outward rounding (sound, incomplete)"
    row_bounds = staticmethod(row_bounds)
