"""The only loop over the graph: evaluate every node in order with a per-op function."""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from ..graph import Graph, Node
from .rules import RULES


def propagate(graph: Graph, value: Any, step: Callable[[Node, list[Any]], Any]) -> dict[str, Any]:
    """Run ``step(node, input_values)`` over the nodes in order, starting from ``value`` at the input;
    returns every tensor name's value."""
    env: dict[str, Any] = {graph.input: value}
    for node in graph.nodes:
        env[node.output] = step(node, [env[name] for name in node.inputs])
    return env


def evaluate(graph: Graph, x: Tensor) -> Tensor:
    """Concrete forward pass."""
    x = graph.check_input(x)
    env = propagate(graph, x, lambda node, xs: RULES[node.op].forward(node.params, *xs))
    return env[graph.output]
