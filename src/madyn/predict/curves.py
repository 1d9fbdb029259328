"""Curves from parameters: evaluation of a parametrisation, dense step grids and peaks,
curve-space scores, inverse target transforms, and interpolation of curves in relative depth
(the ``mean_curve`` baseline). No file I/O.

Steps are raw training steps; parameters raw (not normalised); depth is ``(layer + 1) / L``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from madyn.curves import hypotheses
from madyn.predict.features import inverse_transform, param_names, usable_rows


def raw_params(pred_targets: np.ndarray, names: list[str], transforms: dict[str, dict]
               ) -> np.ndarray:
    """(n, k) target-space predictions -> (n, k) raw parameters (inverse transforms)."""
    out = np.empty_like(np.asarray(pred_targets, float))
    for j, n in enumerate(names):
        tr = transforms[n]
        out[:, j] = inverse_transform(pred_targets[:, j], tr["kind"], tr.get("lambda"))
    return out


def curve(parametrisation: str, steps: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The parametrisation's curve at ``steps`` (raw training steps) for raw params ``p``."""
    with np.errstate(all="ignore"):
        return np.asarray(hypotheses.get(parametrisation).func(np.asarray(steps, float), *p),
                          float)


def dense_grid(lo: float, hi: float, n: int = 400) -> np.ndarray:
    """Steps over [lo, hi]: geometric from max(lo, 1), plus lo itself."""
    g = np.geomspace(max(lo, 1.0), max(hi, max(lo, 1.0)), n)
    return np.unique(np.concatenate([[lo], g, [hi]]))


def curve_peak(parametrisation: str, p: np.ndarray, lo: float, hi: float) -> float:
    """Step of the curve's maximum on a dense grid over [lo, hi]; NaN if non-finite."""
    g = dense_grid(lo, hi)
    c = curve(parametrisation, g, p)
    if not np.all(np.isfinite(c)):
        return math.nan
    return float(g[int(np.argmax(c))])


def curve_scores(obs_steps: np.ndarray, obs: np.ndarray, pred: np.ndarray,
                 pred_peak: float) -> dict[str, float]:
    """R^2 of a predicted curve vs observations, relative final-value error, |log10 peak
    error| (steps + 1); NaN where the prediction is not finite."""
    if not np.all(np.isfinite(pred)):
        return {"r2": math.nan, "final_rel_err": math.nan, "peak_log10_err": math.nan,
                "finite": False}
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    r2 = 1 - float(np.sum((obs - pred) ** 2)) / ss_tot if ss_tot > 0 else math.nan
    i_last = int(np.argmax(obs_steps))
    fre = abs(pred[i_last] - obs[i_last]) / abs(obs[i_last]) if obs[i_last] != 0 else math.nan
    obs_peak = float(obs_steps[int(np.argmax(obs))])
    ple = abs(math.log10(pred_peak + 1) - math.log10(obs_peak + 1)) \
        if math.isfinite(pred_peak) else math.nan
    return {"r2": r2, "final_rel_err": float(fre), "peak_log10_err": ple, "finite": True}


def interp_depth(dep: np.ndarray, C: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Rows of C (one per increasing depth ``dep``) linearly interpolated at depths ``at``
    (clamped at the ends): (len(at), C.shape[1])."""
    at = np.clip(np.asarray(at, float), dep[0], dep[-1])
    if len(dep) == 1:
        return np.repeat(C[:1], len(at), axis=0)
    i = np.clip(np.searchsorted(dep, at, side="right") - 1, 0, len(dep) - 2)
    w = ((at - dep[i]) / (dep[i + 1] - dep[i]))[:, None]
    with np.errstate(all="ignore"):
        return np.where(w == 0, C[i], (1 - w) * C[i] + w * C[i + 1])


def mean_curve_baseline(table: pd.DataFrame, held_out: str | list[str],
                        layer_depths: np.ndarray, steps: np.ndarray, parametrisation: str
                        ) -> np.ndarray:
    """(n_layers, n_steps): mean over the models other than ``held_out`` (one model or
    several) of their fitted curves at the same relative depths (linear interpolation in
    depth, clamped at the ends)."""
    held = [held_out] if isinstance(held_out, str) else list(held_out)
    d = usable_rows(table)
    d = d[~d["model"].isin(held)]
    if d.empty:
        return np.full((len(layer_depths), len(steps)), np.nan)
    with np.errstate(all="ignore"):
        return depth_curves(d, np.asarray(layer_depths, float), steps,
                             parametrisation).mean(axis=0)


def depth_curves(d: pd.DataFrame, depths: np.ndarray, steps: np.ndarray,
                  parametrisation: str) -> np.ndarray:
    """(n_models, len(depths), len(steps)): each training model's fitted curves
    interpolated at relative ``depths`` (linear in depth, clamped at the ends)."""
    names = param_names(d)
    out = []
    for _m, g in d.groupby("model", sort=True):
        g = g.sort_values("f_depth")
        C = np.stack([curve(parametrisation, steps, p)
                      for p in g[[f"param_{n}" for n in names]].to_numpy(float)])
        out.append(interp_depth(g["f_depth"].to_numpy(float), C, depths))
    return np.stack(out)
