"""The logarithmic baseline ``a + b*log(1+t)``: fitted on raw steps (``scale_time=False``),
because ``log(1 + t)`` has no exact form in ``t / t_scale``."""

from __future__ import annotations

import numpy as np

from madyn.curves.hypothesis import Hypothesis
from madyn.curves.starts import batched_lstsq

Array = np.ndarray
INF = np.inf


def log_baseline_func(t: Array, a: float, b: float) -> Array:
    """f(t) = a + b log(1 + t), t in raw steps (also when fitted)."""
    return a + b * np.log1p(np.asarray(t, float))


def log_baseline_jac(t: Array, a: float, b: float) -> Array:
    t = np.asarray(t, float)
    return np.stack([np.ones_like(t), np.log1p(t)], axis=1)


def _log_baseline_to_raw(p: Array, T: float, mu: float, sd: float) -> Array:
    return np.array([mu + sd * p[0], sd * p[1]])


def _log_baseline_starts(t: Array, y: Array, n: int, density: float = 1.0) -> Array:
    X = np.stack([np.ones_like(t), np.log1p(t)], axis=1)[None]
    coef, _ = batched_lstsq(X, y)
    return coef


def _log_asymptote(p: Array) -> float:
    return float(p[0]) if p[1] == 0 else np.nan


HYPOTHESES: list[Hypothesis] = [
    Hypothesis(
        name="log_baseline", family="log_baseline", param_names=("a", "b"),
        func=log_baseline_func, jac=log_baseline_jac, bounds=((-INF, -INF), (INF, INF)),
        starts_fn=_log_baseline_starts, to_raw_fn=_log_baseline_to_raw,
        asymptote_fn=_log_asymptote, scale_time=False, description="a + b*log(1+t)"),
]
