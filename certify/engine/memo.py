"""Results shared along one ``auto`` chain. Inside ``shared()``, a step that repeats an identical earlier
call (the same graph object, and exactly equal input set, rows and options) gets that call's result back
instead of computing it again: alpha-CROWN's root slopes are branch-and-bound's, and CROWN's sound bound
is alpha-CROWN's starting point. Shared, not copied: callers treat the results as read-only.

The memo keeps the ``KEEP`` most recent results: branch-and-bound's batches pass through the same functions
(``sound_crown_lower`` re-certifies every batch of closing domains), and an unbounded memo would hold every
batch's boxes for the whole search (hundreds of MB on a long ACAS Xu search) and scan them all on each call."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

_MEMO: ContextVar[list | None] = ContextVar("certify_chain_memo", default=None)

#: Results kept (the most recent): a chain step's, per spec of a property, are recalled by the next step.
KEEP = 16


@contextmanager
def shared() -> Iterator[None]:
    """Within the block, ``recall`` hands back results of identical earlier calls."""
    token = _MEMO.set([])
    try:
        yield
    finally:
        _MEMO.reset(token)


def same(a: Any, b: Any) -> bool:
    """Exact equality of input sets / tensors / plain values (tensors: shape, dtype, device and every value)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and a.device == b.device and bool(torch.equal(a, b)))
    if isinstance(a, dict) or isinstance(b, dict):  # slopes by name (RowSlopes: and their rows)
        return (type(a) is type(b) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
                and same(getattr(a, "rows", None), getattr(b, "rows", None)))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a) if f.compare)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def recall(kind: str, graph: object, key: tuple, compute: Callable[[], Any]) -> Any:
    """``compute()``, or inside ``shared()`` the result of an earlier call with the same ``kind``, graph
    object and an exactly equal ``key``."""
    memo = _MEMO.get()
    if memo is None:
        return compute()
    for k, g, key_, result in memo:
        if k == kind and g is graph and same(key_, key):
            return result
    result = compute()
    memo.append((kind, graph, key, result))
    del memo[:-KEEP]
    return result
