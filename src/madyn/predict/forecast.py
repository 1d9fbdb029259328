"""Forecast a training run from its first steps: the architecture's prior, updated by what
the run has shown. No file I/O.

The prior of one layer's curve (of ``ratio``, ``top1`` or ``median``) is the suite's other
models at the same relative depth (layer + 1) / L: each gives one curve, interpolated in
depth between its layers and in log(1 + step) onto the run's steps. In log space these M
curves define a Gaussian over the curve (mean: their mean; covariance: their sample
covariance, inflated by (M + 1) / M for a new draw, plus a nugget for checkpoint-to-
checkpoint noise estimated from their second differences). The forecast conditions that
Gaussian on the run's points up to step s: where the run sits above or below the prior
early, the covariance says how much of that persists to step S. Intervals are Student-t
with M - 1 degrees of freedom; peak steps come from draws of the conditioned Gaussian.

Shapes: steps (S,), curves (S,) in log space; a prior's samples M x S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

FORECAST_QUANTITIES = ("ratio", "top1", "median")
N_DRAWS = 200  # posterior draws for peak steps
MIN_PRIOR_MODELS = 2


class ForecastError(ValueError):
    """A forecast cannot be made; the message says why in one line."""


@dataclass
class Forecast:
    """One layer's forecast. ``steps``: the full step grid (observed and unseen);
    ``mean``, ``lo``, ``hi``: the curve's point forecast and interval (raw units; at the
    observed steps the observations themselves); ``observed``: how many leading steps were
    seen. ``final``, ``peak_step``: (point, lo, hi); ``peak_before_end``: share of draws
    whose peak lies before the last step."""

    steps: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    observed: int
    final: tuple[float, float, float]
    peak_step: tuple[float, float, float]
    peak_before_end: float
    prior_mean: np.ndarray
    prior_lo: np.ndarray
    prior_hi: np.ndarray


def layer_curves(series: pd.DataFrame, statistic: str) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """A model's series table (long: step, layer, statistic, mean) -> (steps (S,), relative
    depths (L,), values L x S) of ``statistic``."""
    d = series[series["statistic"] == statistic]
    if d.empty:
        raise ForecastError(f"no {statistic!r} rows in the series")
    wide = d.pivot_table(index="layer", columns="step", values="mean").sort_index()
    n_layers = int(wide.index.max()) + 1
    depths = (wide.index.to_numpy(float) + 1) / n_layers
    return wide.columns.to_numpy(float), depths, wide.to_numpy(float)


def _log_steps(steps: np.ndarray) -> np.ndarray:
    return np.log1p(np.asarray(steps, float))


def _log_at_depth(depths: np.ndarray, vals: np.ndarray, depth: float) -> np.ndarray:
    """One model's log curve (L x S values, layers at relative ``depths``) interpolated to
    relative ``depth``: an S-vector (NaN where a value is not positive)."""
    from madyn.predict.curves import interp_depth

    with np.errstate(all="ignore"):
        logv = np.log(vals)
    order = np.argsort(depths)
    return interp_depth(depths[order], logv[order], np.array([depth]))[0]


def prior_samples(others: list[tuple[np.ndarray, np.ndarray, np.ndarray]], depth: float,
                  steps: np.ndarray) -> np.ndarray:
    """M x S log curves: each other model (steps, depths, L x S values) at relative
    ``depth`` (linear between its layers, clamped), on ``steps`` (linear in log(1 + step));
    a model whose steps do not reach the last of ``steps`` or whose values are not all
    positive and finite there is left out."""

    out = []
    for o_steps, o_depths, vals in others:
        if o_steps.max() < steps.max() or o_steps.min() > steps.min():
            continue
        at = _log_at_depth(o_depths, vals, depth)
        if not np.isfinite(at).all():
            continue
        out.append(np.interp(_log_steps(steps), _log_steps(o_steps), at))
    return np.array(out).reshape(len(out), len(steps))


def gaussian_prior(samples: np.ndarray, steps: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean (S,), covariance S x S, nugget) of a new curve like the M samples (M x S) on
    ``steps``. Covariance: the samples' (x (M + 1) / M, for a new draw) plus a random walk
    in u = log(1 + step), sigma_w^2 min(u, u'), for how a run wanders off the prior's modes
    (sigma_w^2: the samples' median quadratic variation about their mean per unit u)."""
    m = len(samples)
    if m < MIN_PRIOR_MODELS:
        raise ForecastError(f"{m} prior model(s) reach these steps; a forecast needs at "
                            f"least {MIN_PRIOR_MODELS}")
    mean = np.median(samples, axis=0)  # robust: one runaway model moves it little
    dev = samples - mean
    level = float(np.median(dev.mean(axis=1) ** 2)) * (m + 1) / m
    cov = np.full((len(mean), len(mean)), level)
    u = _log_steps(steps)
    rate = np.sum(np.diff(dev, axis=1) ** 2, axis=1) / max(u[-1] - u[0], 1e-9)
    walk = float(np.median(rate)) * np.minimum.outer(u, u)
    d2 = np.diff(samples, n=2, axis=1)
    nugget = float(np.median(d2 ** 2) / 6) if d2.size else 0.0
    return mean, cov + walk, max(nugget, 1e-6)


def condition(mean: np.ndarray, cov: np.ndarray, nugget: float, y_obs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian (mean, cov) of a log curve conditioned on its first len(y_obs) values
    seen with noise variance ``nugget``: the unseen part's (mean, covariance)."""
    k = len(y_obs)
    so, su = slice(0, k), slice(k, None)
    a = cov[so, so] + nugget * np.eye(k)
    gain = np.linalg.solve(a, cov[so, su]).T  # U x O
    mu = mean[su] + gain @ (y_obs - mean[so])
    sig = cov[su, su] - gain @ cov[so, su]
    return mu, (sig + sig.T) / 2 + nugget * np.eye(len(mu))


def _t_quantile(level: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, max(dof, 1)))


def checked_observed(observed: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The run's observed values (k,) as floats: at least 2, fewer than the S steps to
    forecast to, finite and positive; ForecastError otherwise."""
    observed = np.asarray(observed, float)
    k = len(observed)
    if k < 2:
        raise ForecastError(f"{k} observed checkpoint(s); a forecast needs at least 2")
    if k >= len(steps):
        raise ForecastError("nothing left to forecast: the run is observed to its last step")
    if not (np.isfinite(observed).all() and (observed > 0).all()):
        raise ForecastError("observed values must be finite and positive")
    return observed


def forecast_layer(steps: np.ndarray, observed: np.ndarray, samples: np.ndarray,
                   level: float = 0.9, seed: int = 0) -> Forecast:
    """Forecast one layer's curve on ``steps`` (S,) from its first values ``observed``
    (raw, k < S) and the prior's log samples (M x S). ``level``: the intervals' nominal
    coverage."""
    observed = checked_observed(observed, steps)
    k = len(observed)
    mean, cov, nugget = gaussian_prior(samples, steps)
    q = _t_quantile(level, len(samples) - 1)
    mu, sig = condition(mean, cov, nugget, np.log(observed))
    sd = np.sqrt(np.clip(np.diag(sig), 0, None))
    y_obs = np.log(observed)
    full_mu = np.r_[y_obs, mu]
    full_sd = np.r_[np.zeros(k), sd]
    prior_sd = np.sqrt(np.clip(np.diag(cov) + nugget, 0, None))
    draws = np.random.default_rng(seed).multivariate_normal(mu, sig, size=N_DRAWS,
                                                            method="eigh")
    full_draws = np.concatenate([np.broadcast_to(y_obs, (N_DRAWS, k)), draws], axis=1)
    peaks = steps[np.argmax(full_draws, axis=1)]
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    peak_point = float(steps[int(np.argmax(full_mu))])
    return Forecast(
        steps=steps, mean=np.exp(full_mu), lo=np.exp(full_mu - q * full_sd),
        hi=np.exp(full_mu + q * full_sd), observed=k,
        final=(float(np.exp(mu[-1])), float(np.exp(mu[-1] - q * sd[-1])),
               float(np.exp(mu[-1] + q * sd[-1]))),
        peak_step=(peak_point, float(np.percentile(peaks, lo_q)),
                   float(np.percentile(peaks, hi_q))),
        peak_before_end=float(np.mean(peaks < steps[-1])),
        prior_mean=np.exp(mean), prior_lo=np.exp(mean - q * prior_sd),
        prior_hi=np.exp(mean + q * prior_sd))


def observed_upto(steps: np.ndarray, upto: float) -> int:
    """How many of ``steps`` are at or before step ``upto``."""
    return int(np.searchsorted(steps, upto, side="right"))


# --------------------------------------------------------------------------------- backtest
def _r2(truth: np.ndarray, pred: np.ndarray) -> float:
    ss = float(np.sum((truth - truth.mean()) ** 2))
    return 1 - float(np.sum((truth - pred) ** 2)) / ss if ss > 0 else math.nan


def _early_fit(steps: np.ndarray, values: np.ndarray, settings) -> np.ndarray | None:
    """The AICc winner of the fit hypotheses on the early points alone, on ``steps``."""
    from madyn.curves.fit import fit_series, select
    from madyn.curves.hypotheses import get

    k = len(values)
    best = select(fit_series(steps[:k], values, settings))
    if best is None:
        return None
    with np.errstate(all="ignore"):
        return get(best.hypothesis).func(steps, *best.popt)


def _backtest_model(model: str, curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                    fractions: tuple[float, ...], level: float, fit_settings) -> list[dict]:
    """:func:`backtest`'s rows for one model, the other models as the prior."""
    rows = []
    steps, depths, vals = curves[model]
    others = [c for m, c in curves.items() if m != model]
    for layer, depth in enumerate(depths):
        truth = vals[layer]
        if not (np.isfinite(truth).all() and (truth > 0).all()):
            continue
        samples = prior_samples(others, float(depth), steps)
        true_peak = float(steps[int(np.argmax(truth))])
        for frac in fractions:
            k = observed_upto(steps, frac * steps[-1])
            try:
                fc = forecast_layer(steps, truth[:k], samples, level)
            except ForecastError:
                continue
            prior_mean = fc.prior_mean
            early = _early_fit(steps, truth[:k], fit_settings)
            preds = {"forecast": fc.mean, "prior": prior_mean,
                     "last_value": np.r_[truth[:k], np.full(len(steps) - k, truth[k - 1])],
                     "early_fit": early}
            for method, pred in preds.items():
                row = {"model": model, "layer": layer, "fraction": frac,
                       "observed": k, "method": method}
                if pred is None or not np.isfinite(pred[k:]).all():
                    rows.append({**row, "final_rel_err": math.nan})
                    continue
                peak = float(steps[int(np.argmax(np.r_[truth[:k], pred[k:]]))])
                row.update(
                    final_rel_err=abs(pred[-1] - truth[-1]) / truth[-1],
                    peak_log10_err=abs(math.log10(1 + peak) - math.log10(1 + true_peak)),
                    r2_unseen=_r2(truth[k:], pred[k:]))
                if method == "forecast":
                    row["covered"] = bool(fc.final[1] <= truth[-1] <= fc.final[2])
                elif method == "prior":
                    row["covered"] = bool(fc.prior_lo[-1] <= truth[-1] <= fc.prior_hi[-1])
                rows.append(row)
    return rows


def backtest(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
             fractions: tuple[float, ...] = (0.1, 0.25, 0.5), level: float = 0.9,
             fit_settings=None, workers: int = 1) -> pd.DataFrame:
    """Truncate every model's every layer at each fraction of its last step and forecast
    the rest, with the other models as the prior. ``curves``: model -> (steps, depths,
    L x S values). One row per (model, layer, fraction, method): the final value's
    relative error, the peak step's log10 error, R2 on the unseen part, and (forecast,
    prior) whether the interval covers the true final value. ``workers`` > 1 backtests
    the models in that many processes (the same rows, in the same order)."""
    from functools import partial

    from madyn.parallel import map_ordered

    one = partial(_backtest_model, curves=curves, fractions=tuple(fractions), level=level,
                  fit_settings=fit_settings)
    per_model = map_ordered(one, list(curves), workers)
    return pd.DataFrame([row for rows in per_model for row in rows])


def backtest_summary(table: pd.DataFrame) -> dict:
    """Per fraction and method: median final-value error (%), median peak-step error
    (log10 steps), median R2 on the unseen part, interval coverage, and rows."""
    out: dict = {}
    for (frac, method), g in table.groupby(["fraction", "method"], sort=True):
        ok = g.dropna(subset=["final_rel_err"])
        entry = {"final_err_pct": round(100 * float(ok["final_rel_err"].median()), 2),
                 "peak_log10_err": round(float(ok["peak_log10_err"].median()), 3),
                 "r2_unseen": round(float(ok["r2_unseen"].median()), 3),
                 "n": int(len(ok)), "failed": int(len(g) - len(ok))}
        if "covered" in ok and ok["covered"].notna().any():
            entry["coverage"] = round(float(ok["covered"].dropna().astype(float).mean()), 3)
        out.setdefault(f"{int(round(100 * frac))}%", {})[method] = entry
    return out


# ------------------------------------------------------- a run on its own planned schedule
# Time is relative to each run's planned schedule: u = step / last step (the run's planned
# last step; a prior model's own last step). Curves are interpolated on the axis
# v = log(1 + REL_SCALE u): about log-step early, about linear in u late.
REL_SCALE = 1000.0
# How far a prior is from a run (prior_distance): each component's distance in [0, 1];
# 1 = entirely foreign. A ratio of this much (or more) in schedule length, peak lr or
# vocabulary size counts as 1; the log of the ratio scales linearly below it.
FOREIGN_RATIO = {"last_step": 10.0, "lr": 10.0, "vocab_size": 10.0}
UNKNOWN_DISTANCE = 0.5  # a component the run or the prior does not state
SAME_SHAPE_EVAL = 0.5  # evaluation batches of the same shape but other tokens
# The prior models' spread and the run's checkpoint noise are widened by this factor: on
# held-out models of the committed suites, forecast from the others, 1.0 left the 90 %
# intervals covering 71-79 % of true final values at 10 % of training (docs/forecasting.md)
SPREAD_SCALE = 1.3
# The wide fallback of a foreign prior: the run's own recent movement continued as a random
# walk, this many times (calibrated as SPREAD_SCALE, the prior taken as foreign)
FALLBACK_SCALE = 2.0


def rel_axis(u: np.ndarray) -> np.ndarray:
    """The interpolation axis of relative time ``u`` (step / last step): log(1 + 1000 u)."""
    return np.log1p(REL_SCALE * np.clip(np.asarray(u, float), 0, None))


def relative_samples(prior: list[tuple[np.ndarray, np.ndarray, np.ndarray]], depth: float,
                     u: np.ndarray) -> np.ndarray:
    """M x S log curves of the prior models (each: relative steps (S_p,), relative depths
    (L_p,), L_p x S_p raw values) at relative ``depth`` on the relative steps ``u``; a model
    whose relative steps do not span ``u`` or whose values there are not all positive and
    finite is left out."""

    out = []
    for p_u, p_depths, vals in prior:
        if p_u.min() > u.min() + 1e-9 or p_u.max() < u.max() - 1e-9:
            continue
        at = _log_at_depth(p_depths, vals, depth)
        if not np.isfinite(at).all():
            continue
        out.append(np.interp(rel_axis(u), rel_axis(p_u), at))
    return np.array(out).reshape(len(out), len(u))


def component_distance(key: str, run_value, prior_value) -> float:
    """One component of :func:`prior_distance` in [0, 1]: ``family`` and ``schedule`` 0
    when equal else 1; ``last_step``, ``lr``, ``vocab_size`` |ln(run / prior)| over
    ln(FOREIGN_RATIO), clipped; ``eval`` ({n_seqs, seq_len, tokens_sha256}): 0 for the same
    tokens, SAME_SHAPE_EVAL for the same shape, else 1. UNKNOWN_DISTANCE when either side
    does not state it."""
    if run_value is None or prior_value is None:
        return UNKNOWN_DISTANCE
    if key in FOREIGN_RATIO:
        try:
            r = abs(math.log(float(run_value) / float(prior_value)))
        except (ValueError, ZeroDivisionError):
            return UNKNOWN_DISTANCE
        return float(min(1.0, r / math.log(FOREIGN_RATIO[key])))
    if key == "eval":
        sha_r, sha_p = run_value.get("tokens_sha256"), prior_value.get("tokens_sha256")
        if sha_r and sha_r == sha_p:
            return 0.0
        shape = [(run_value.get(k), prior_value.get(k)) for k in ("n_seqs", "seq_len")]
        if any(a is None or b is None for a, b in shape):
            return UNKNOWN_DISTANCE
        return SAME_SHAPE_EVAL if all(a == b for a, b in shape) else 1.0
    return 0.0 if str(run_value) == str(prior_value) else 1.0


DISTANCE_KEYS = ("family", "last_step", "schedule", "lr", "vocab_size", "eval")


def prior_distance(run: dict, models: dict[str, dict]) -> dict:
    """How far a prior (model -> its recipe: family, last_step, schedule, lr, vocab_size,
    eval) is from a run (the same keys): per model, each component's distance
    (:func:`component_distance`) and the model's ``foreign`` (their maximum: one entirely
    different component makes the model foreign); ``foreign``: the median over models (the
    forecast's shrinkage and widening, see :func:`forecast_relative`); ``run``: what the run
    states; ``prior``: per component, the prior's values."""
    per = {}
    for name, m in models.items():
        comp = {k: round(component_distance(k, run.get(k), m.get(k)), 3)
                for k in DISTANCE_KEYS}
        per[name] = {**comp, "foreign": max(comp.values())}
    foreign = float(np.median([p["foreign"] for p in per.values()])) if per else 1.0
    values = {k: sorted({json_key(m.get(k)) for m in models.values()}) for k in DISTANCE_KEYS}
    return {"foreign": round(foreign, 3), "run": {k: run.get(k) for k in DISTANCE_KEYS},
            "prior": values, "models": per}


def json_key(v) -> str:
    """A recipe value as a short string (for listing the prior's values)."""
    if isinstance(v, dict):
        return ",".join(f"{k}={v[k]}" for k in sorted(v) if k != "tokens_sha256") + (
            f",tokens={str(v['tokens_sha256'])[:12]}" if v.get("tokens_sha256") else "")
    return "unknown" if v is None else str(v)


def _robust_var(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """A robust variance (median squared deviation from the median / 0.455: the variance
    for Gaussian data)."""
    med = np.median(x, axis=axis, keepdims=True)
    return np.median((x - med) ** 2, axis=axis) / 0.4549


def run_walk(u: np.ndarray, y: np.ndarray) -> float:
    """The rate (log value squared per unit of :func:`rel_axis`) at which a run's log curve
    ``y`` (at relative steps ``u``) has moved over the later half of what was seen: the
    median of its squared increments over their length on the axis."""
    v = rel_axis(u)
    h = max(len(y) // 2, 1) - 1
    dv, dy = np.diff(v[h:]), np.diff(y[h:])
    ok = dv > 0
    return float(np.median(dy[ok] ** 2 / dv[ok])) if ok.any() else 0.0


def forecast_relative(steps: np.ndarray, u: np.ndarray, observed: np.ndarray,
                      samples: np.ndarray, foreign: float, level: float = 0.9,
                      seed: int = 0) -> Forecast:
    """One layer's forecast on ``steps`` (S,; relative steps ``u``) from its first values
    ``observed`` (raw, k < S) and the prior's log curves ``samples`` (M x S, relative
    time), for a prior ``foreign`` in [0, 1] (:func:`prior_distance`).

    The forecast carries the last value forward, times the prior's relative change from the
    last seen position, shrunk toward no change: in log space
    y(u) = y_k + w(u) D(u), D the prior models' median change from u_k to u, and
    w = (1 - foreign) D^2 / (D^2 + s^2), s^2 the prior models' (robust) variance of that
    change. With a foreign or scattered prior the point forecast is the last value. Its
    variance: SPREAD_SCALE^2 x the run's checkpoint noise (from its second differences)
    + (1 - foreign) (SPREAD_SCALE^2 s^2 + ((1 - w) D)^2) + foreign F^2, F^2 the wide
    fallback: the run's own recent movement (:func:`run_walk`) continued as a random walk
    on the relative time axis to u, times FALLBACK_SCALE^2. Intervals Student-t with M - 1
    degrees of freedom."""
    observed = checked_observed(observed, steps)
    k = len(observed)
    m = len(samples)
    if m < MIN_PRIOR_MODELS:
        raise ForecastError(f"{m} prior model(s) reach the run's relative steps; a forecast "
                            f"needs at least {MIN_PRIOR_MODELS}")
    y = np.log(observed)
    d2 = np.diff(y, n=2)
    noise = float(np.median(d2 ** 2) / 6) if d2.size else 0.0
    change = samples[:, k:] - samples[:, k - 1:k]  # M x U
    med = np.median(change, axis=0)
    spread = _robust_var(change) * (m + 1) / m
    fallback = FALLBACK_SCALE ** 2 * run_walk(u[:k], y) * (rel_axis(u[k:])
                                                           - rel_axis(u[k - 1]))
    w = (1 - foreign) * med ** 2 / np.maximum(med ** 2 + spread, 1e-12)
    mu = y[-1] + w * med
    var = (SPREAD_SCALE ** 2 * noise + (1 - foreign) * (
        SPREAD_SCALE ** 2 * spread + ((1 - w) * med) ** 2) + foreign * fallback)
    sd = np.sqrt(var)
    q = _t_quantile(level, m - 1)
    full_mu, full_sd = np.r_[y, mu], np.r_[np.zeros(k), sd]
    prior_mean = np.median(samples, axis=0)
    prior_sd = np.sqrt(_robust_var(samples) * (m + 1) / m)
    rng = np.random.default_rng(seed)
    # draws: the interval's width, shared along the curve (a level shift), plus checkpoint
    # noise per step
    z = rng.standard_t(max(m - 1, 1), size=(N_DRAWS, 1))
    draws = mu + z * np.sqrt(np.maximum(var - noise, 0)) + rng.normal(
        0, math.sqrt(noise), (N_DRAWS, len(mu)))
    full_draws = np.concatenate([np.broadcast_to(y, (N_DRAWS, k)), draws], axis=1)
    peaks = steps[np.argmax(full_draws, axis=1)]
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    return Forecast(
        steps=steps, mean=np.exp(full_mu), lo=np.exp(full_mu - q * full_sd),
        hi=np.exp(full_mu + q * full_sd), observed=k,
        final=(float(np.exp(mu[-1])), float(np.exp(mu[-1] - q * sd[-1])),
               float(np.exp(mu[-1] + q * sd[-1]))),
        peak_step=(float(steps[int(np.argmax(full_mu))]), float(np.percentile(peaks, lo_q)),
                   float(np.percentile(peaks, hi_q))),
        peak_before_end=float(np.mean(peaks < steps[-1])),
        prior_mean=np.exp(prior_mean), prior_lo=np.exp(prior_mean - q * prior_sd),
        prior_hi=np.exp(prior_mean + q * prior_sd))
