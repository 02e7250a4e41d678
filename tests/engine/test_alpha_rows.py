"""alpha-CROWN over the unstable rows only, against the same optimisation over every row and against samples.

The intermediate slopes are optimised only for the rows of values whose interval contains 0
(``alpha._unstable``): a stable value meets an exact ReLU, so its slopes cannot move the final bound. The
checks: ``compute_boxes`` restricted to every row is ``compute_boxes``; the bound with unstable rows only
keeps at least 95 % of the gain over CROWN of the bound with every row (``_unstable`` patched to return all of
them; what it gives up comes from IBP boxes after a stable value's tighter box); it is at least CROWN's and
at most the smallest sampled value of each row.
"""
from __future__ import annotations

import pytest
import torch

import certify.engine.alpha as alpha_mod
from certify.engine.alpha import AlphaOptions, alpha_crown_lower
from certify.engine.crown import _needs_bounds, compute_boxes, sound_crown_lower
from certify.engine.fp import FAST
from certify.graph import Graph, Node
from certify.sets import Box


def _mlp(seed: int, widths=(6, 12, 12, 10, 4)) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    nodes, prev = [], "x"
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        params = {"weight": torch.randn(b, a, generator=gen, dtype=torch.float64) / a ** 0.5,
                  "bias": 0.3 * torch.randn(b, generator=gen, dtype=torch.float64)}
        nodes.append(Node(f"l{i}", "linear", (prev,), f"z{i}", params, (b,)))
        prev = f"z{i}"
        if i < len(widths) - 2:
            nodes.append(Node(f"r{i}", "relu", (prev,), f"h{i}", {}, (b,)))
            prev = f"h{i}"
    return Graph("x", (widths[0],), tuple(nodes), prev, (widths[-1],))


def _problem(seed: int):
    graph = _mlp(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(2, 6, generator=gen, dtype=torch.float64)
    box = Box(x - 0.15, x + 0.15)
    C = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    return graph, box, C, torch.zeros(2, 3, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(3))
def test_boxes_refined_on_every_row_by_index_are_the_plain_boxes(seed):
    graph, box, _, _ = _problem(seed)
    g = graph.to(dtype=torch.float32)
    b = box.to(dtype=torch.float32)
    plain = compute_boxes(g, b, FAST)
    rows = {t: torch.arange(plain[t].lower[0].numel()) for t in _needs_bounds(g)}
    indexed = compute_boxes(g, b, FAST, rows=rows)
    for name, want in plain.items():
        assert torch.equal(indexed[name].lower, want.lower) and torch.equal(indexed[name].upper, want.upper), name


@pytest.mark.parametrize("seed", range(4))
def test_unstable_rows_only_give_the_bound_of_every_row_and_bound_every_sample(seed, monkeypatch):
    graph, box, C, d = _problem(seed)
    opts = AlphaOptions(iterations=15, every_row_elements=0)  # these nets are small: force the restriction
    some = alpha_crown_lower(graph, box, C, d, opts)
    default = alpha_crown_lower(graph, box, C, d, AlphaOptions(iterations=15))  # small: every row, plain layout
    monkeypatch.setattr(alpha_mod, "_unstable", lambda b: torch.arange(b.lower[0].numel()))
    every = alpha_crown_lower(graph, box, C, d, opts)
    assert torch.allclose(default, every, atol=1e-9)
    crown = sound_crown_lower(graph, box, C, d)
    # the same up to the IBP intersection (a stable value's tighter box can tighten a later IBP box): at least
    # 95 % of every row's gain over CROWN, and never more than the optimisation over every row
    assert (some >= crown - 1e-12).all()
    assert (some - crown >= 0.95 * (every - crown) - 1e-9).all(), (some, every, crown)
    assert (some <= every + 1e-6 * (1 + every.abs().max())).all()
    gen = torch.Generator().manual_seed(seed)
    pts = box.lower + (box.upper - box.lower) * torch.rand(4000, *box.lower.shape, generator=gen, dtype=torch.float64)
    values = torch.einsum("brk,nbk->nbr", C, graph(pts.flatten(0, 1)).reshape(4000, 2, -1)) - d
    assert (some <= values.min(0).values + 1e-9).all()
