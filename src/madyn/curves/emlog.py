"""The study's curve family (``emlog``): ``A*exp(-lambda*x)*log(x)+K`` with ``x = gamma*t+t0``
(``original``) and its reparametrisation ``exp(-beta*t)*(A1*log(t+tau0)+A2)+K``
(``reparam``), each also regularised (``*_reg``): functions, Jacobians, exact maps between
them and to raw units, variable-projection starts, asymptotes and peaks."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy.special import lambertw

from madyn.curves.hypothesis import Hypothesis
from madyn.curves.starts import _grid, _logaxis, varpro_starts

Array = np.ndarray
INF = np.inf


def original_func(t: Array, A: float, lam: float, gamma: float, t0: float, K: float) -> Array:
    """f(t) = A exp(-lam x) log(x) + K with x = gamma t + t0."""
    x = gamma * np.asarray(t, float) + t0
    return A * np.exp(-lam * x) * np.log(x) + K


def original_jac(t: Array, A: float, lam: float, gamma: float, t0: float, K: float) -> Array:
    t = np.asarray(t, float)
    x = gamma * t + t0
    E, L = np.exp(-lam * x), np.log(x)
    d = A * E * (1.0 / x - lam * L)  # d f / d x
    return np.stack([E * L, -A * x * E * L, d * t, d, np.ones_like(t)], axis=1)


def reparam_func(t: Array, A1: float, A2: float, beta: float, tau0: float, K: float) -> Array:
    """f(t) = exp(-beta t) (A1 log(t + tau0) + A2) + K."""
    t = np.asarray(t, float)
    return np.exp(-beta * t) * (A1 * np.log(t + tau0) + A2) + K


def reparam_jac(t: Array, A1: float, A2: float, beta: float, tau0: float, K: float) -> Array:
    t = np.asarray(t, float)
    E, L = np.exp(-beta * t), np.log(t + tau0)
    return np.stack([E * L, E, -t * E * (A1 * L + A2), E * A1 / (t + tau0), np.ones_like(t)],
                    axis=1)


def reparam_to_original(p: Array) -> Array:
    """(A1, A2, beta, tau0, K) -> (A, lam, gamma, t0, K), same curve (needs A1 != 0):
    gamma = exp(A2/A1), lam = beta/gamma, t0 = tau0 gamma, A = A1 exp(beta tau0)."""
    A1, A2, beta, tau0, K = p
    with np.errstate(all="ignore"):
        gamma = np.exp(A2 / A1)
        return np.array([A1 * np.exp(beta * tau0), beta / gamma, gamma, tau0 * gamma, K])


def original_to_reparam(p: Array) -> Array:
    """(A, lam, gamma, t0, K) -> (A1, A2, beta, tau0, K), same curve:
    beta = lam gamma, tau0 = t0/gamma, A1 = A exp(-lam t0), A2 = A1 log(gamma)."""
    A, lam, gamma, t0, K = p
    A1 = A * np.exp(-lam * t0)
    return np.array([A1, A1 * np.log(gamma), lam * gamma, t0 / gamma, K])


def original_to_reparam_jac(p: Array) -> Array:
    """(5, 5) d (A1, A2, beta, tau0, K) / d (A, lam, gamma, t0, K)."""
    A, lam, gamma, t0, _ = p
    E = np.exp(-lam * t0)
    A1, lg = A * E, np.log(gamma)
    d_a1 = np.array([E, -t0 * A1, 0.0, -lam * A1, 0.0])
    return np.array([d_a1,
                     d_a1 * lg + np.array([0.0, 0.0, A1 / gamma, 0.0, 0.0]),
                     [0.0, gamma, lam, 0.0, 0.0],
                     [0.0, 0.0, -t0 / gamma**2, 1.0 / gamma, 0.0],
                     [0.0, 0.0, 0.0, 0.0, 1.0]])


def _original_to_raw(p: Array, T: float, mu: float, sd: float) -> Array:
    A, lam, gamma, t0, K = p
    return np.array([sd * A, lam, gamma / T, t0, mu + sd * K])


def _reparam_to_raw(p: Array, T: float, mu: float, sd: float) -> Array:
    A1, A2, beta, tau0, K = p
    return np.array([sd * A1, sd * (A2 - A1 * np.log(T)), beta / T, tau0 * T, mu + sd * K])


@lru_cache(maxsize=8)
def _reparam_grid(density: float) -> Array:
    """(beta, tau0) grid in normalised units: beta = 0 and 10^-1.5..10^3.5, tau0 10^-7..10."""
    return _grid(np.concatenate([[0.0], _logaxis(-1.5, 3.5, 16, density)]),
                 _logaxis(-7, 1, 20, density))


def _reparam_design(t: Array, q: Array) -> Array:
    E = np.exp(-q[:, :1] * t[None, :])
    L = np.log(t[None, :] + q[:, 1:2])
    return np.stack([E * L, E, np.ones_like(E)], axis=2)


def _reparam_assemble(q: Array, c: Array) -> Array:
    return np.column_stack([c[:, 0], c[:, 1], q[:, 0], q[:, 1], c[:, 2]])


def reparam_starts(t: Array, y: Array, n: int, density: float = 1.0) -> Array:
    """Variable projection over (beta, tau0); (A1, A2, K) by linear least squares."""
    return varpro_starts(_reparam_grid(density), _reparam_design, _reparam_assemble, t, y, n)


@lru_cache(maxsize=8)
def _original_grid(density: float) -> Array:
    """(lambda, gamma, t0) grid in normalised units."""
    return _grid(np.concatenate([[0.0], _logaxis(-3, 1, 7, density)]),
                 _logaxis(-1, 5, 9, density), _logaxis(-3, 1.5, 6, density))


def _original_design(t: Array, q: Array) -> Array:
    x = q[:, 1:2] * t[None, :] + q[:, 2:3]
    F = np.exp(-q[:, :1] * x) * np.log(x)
    return np.stack([F, np.ones_like(F)], axis=2)


def _original_assemble(q: Array, c: Array) -> Array:
    return np.column_stack([c[:, 0], q[:, 0], q[:, 1], q[:, 2], c[:, 1]])


def original_starts(t: Array, y: Array, n: int, density: float = 1.0) -> Array:
    """Reparam variable-projection starts converted exactly to the original form, plus
    variable projection over (lam, gamma, t0) with (A, K) linear; lowest RSS first."""
    conv = np.array([reparam_to_original(p)
                     for p in reparam_starts(t, y, n, density)]).reshape(-1, 5)
    conv[:, 2] = np.clip(conv[:, 2], 1e-8, 1e12)
    own = varpro_starts(_original_grid(density), _original_design, _original_assemble,
                        t, y, n)
    cand = np.vstack([conv, own])
    with np.errstate(all="ignore"):
        rss = np.array([np.sum((original_func(t, *p) - y) ** 2) for p in cand])
    rss = np.where(np.isfinite(rss), rss, np.inf)
    return cand[np.argsort(rss)[:n]]


def _emlog_asymptote(decay: float, amp: float, K: float, flat: float) -> float:
    if decay > 0:
        return K
    return flat if amp == 0 else np.nan


def _lambertw_from_log(logz: float) -> float:
    """Principal W(z) for z = exp(logz) > 0, without overflowing for huge z."""
    if logz < 600:
        return float(lambertw(np.exp(logz)).real)
    w = logz - np.log(logz)
    for _ in range(50):  # Newton on w + log w = logz
        w_new = w - (w + np.log(w) - logz) / (1 + 1 / w)
        if abs(w_new - w) < 1e-14 * w:
            return float(w_new)
        w = w_new
    return float(w)


def original_peak(p: Array) -> float:
    """Step of the maximum of A exp(-lam x) log x + K: t = (exp(W(1/lam)) - t0) / gamma;
    NaN if A <= 0 or lam == 0 (no interior maximum) or the maximum lies before step 0."""
    A, lam, gamma, t0, _ = p
    if not (A > 0 and lam > 0 and gamma > 0):
        return np.nan
    t = (np.exp(_lambertw_from_log(-np.log(lam))) - t0) / gamma
    return float(t) if t > 0 else np.nan


def reparam_peak(p: Array) -> float:
    """Step of the maximum of the reparametrised curve, via the original form:
    gamma (t + tau0) = exp(W(gamma / beta)) with log gamma = A2 / A1."""
    A1, A2, beta, tau0, _ = p
    if not (A1 > 0 and beta > 0):
        return np.nan
    log_gamma = A2 / A1
    log_x = _lambertw_from_log(log_gamma - np.log(beta))
    with np.errstate(over="ignore"):
        t = np.exp(log_x - log_gamma) - tau0
    return float(t) if np.isfinite(t) and t > 0 else np.nan


_ORIG_BOUNDS = ((-INF, 0.0, 1e-8, 1e-9, -INF), (INF, 1e4, 1e12, 1e6, INF))


_REPARAM_BOUNDS = ((-INF, -INF, 0.0, 1e-9, -INF), (INF, INF, 1e4, 1e4, INF))


# regularisation reference and scales (normalised space: y_n has sd 1, t_n in [0, 1]) of
# (A1, A2, beta, tau0, K); original_reg is penalised on these too (see the module docstring)
_REPARAM_REF = ((0.0, 0.0, 0.0, 0.0, 0.0), (10.0, 10.0, 30.0, 1.0, 10.0))


EMLOG = "emlog"  # the family of the study's curve and its reparametrisation


_ORIG_TRANSFORMS = (("A", "log1p"), ("lambda", "log1p"), ("gamma", "log1p"), ("t0", "log1p"),
                    ("K", "yeojohnson"))


_REPARAM_TRANSFORMS = (("A1", "yeojohnson"), ("A2", "yeojohnson"), ("beta", "log1p"),
                       ("tau0", "log1p"), ("K", "yeojohnson"))


def _emlog(name: str, reg: tuple | None, original: bool,
           warm_from: tuple[tuple[str, Callable[[Array], Array] | None], ...] = ()
           ) -> Hypothesis:
    if original:
        return Hypothesis(
            name=name, family=EMLOG, param_names=("A", "lambda", "gamma", "t0", "K"),
            func=original_func, jac=original_jac, bounds=_ORIG_BOUNDS,
            starts_fn=original_starts, to_raw_fn=_original_to_raw,
            asymptote_fn=lambda p: _emlog_asymptote(p[1], p[0], p[4], np.nan),
            peak_fn=original_peak, penalty_ref=reg and reg[0], penalty_scale=reg and reg[1],
            penalty_map=original_to_reparam if reg else None,
            penalty_map_jac=original_to_reparam_jac if reg else None,
            description="A*exp(-lambda*x)*log(x)+K, x=gamma*t+t0"
                        + (" (regularised)" if reg else ""),
            warm_from=warm_from, transforms=_ORIG_TRANSFORMS)
    return Hypothesis(
        name=name, family=EMLOG, param_names=("A1", "A2", "beta", "tau0", "K"),
        func=reparam_func, jac=reparam_jac, bounds=_REPARAM_BOUNDS,
        starts_fn=reparam_starts, to_raw_fn=_reparam_to_raw,
        asymptote_fn=lambda p: _emlog_asymptote(p[2], p[0], p[4], p[1] + p[4]),
        peak_fn=reparam_peak, penalty_ref=reg and reg[0], penalty_scale=reg and reg[1],
        description="exp(-beta*t)*(A1*log(t+tau0)+A2)+K" + (" (regularised)" if reg else ""),
        warm_from=warm_from, transforms=_REPARAM_TRANSFORMS)


HYPOTHESES: list[Hypothesis] = [
    _emlog("original", None, original=True, warm_from=(("reparam", reparam_to_original),)),
    _emlog("reparam", None, original=False),
    _emlog("original_reg", _REPARAM_REF, original=True,
           warm_from=(("reparam_reg", reparam_to_original), ("original", None))),
    _emlog("reparam_reg", _REPARAM_REF, original=False, warm_from=(("reparam", None),)),
]
