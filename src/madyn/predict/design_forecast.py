"""Forecast a run from its first steps with its design's predicted curve as the prior, on
time relative to its schedule, with intervals calibrated on held-out designs. No file I/O.

The prior of one layer is a log curve on the run's relative steps: the mean of the other
seeds of the run's design where the prior suite has them, else the curve a
:mod:`madyn.predict.design_predictors` predictor trained on the suite predicts for the run's
design features. The forecast blends three estimates of the rest of the run, in log
space: the prior, the prior moved to the run's level (``delta``, the mean offset of the
run's last (up to) :data:`OFFSET_POINTS` seen values from the prior) and the last value
carried forward:

    log y(u) = (1 - w_last) prior(u) + w_last log y_k + w_offset delta,

with the weights (w_offset, w_last) learned per seen fraction and quantity on the
leave-one-design-out backtest (those that minimise the trimmed mean absolute log error of
the final value over the other designs: cross-fitted, so a design is never scored with
weights it helped choose).
(1, 0) is the prior moved to the run's level, (0, 0) the prior alone, (0, 1) the last
value.

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
DEFAULT_WEIGHTS = (1.0, 0.0)  # (w_offset, w_last) where none were learned: the prior moved
WEIGHT_GRID = np.linspace(0.0, 1.0, 21)  # each weight's candidates
TRIM = 0.8  # the share of backtest rows (the best) whose mean log error the weights minimise


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) level)-th smallest of n scores
    (inf when n is too small for it)."""
    s = np.sort(np.asarray(scores, float)[np.isfinite(scores)])
    n = len(s)
    k = math.ceil((n + 1) * level)
    return float(s[k - 1]) if 0 < k <= n else math.inf


def level_offset(observed: np.ndarray, prior_log: np.ndarray) -> float:
    """delta: the mean log offset of the last (up to) :data:`OFFSET_POINTS` seen values
    (``observed``, k values) from the prior (log, its first k points on the same steps)."""
    y = np.log(np.asarray(observed, float))
    k = len(y)
    m = min(OFFSET_POINTS, k)
    return float(np.mean(y[k - m:] - prior_log[k - m:k]))


def blend(prior_log, last_log, delta, w_offset, w_last):
    """(1 - w_last) prior + w_last log(last seen) + w_offset delta (logs; arrays broadcast)."""
    return (1 - w_last) * prior_log + w_last * last_log + w_offset * delta


def blend_forecast(u: np.ndarray, observed: np.ndarray, prior_log: np.ndarray,
                   weights: tuple[float, float] = DEFAULT_WEIGHTS) -> np.ndarray:
    """The point forecast (log, len(u)) on relative steps ``u``: the seen part is the
    observations (k values), the rest (1 - w_last) prior + w_last log(last seen) +
    w_offset delta (``weights`` = (w_offset, w_last); module docstring)."""
    y = np.log(np.asarray(observed, float))
    k = len(y)
    w_off, w_last = weights
    delta = level_offset(observed, prior_log)
    return np.r_[y, blend(prior_log[k:], y[-1], delta, w_off, w_last)]


def offset_forecast(u: np.ndarray, observed: np.ndarray, prior_log: np.ndarray
                    ) -> np.ndarray:
    """The prior moved to the run's level (:func:`blend_forecast` with weights (1, 0))."""
    return blend_forecast(u, observed, prior_log, (1.0, 0.0))


def fit_weights(prior_final: np.ndarray, delta: np.ndarray, last: np.ndarray,
                truth: np.ndarray) -> tuple[float, float]:
    """(w_offset, w_last) on :data:`WEIGHT_GRID` squared that minimise the mean absolute
    log error of the final value over the best :data:`TRIM` of the rows (all logs, one
    entry per row: the prior's final value, delta, the last seen value, the true final
    value; the worst rows, runs still in their early transient, left out of the loss).
    :data:`DEFAULT_WEIGHTS` when there are no rows."""
    ok = np.isfinite(prior_final) & np.isfinite(delta) & np.isfinite(last) & np.isfinite(truth)
    if not ok.any():
        return DEFAULT_WEIGHTS
    a, d, lv, t = (np.asarray(x, float)[ok] for x in (prior_final, delta, last, truth))
    wo, wl = (w.ravel() for w in np.meshgrid(WEIGHT_GRID, WEIGHT_GRID, indexing="ij"))
    err = np.sort(np.abs(blend(a, lv, d, wo[:, None], wl[:, None]) - t), axis=1)
    keep = max(1, int(TRIM * err.shape[1]))
    i = int(np.argmin(err[:, :keep].mean(axis=1)))
    return float(wo[i]), float(wl[i])


def calibrated_weights(weights: dict | None, fraction: float) -> tuple[float, float]:
    """(w_offset, w_last) at a seen ``fraction`` from {fraction (str or float): [w_offset,
    w_last]}: linear between the calibrated fractions, the nearest end outside them;
    :data:`DEFAULT_WEIGHTS` (the prior moved to the run's level) when none are given."""
    if not weights:
        return DEFAULT_WEIGHTS
    pts = sorted((float(f), tuple(map(float, w))) for f, w in weights.items())
    fs = np.array([p[0] for p in pts])
    return (float(np.interp(fraction, fs, [p[1][0] for p in pts])),
            float(np.interp(fraction, fs, [p[1][1] for p in pts])))


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
                  early_fit: bool = True, workers: int = 1) -> pd.DataFrame:
    """Every row of ``data`` (its design never seen by ``held_pred``, the rows' held-out
    log grid curves) truncated at each fraction of its last step and forecast: per
    (model, design, layer, fraction, method) the final value's relative error and the
    absolute log error (``score``), for methods forecast (the blend, its weights
    cross-fitted over the other designs: :func:`cross_fit_blend`), offset (the prior moved
    to the run's level), prior (the held-out prediction alone), last_value and
    (``early_fit``) early_fit. Each row also holds the blend's parts (logs): prior_final,
    delta, last_log, truth_log. ``workers``: processes the models are spread over (the
    same rows; the early AICc fits are most of the time)."""
    from functools import partial

    from madyn.parallel import map_ordered

    models = list(dict.fromkeys(str(m) for m in data.models))
    rows_of = partial(_model_rows, data=data, held_pred=held_pred, fractions=tuple(fractions),
                      fit_settings=fit_settings, early_fit=early_fit)
    rows = [r for part in map_ordered(rows_of, models, workers) for r in part]
    return cross_fit_blend(pd.DataFrame(rows))


def _model_rows(model: str, data: dc.DesignData, held_pred: np.ndarray, fractions: tuple,
                fit_settings, early_fit: bool) -> list[dict]:
    """:func:`backtest_rows`' rows of one model (before the blend)."""
    rows = []
    for i in np.flatnonzero(data.models == model):
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
            preds = {"offset": offset_forecast(u, truth[:k], prior_log),
                     "prior": prior_log,
                     "last_value": np.log(np.r_[truth[:k], np.full(len(steps) - k,
                                                                   truth[k - 1])])}
            if early_fit:
                e = _early_fit(steps, truth[:k], fit_settings)
                with np.errstate(all="ignore"):
                    preds["early_fit"] = np.log(e) if e is not None else None
            parts = {"prior_final": float(prior_log[-1]),
                     "delta": level_offset(truth[:k], prior_log),
                     "last_log": math.log(truth[k - 1]), "truth_log": math.log(truth[-1])}
            for method, p in preds.items():
                base = {"model": m, "design": str(data.designs[i]), "layer": la,
                        "fraction": float(frac), "observed": k, "method": method, **parts}
                rows.append({**base, **_scores(None if p is None else p[-1], truth[-1])})
    return rows


def _scores(pred_log: float | None, truth: float) -> dict:
    """The final value's relative error and absolute log error (NaN where no forecast)."""
    if pred_log is None or not np.isfinite(pred_log):
        return {"final_rel_err": math.nan, "score": math.nan}
    return {"final_rel_err": abs(math.exp(pred_log) - truth) / truth,
            "score": abs(pred_log - math.log(truth))}


def _parts(rows: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(rows[c].to_numpy(float) for c in ("prior_final", "delta", "last_log",
                                                   "truth_log"))


def cross_fit_blend(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the ``forecast`` rows added: per fraction and design, the blend with
    the weights :func:`fit_weights` chose on the OTHER designs' rows (columns w_offset,
    w_last)."""
    if table.empty:
        return table
    base = table[table["method"] == "prior"]
    out = []
    for _frac, g in base.groupby("fraction"):
        for d, gd in g.groupby("design"):
            w_off, w_last = fit_weights(*_parts(g[g["design"] != d]))
            a, dl, lv, t = _parts(gd)
            pred = blend(a, lv, dl, w_off, w_last)
            scores = [_scores(p, math.exp(tt)) for p, tt in zip(pred, t, strict=True)]
            out.append(gd.assign(method="forecast", w_offset=w_off, w_last=w_last,
                                 final_rel_err=[x["final_rel_err"] for x in scores],
                                 score=[x["score"] for x in scores]))
    return pd.concat([table, *out], ignore_index=True)


def blend_weights(table: pd.DataFrame) -> dict:
    """{fraction: [w_offset, w_last]} chosen on every design's rows (what the committed
    prior forecasts with)."""
    base = table[table["method"] == "prior"]
    return {str(f): list(fit_weights(*_parts(g))) for f, g in base.groupby("fraction")}


def cross_conformal(table: pd.DataFrame, level: float) -> pd.DataFrame:
    """``table`` (one quantity) with ``covered``: for forecast, offset and prior rows,
    whether the row's score is within the conformal quantile of the OTHER designs' scores
    of the same (fraction, method)."""
    table = table.copy()
    table["covered"] = np.nan
    for (_frac, method), g in table.groupby(["fraction", "method"]):
        if method not in ("forecast", "offset", "prior"):
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
