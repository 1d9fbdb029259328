"""Registry of the competing curve hypotheses for a per-layer time series.

Every hypothesis is one :class:`Hypothesis` entry in :data:`REGISTRY`; adding one is adding
an entry. Conventions shared by all of them:

* ``func(t, *p)`` -> (n,) curve values; ``jac(t, *p)`` -> (n, k) analytic Jacobian d f / d p.
  The same functional form is used on raw data (t = training step, p in raw units) and on
  normalised data (t_n = step / t_scale with t_scale = last step, y_n = (y - mu) / sd).
  Exception: hypotheses with ``scale_time=False`` (``log_baseline``) see raw steps also
  when fitted, because ``log(1 + t)`` has no exact form in ``t / t_scale``.
* ``bounds``: (lower, upper) in the normalised parameter space.
* ``starts(t, y_n, n)`` -> (S, k) starting points in normalised space, derived from the data
  by variable projection: a grid over the nonlinear parameters, with the parameters that
  enter linearly solved by (vectorised) linear least squares at every grid point at once.
* ``to_raw(p_norm, t_scale, y_mu, y_sd)`` maps normalised parameters to raw ones exactly:
  ``func(t, *to_raw(p)) == mu + sd * func(t / t_scale, *p)``.
* Regularised variants carry ``penalty_ref`` / ``penalty_scale``: the fit adds residuals
  ``sqrt(alpha) * (q(p) - q_ref) / scale`` on the normalised parameters (``alpha`` is a fit
  setting, :class:`madyn.settings.FitSettings`, default 1e-2: a mild pull that only matters where
  the data leave a parameter unidentified, e.g. beta or tau0 running to their bounds).
  ``q`` is the identity, or ``penalty_map``: ``original_reg`` is penalised on its exact
  reparametrisation (A1, A2, beta, tau0, K), with reparam_reg's reference and scales. A ridge
  on the original parameters themselves cannot work: A = A1 exp(lam t0) is exponential in
  lam t0, so a good fit of a saturating rise (lam ~ 150, t0 ~ 1 in normalised units) has
  |A| ~ 1e66, and any linear pull on A forbids the whole region of such curves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import lambertw

Array = np.ndarray
INF = np.inf


# ---------------------------------------------------------------------------------------------
# the dataclass
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hypothesis:
    """One curve hypothesis: function, Jacobian, bounds, starting points, scale-back."""

    name: str
    family: str
    param_names: tuple[str, ...]
    func: Callable[..., Array]
    jac: Callable[..., Array]
    bounds: tuple[tuple[float, ...], tuple[float, ...]]
    starts_fn: Callable[[Array, Array, int, float], Array]
    to_raw_fn: Callable[[Array, float, float, float], Array]
    asymptote_fn: Callable[[Array], float]
    peak_fn: Callable[[Array], float] | None = None
    penalty_ref: tuple[float, ...] | None = None
    penalty_scale: tuple[float, ...] | None = None
    penalty_map: Callable[[Array], Array] | None = None  # p -> q, the penalised coordinates
    penalty_map_jac: Callable[[Array], Array] | None = None  # (k, k) d q / d p
    scale_time: bool = True
    description: str = ""
    # the hypotheses whose optima (normalised parameters) warm-start this one, each with the
    # map of its optimum into this hypothesis's parameters (None: the same parameters)
    warm_from: tuple[tuple[str, Callable[[Array], Array] | None], ...] = ()
    # (parameter, target transform) pairs of the feature table ("log1p" or "yeojohnson");
    # empty: the hypothesis is no parametrisation of the feature table
    transforms: tuple[tuple[str, str], ...] = ()

    @property
    def k(self) -> int:
        """Number of curve parameters."""
        return len(self.param_names)

    def starts(self, t: Array, y_n: Array, n_starts: int = 3, density: float = 1.0) -> Array:
        """(S <= n_starts, k) starting points inside the bounds, best first.

        t: (n,) normalised steps (raw steps if scale_time=False); y_n: (n,) normalised values;
        density scales the number of grid points per axis (1.0 = the default grids).
        """
        p0 = np.atleast_2d(np.asarray(self.starts_fn(np.asarray(t, float),
                                                     np.asarray(y_n, float), n_starts,
                                                     float(density))))
        p0 = p0[np.all(np.isfinite(p0), axis=1)]
        return np.array([clip_inside(p, self.bounds) for p in p0]).reshape(-1, self.k)

    def to_raw(self, p_norm: Array, t_scale: float, y_mu: float, y_sd: float) -> Array:
        """Raw-unit parameters of a fit made on normalised data (exact)."""
        return np.asarray(self.to_raw_fn(np.asarray(p_norm, float), float(t_scale),
                                         float(y_mu), float(y_sd)), float)

    def to_raw_jac(self, p_norm: Array, t_scale: float, y_mu: float, y_sd: float) -> Array:
        """(k, k) d p_raw / d p_norm by central differences (exact for the affine maps here)."""
        p = np.asarray(p_norm, float)
        out = np.empty((self.k, self.k))
        for j in range(self.k):
            h = 1e-6 * max(1.0, abs(p[j]))
            hi, lo = p.copy(), p.copy()
            hi[j] += h
            lo[j] -= h
            out[:, j] = (self.to_raw(hi, t_scale, y_mu, y_sd)
                         - self.to_raw(lo, t_scale, y_mu, y_sd)) / (2 * h)
        return out

    @property
    def regularised(self) -> bool:
        return self.penalty_ref is not None

    def penalty(self, p: Array, alpha: float) -> Array:
        """Extra residuals sqrt(alpha) * (q(p) - q_ref) / scale, (k,); empty if not
        regularised. q = penalty_map (identity if None)."""
        if not self.regularised or alpha <= 0:
            return np.zeros(0)
        p = np.asarray(p, float)
        q = p if self.penalty_map is None else np.asarray(self.penalty_map(p), float)
        ref, sc = np.asarray(self.penalty_ref), np.asarray(self.penalty_scale)
        return np.sqrt(alpha) * (q - ref) / sc

    def penalty_jac(self, p: Array, alpha: float) -> Array:
        """(k, k) Jacobian of :meth:`penalty`; (0, k) if not regularised."""
        if not self.regularised or alpha <= 0:
            return np.zeros((0, self.k))
        d = np.diag(np.sqrt(alpha) / np.asarray(self.penalty_scale, float))
        if self.penalty_map_jac is None:
            return d
        return d @ np.asarray(self.penalty_map_jac(np.asarray(p, float)), float)

    def asymptote(self, p_raw: Array) -> float:
        """lim_{t -> inf} f(t) in raw units; NaN if the curve diverges or it is undefined."""
        return float(self.asymptote_fn(np.asarray(p_raw, float)))

    def peak_step(self, p_raw: Array) -> float | None:
        """Analytic step of the interior maximum (NaN: none); None = no analytic form."""
        return None if self.peak_fn is None else float(self.peak_fn(np.asarray(p_raw, float)))


def clip_inside(p: Array, bounds: tuple[tuple[float, ...], tuple[float, ...]]) -> Array:
    """Clip ``p`` strictly inside finite bounds (least_squares wants a feasible x0)."""
    lo, hi = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
    eps_lo = np.where(np.isfinite(lo), 1e-9 * np.maximum(1.0, np.abs(lo)), 0.0)
    eps_hi = np.where(np.isfinite(hi), 1e-9 * np.maximum(1.0, np.abs(hi)), 0.0)
    return np.clip(np.asarray(p, float), lo + eps_lo, hi - eps_hi)


# ---------------------------------------------------------------------------------------------
# variable projection: grid over the nonlinear parameters, linear least squares for the rest
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# emlog family: original and reparam
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# step responses and the log baseline
# ---------------------------------------------------------------------------------------------


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


def log_baseline_func(t: Array, a: float, b: float) -> Array:
    """f(t) = a + b log(1 + t), t in raw steps (also when fitted)."""
    return a + b * np.log1p(np.asarray(t, float))


def log_baseline_jac(t: Array, a: float, b: float) -> Array:
    t = np.asarray(t, float)
    return np.stack([np.ones_like(t), np.log1p(t)], axis=1)


def _log_baseline_to_raw(p: Array, T: float, mu: float, sd: float) -> Array:
    return np.array([mu + sd * p[0], sd * p[1]])


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


def _log_baseline_starts(t: Array, y: Array, n: int, density: float = 1.0) -> Array:
    X = np.stack([np.ones_like(t), np.log1p(t)], axis=1)[None]
    coef, _ = batched_lstsq(X, y)
    return coef


def _step_asymptote(p: Array) -> float:
    return float(p[0] + p[1])


def _log_asymptote(p: Array) -> float:
    return float(p[0]) if p[1] == 0 else np.nan


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------

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


REGISTRY: dict[str, Hypothesis] = {h.name: h for h in [
    _emlog("original", None, original=True, warm_from=(("reparam", reparam_to_original),)),
    _emlog("reparam", None, original=False),
    _emlog("original_reg", _REPARAM_REF, original=True,
           warm_from=(("reparam_reg", reparam_to_original), ("original", None))),
    _emlog("reparam_reg", _REPARAM_REF, original=False, warm_from=(("reparam", None),)),
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
    Hypothesis(
        name="log_baseline", family="log_baseline", param_names=("a", "b"),
        func=log_baseline_func, jac=log_baseline_jac, bounds=((-INF, -INF), (INF, INF)),
        starts_fn=_log_baseline_starts, to_raw_fn=_log_baseline_to_raw,
        asymptote_fn=_log_asymptote, scale_time=False, description="a + b*log(1+t)"),
]}


def get(name: str) -> Hypothesis:
    """The registered hypothesis ``name`` (KeyError lists the known names)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown hypothesis {name!r}; known: {sorted(REGISTRY)}") from None


def names() -> list[str]:
    """Every registered hypothesis name, in registry order."""
    return list(REGISTRY)


def warm_depth(name: str) -> int:
    """Length of the warm-start chain behind ``name`` (0: no warm start): fitting in
    increasing depth fits every warm source before the hypotheses it starts."""
    def depth(n: str, seen: frozenset[str]) -> int:
        if n in seen:
            raise ValueError(f"warm_from cycle through {name!r}")
        return max((1 + depth(src, seen | {n}) for src, _ in get(n).warm_from), default=0)

    return depth(name, frozenset())
