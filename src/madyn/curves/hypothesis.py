"""One curve hypothesis (:class:`Hypothesis`): its function, Jacobian, bounds, starts,
exact map to raw units, asymptote, peak and optional penalty. The conventions every
hypothesis follows are in :mod:`madyn.curves.hypotheses`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from madyn.curves.starts import clip_inside

Array = np.ndarray


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

