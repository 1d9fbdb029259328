"""Forecast a run from its first steps with its design's predicted curve as the prior, on
time relative to its schedule, with intervals calibrated on held-out designs. No file I/O.

The prior of one layer is a log curve on the run's relative steps: the mean of the other
seeds of the run's design where the prior suite has them, else the curve a
:mod:`madyn.predict.design_curves` predictor trained on the suite predicts for the run's
design features. The forecast keeps the prior's shape and moves it to the run's level:
log y(u) = prior(u) + delta, delta the mean offset of the run's last (up to)
:data:`OFFSET_POINTS` seen values from the prior.

Intervals are split-conformal: for a seen fraction f and quantity, the ``level`` quantile
q(f) of the absolute log errors of the final value in the leave-one-design-out backtest
(each design forecast from a predictor that never saw it; the quantile taken over the
OTHER designs' errors when a design is scored), so that the stated level holds on a design
never seen. Between the last seen step and the end, the half-width grows as
q(f) sqrt((v(u) - v(u_k)) / (v(1) - v(u_k))), v the relative time axis.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from madyn.predict import design_curves as dc
from madyn.predict.forecast import observed_upto, rel_axis

OFFSET_POINTS = 3


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) level)-th smallest of n scores
    (inf when n is too small for it)."""
    s = np.sort(np.asarray(scores, float)[np.isfinite(scores)])
    n = len(s)
    k = math.ceil((n + 1) * level)
    return float(s[k - 1]) if 0 < k <= n else math.inf


def offset_forecast(u: np.ndarray, observed: np.ndarray, prior_log: np.ndarray
                    ) -> np.ndarray:
    """The point forecast (log, len(u)): ``prior_log`` (on relative steps ``u``) moved by
    the mean offset of the last seen log values; the seen part is the observations."""
    y = np.log(np.asarray(observed, float))
    k = len(y)
    m = min(OFFSET_POINTS, k)
    delta = float(np.mean(y[k - m:] - prior_log[k - m:k]))
    return np.r_[y, prior_log[k:] + delta]


def half_widths(u: np.ndarray, k: int, q_final: float) -> np.ndarray:
    """Log half-widths on ``u`` after the first k seen steps: 0 where seen, q_final at
    the end, growing as the square root of the distance on the relative time axis."""
    v = rel_axis(u)
    span = max(v[-1] - v[k - 1], 1e-12)
    g = np.sqrt(np.clip((v - v[k - 1]) / span, 0, None))
    g[:k] = 0.0
    return q_final * g


def calibrated_q(calibration: dict, fraction: float) -> float:
    """q at a seen ``fraction`` from a calibration {fraction (str or float): q}: linear
    between the calibrated fractions; below the smallest, its q scaled by how much more of
    the relative time axis remains (a wider interval); above the largest, the largest's."""
    pts = sorted((float(f), float(q)) for f, q in calibration.items())
    fs, qs = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if fraction < fs[0]:
        grow = math.sqrt((rel_axis(1.0) - rel_axis(fraction))
                         / max(rel_axis(1.0) - rel_axis(fs[0]), 1e-12))
        return float(qs[0] * max(grow, 1.0))
    return float(np.interp(fraction, fs, qs))


# ------------------------------------------------------------------------------ backtest

def _early_fit(steps: np.ndarray, values: np.ndarray, fit_settings) -> np.ndarray | None:
    from madyn.predict.forecast import _early_fit as early

    try:
        return early(steps, values, fit_settings)
    except (ValueError, np.linalg.LinAlgError):
        return None


def backtest_rows(data: dc.DesignData, held_pred: np.ndarray, fractions, fit_settings=None,
                  early_fit: bool = True) -> pd.DataFrame:
    """Every row of ``data`` (its design never seen by ``held_pred``, the rows' held-out
    log grid curves) truncated at each fraction of its last step and forecast: per
    (model, design, layer, fraction, method) the final value's relative error and the
    absolute log error (``score``), for methods forecast, prior (the held-out prediction
    alone), last_value and (``early_fit``) early_fit."""
    rows = []
    for i in range(len(data.Y)):
        m, la = str(data.models[i]), int(data.layer[i])
        steps, _, vals = data.curves[m]
        steps = np.asarray(steps, float)
        last = float(steps.max())
        u = steps / last
        truth = vals[la]
        prior_log = np.interp(rel_axis(u), dc.GRID_V, held_pred[i])
        for frac in fractions:
            k = observed_upto(steps, frac * last)
            if k < 2 or k >= len(steps):
                continue
            preds = {"forecast": offset_forecast(u, truth[:k], prior_log),
                     "prior": prior_log,
                     "last_value": np.log(np.r_[truth[:k], np.full(len(steps) - k,
                                                                   truth[k - 1])])}
            if early_fit:
                e = _early_fit(steps, truth[:k], fit_settings)
                with np.errstate(all="ignore"):
                    preds["early_fit"] = np.log(e) if e is not None else None
            for method, p in preds.items():
                base = {"model": m, "design": str(data.designs[i]), "layer": la,
                        "fraction": float(frac), "observed": k, "method": method}
                if p is None or not np.isfinite(p[-1]):
                    rows.append({**base, "final_rel_err": math.nan, "score": math.nan})
                    continue
                rows.append({**base,
                             "final_rel_err": abs(math.exp(p[-1]) - truth[-1]) / truth[-1],
                             "score": abs(p[-1] - math.log(truth[-1]))})
    return pd.DataFrame(rows)


def cross_conformal(table: pd.DataFrame, level: float) -> pd.DataFrame:
    """``table`` (one quantity) with ``covered``: for forecast and prior rows, whether the
    row's score is within the conformal quantile of the OTHER designs' scores of the same
    (fraction, method)."""
    table = table.copy()
    table["covered"] = np.nan
    for (_frac, method), g in table.groupby(["fraction", "method"]):
        if method not in ("forecast", "prior"):
            continue
        for d, gd in g.groupby("design"):
            q = conformal_quantile(g.loc[g["design"] != d, "score"].to_numpy(float), level)
            table.loc[gd.index, "covered"] = (gd["score"] <= q).astype(float)
    return table


def calibration(table: pd.DataFrame, level: float, method: str = "forecast") -> dict:
    """{fraction: q} of ``method``'s scores over every row (the committed intervals)."""
    return {str(f): conformal_quantile(g["score"].to_numpy(float), level)
            for f, g in table[table["method"] == method].groupby("fraction")}


def summary(table: pd.DataFrame) -> dict:
    """Per fraction (as '10%') and method: median and mean final-value error (%), the
    coverage (forecast, prior), rows."""
    out: dict = {}
    for (frac, method), g in table.groupby(["fraction", "method"], sort=True):
        ok = g.dropna(subset=["final_rel_err"])
        e = {"final_err_pct": round(100 * float(ok["final_rel_err"].median()), 2),
             "final_err_mean_pct": round(100 * float(ok["final_rel_err"].mean()), 2),
             "n": int(len(ok)), "failed": int(len(g) - len(ok))}
        if g["covered"].notna().any():
            e["coverage"] = round(float(g["covered"].dropna().mean()), 3)
        out.setdefault(f"{int(round(100 * frac))}%", {})[method] = e
    return out
