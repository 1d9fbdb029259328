"""Ordered process-parallel map for the CPU-bound loops of the analysis (the forecast
backtest's models, the predictors' held-out groups): the same results, in the same order,
as a plain loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> list[R]:
    """``[fn(x) for x in items]``, spread over ``workers`` processes when ``workers`` > 1
    and there are several items (``fn`` and the items must pickle: a module-level function,
    or a ``functools.partial`` of one)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))
