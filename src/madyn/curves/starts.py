"""Starting points for the fits by variable projection: a grid over the nonlinear
parameters, with the parameters that enter linearly solved by (vectorised) linear least
squares at every grid point at once; and a clip strictly inside the bounds."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

Array = np.ndarray


def clip_inside(p: Array, bounds: tuple[tuple[float, ...], tuple[float, ...]]) -> Array:
    """Clip ``p`` strictly inside finite bounds (least_squares wants a feasible x0)."""
    lo, hi = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
    eps_lo = np.where(np.isfinite(lo), 1e-9 * np.maximum(1.0, np.abs(lo)), 0.0)
    eps_hi = np.where(np.isfinite(hi), 1e-9 * np.maximum(1.0, np.abs(hi)), 0.0)
    return np.clip(np.asarray(p, float), lo + eps_lo, hi - eps_hi)


def batched_lstsq(X: Array, y: Array) -> tuple[Array, Array]:
    """Solve min ||X[g] c - y|| for every g at once.

    X: (G, n, j) design matrices, y: (n,). Returns coefficients (G, j) and RSS (G,).
    Columns are scaled to unit norm and a tiny ridge keeps collinear grid points finite.
    """
    norms = np.sqrt(np.einsum("gnj,gnj->gj", X, X))
    norms = np.where(norms > 0, norms, 1.0)
    Xs = X / norms[:, None, :]
    A = np.einsum("gnj,gnk->gjk", Xs, Xs) + 1e-9 * np.eye(X.shape[2])
    b = np.einsum("gnj,n->gj", Xs, y)
    with np.errstate(all="ignore"):
        c = np.linalg.solve(A, b[..., None])[..., 0] / norms
        rss = np.sum((np.einsum("gnj,gj->gn", X, c) - y) ** 2, axis=1)
    rss = np.where(np.isfinite(rss), rss, np.inf)
    return c, rss


def pick_diverse(rss: Array, q: Array, n: int, min_dist: float = 0.5) -> Array:
    """Indices of the ``n`` lowest-RSS grid points whose nonlinear parameters ``q`` (G, m)
    differ (max-norm in log10(|q| + 1e-12)) by at least ``min_dist`` from those already taken."""
    order = np.argsort(rss)
    order = order[np.isfinite(rss[order])]
    if q.shape[1] == 0:
        return order[:1]
    lq = np.log10(np.abs(q) + 1e-12)
    taken: list[int] = []
    for i in order:
        if all(np.max(np.abs(lq[i] - lq[j])) >= min_dist for j in taken):
            taken.append(int(i))
            if len(taken) >= n:
                break
    return np.array(taken, dtype=int)


def varpro_starts(grid: Array, design: Callable[[Array, Array], Array],
                  assemble: Callable[[Array, Array], Array],
                  t: Array, y: Array, n: int) -> Array:
    """Starting points by variable projection.

    grid: (G, m) nonlinear parameters; design(t, grid) -> (G, n, j) linear columns;
    assemble(grid, coef) -> (G, k) full parameter vectors. Returns the (<= n, k) best.
    """
    with np.errstate(all="ignore"):
        X = design(t, grid)
    X = np.where(np.isfinite(X), X, 0.0)
    coef, rss = batched_lstsq(X, y)
    idx = pick_diverse(rss, grid, n)
    return assemble(grid[idx], coef[idx])


def _grid(*axes: Array) -> Array:
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _n(count: int, density: float) -> int:
    return max(2, int(round(count * density)))


@lru_cache(maxsize=32)
def _logaxis(lo: float, hi: float, count: int, density: float) -> Array:
    return np.logspace(lo, hi, _n(count, density))


def _linear_cols(func: Callable[..., Array], t: Array, q: Array) -> Array:
    """Design (G, n, 2) for y0 + K * h(t; q): columns 1 and h (h = func with y0=0, K=1)."""
    H = np.stack([func(t, 0.0, 1.0, *row) for row in q], axis=0)
    return np.stack([np.ones_like(H), H], axis=2)


def _step_starts(func: Callable[..., Array], grid: Callable[[float], Array]
                 ) -> Callable[[Array, Array, int, float], Array]:
    """Starts for y0 + K h(t; q): grid over q, (y0, K) linear."""
    def starts(t: Array, y: Array, n: int, density: float = 1.0) -> Array:
        return varpro_starts(grid(density), lambda tt, q: _linear_cols(func, tt, q),
                             lambda q, c: np.column_stack([c, q]), t, y, n)
    return starts

