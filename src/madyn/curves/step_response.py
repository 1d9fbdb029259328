"""Step responses of linear systems: ``first_order`` (``y0 + K*(1-exp(-t/tau))``) and the
second-order under-, critically and overdamped responses, with their grids of starts."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from madyn.curves.hypothesis import Hypothesis
from madyn.curves.starts import _grid, _logaxis, _step_starts

Array = np.ndarray
INF = np.inf


def first_order_func(t: Array, y0: float, K: float, tau: float) -> Array:
    """f(t) = y0 + K (1 - exp(-t / tau)); y0 = value at step 0 (the offset), K = gain."""
    return y0 + K * (1.0 - np.exp(-np.asarray(t, float) / tau))


def first_order_jac(t: Array, y0: float, K: float, tau: float) -> Array:
    t = np.asarray(t, float)
    e = np.exp(-t / tau)
    return np.stack([np.ones_like(t), 1.0 - e, -K * e * t / tau**2], axis=1)


def _step_to_raw(p: Array, T: float, mu: float, sd: float) -> Array:
    """(y0, K, rate_or_time, ...) scale-back shared by the step responses."""
    out = np.array(p, float)
    out[0], out[1] = mu + sd * p[0], sd * p[1]
    return out


def _first_order_to_raw(p: Array, T: float, mu: float, sd: float) -> Array:
    out = _step_to_raw(p, T, mu, sd)
    out[2] = p[2] * T
    return out


def _second_order_to_raw(p: Array, T: float, mu: float, sd: float) -> Array:
    out = _step_to_raw(p, T, mu, sd)
    out[2] = p[2] / T
    return out


def _under_parts(t: Array, omega: float, zeta: float):
    u = omega * np.asarray(t, float)
    s = np.sqrt(1.0 - zeta**2)
    E, S, C = np.exp(-zeta * u), np.sin(s * u), np.cos(s * u)
    return u, s, E, S, C


def under_func(t: Array, y0: float, K: float, omega_n: float, zeta: float) -> Array:
    """Underdamped (zeta < 1) second-order step response with offset y0 and gain K:
    y0 + K [1 - exp(-zeta w t) (cos(wd t) + zeta / sqrt(1 - zeta^2) sin(wd t))],
    wd = w sqrt(1 - zeta^2), w = omega_n."""
    _, s, E, S, C = _under_parts(t, omega_n, zeta)
    return y0 + K * (1.0 - E * (C + zeta / s * S))


def under_jac(t: Array, y0: float, K: float, omega_n: float, zeta: float) -> Array:
    t = np.asarray(t, float)
    u, s, E, S, C = _under_parts(t, omega_n, zeta)
    h = 1.0 - E * (C + zeta / s * S)
    dh_du = E * S / s
    dg_dz = -u * (1.0 - h) + E * (u * zeta / s * S + S / s**3 - zeta**2 / s**2 * u * C)
    return np.stack([np.ones_like(t), h, K * t * dh_du, -K * dg_dz], axis=1)


def critical_func(t: Array, y0: float, K: float, omega_n: float) -> Array:
    """Critically damped (zeta = 1) step response: y0 + K [1 - (1 + w t) exp(-w t)]."""
    u = omega_n * np.asarray(t, float)
    return y0 + K * (1.0 - (1.0 + u) * np.exp(-u))


def critical_jac(t: Array, y0: float, K: float, omega_n: float) -> Array:
    t = np.asarray(t, float)
    u = omega_n * t
    e = np.exp(-u)
    return np.stack([np.ones_like(t), 1.0 - (1.0 + u) * e, K * t * u * e], axis=1)


def _over_parts(t: Array, omega: float, zeta: float):
    u = omega * np.asarray(t, float)
    s = np.sqrt(zeta**2 - 1.0)
    r1, r2 = zeta - s, zeta + s
    return u, s, r1, r2, np.exp(-r1 * u), np.exp(-r2 * u)


def over_func(t: Array, y0: float, K: float, omega_n: float, zeta: float) -> Array:
    """Overdamped (zeta > 1) step response: y0 + K [1 - (r2 e^{-r1 w t} - r1 e^{-r2 w t})
    / (r2 - r1)], r1,2 = zeta -+ sqrt(zeta^2 - 1)."""
    _, s, r1, r2, e1, e2 = _over_parts(t, omega_n, zeta)
    return y0 + K * (1.0 - (r2 * e1 - r1 * e2) / (2 * s))


def over_jac(t: Array, y0: float, K: float, omega_n: float, zeta: float) -> Array:
    t = np.asarray(t, float)
    u, s, r1, r2, e1, e2 = _over_parts(t, omega_n, zeta)
    N = r2 * e1 - r1 * e2
    ds = zeta / s
    dr1, dr2 = 1.0 - ds, 1.0 + ds
    dN = dr2 * e1 - r2 * u * dr1 * e1 - dr1 * e2 + r1 * u * dr2 * e2
    dg_dz = dN / (2 * s) - N * ds / (2 * s**2)
    dh_du = (e1 - e2) / (2 * s)  # r1 r2 = 1
    return np.stack([np.ones_like(t), 1.0 - N / (2 * s), K * t * dh_du, -K * dg_dz], axis=1)


def _first_grid(density: float) -> Array:
    return (1.0 / _logaxis(-2, 6.5, 36, density))[:, None]


def _crit_grid(density: float) -> Array:
    return _logaxis(-2, 6.5, 36, density)[:, None]


@lru_cache(maxsize=8)
def _under_grid(density: float) -> Array:
    return _grid(_logaxis(-2, 6.5, 26, density), np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95]))


@lru_cache(maxsize=8)
def _over_grid(density: float) -> Array:
    return _grid(_logaxis(-2, 7, 26, density), np.array([1.1, 1.5, 2.5, 5.0, 12.0, 40.0]))


def _step_asymptote(p: Array) -> float:
    return float(p[0] + p[1])


HYPOTHESES: list[Hypothesis] = [
    Hypothesis(
        name="first_order", family="first_order", param_names=("y0", "K", "tau"),
        func=first_order_func, jac=first_order_jac,
        bounds=((-INF, -INF, 1e-8), (INF, INF, 1e3)),
        starts_fn=_step_starts(first_order_func, _first_grid), to_raw_fn=_first_order_to_raw,
        asymptote_fn=_step_asymptote, description="y0 + K*(1-exp(-t/tau))"),
    Hypothesis(
        name="second_order_under", family="second_order_under",
        param_names=("y0", "K", "omega_n", "zeta"), func=under_func, jac=under_jac,
        bounds=((-INF, -INF, 1e-3, 0.0), (INF, INF, 1e7, 0.99)),
        starts_fn=_step_starts(under_func, _under_grid), to_raw_fn=_second_order_to_raw,
        asymptote_fn=_step_asymptote, description="underdamped step response (zeta < 1)"),
    Hypothesis(
        name="second_order_critical", family="second_order_critical",
        param_names=("y0", "K", "omega_n"), func=critical_func, jac=critical_jac,
        bounds=((-INF, -INF, 1e-3), (INF, INF, 1e7)),
        starts_fn=_step_starts(critical_func, _crit_grid), to_raw_fn=_second_order_to_raw,
        asymptote_fn=_step_asymptote, description="critically damped step response"),
    Hypothesis(
        name="second_order_over", family="second_order_over",
        param_names=("y0", "K", "omega_n", "zeta"), func=over_func, jac=over_jac,
        bounds=((-INF, -INF, 1e-3, 1.01), (INF, INF, 1e7, 1e3)),
        starts_fn=_step_starts(over_func, _over_grid), to_raw_fn=_second_order_to_raw,
        asymptote_fn=_step_asymptote, description="overdamped step response (zeta > 1)"),
]
