"""Interval bound propagation (Gowal et al. 2018): push a box through the graph op by op.

Each op's rule returns a box containing the op's image of its input boxes, so by induction the
output box contains ``f(x)`` for every ``x`` in the input box. With ``Rounding(sound=True)`` each rule
also covers floating-point rounding (see ``fp``), and with ``rounding.runtime`` each node's box is
widened by the runtime's perturbation (``rules.node_box``), so the result bounds the exact network and
its runtime evaluation; in fast mode it is the plain floating-point transform (differentiable, for training).
"""
from __future__ import annotations

import torch

from ..graph import Graph
from ..sets import Box
from .fp import FAST, Rounding, sound_context, sound_rounding
from .rules import node_box
from .traverse import propagate


def interval_bounds(graph: Graph, box: Box, rounding: Rounding = FAST, all_nodes: bool = False):
    """Output box of ``graph`` over the input box (``[B, *input_shape]``); with ``all_nodes`` the
    boxes of every tensor by name."""
    box = Box(graph.check_input(box.lower), graph.check_input(box.upper))
    box = rounding.input_box(box)
    env = propagate(graph, box, lambda node, boxes: node_box(node, boxes, rounding)[0])
    return env if all_nodes else env[graph.output]


def sound_interval_bounds(graph: Graph, box: Box, device: str | torch.device | None = None,
                          all_nodes: bool = False):
    """Output box that contains the exact real-arithmetic image and, under the graph's default
    ``runtime`` semantics, every value its runtime can produce (``fp.sound_rounding``): float64,
    outward rounding."""
    g = graph.to(device=device, dtype=torch.float64)
    with sound_context():
        return interval_bounds(g, box.to(device=g.device, dtype=torch.float64), sound_rounding(g), all_nodes)
