"""Per-layer curve fitting with competing hypotheses and AICc model selection.

One series (training steps, values) is fitted with every hypothesis of
:mod:`madyn.curves.hypotheses` on normalised data (t_n = step / last step, y_n = (y - mean) / sd),
by trust-region reflective least squares with the analytic Jacobian, from a few
variable-projection starting points; parameters are scaled back exactly to raw units.

Information criteria (k = number of curve parameters; the noise variance sigma^2 is NOT
counted in k; RSS in raw units; n = points used):
    AIC  = n log(RSS / n) + 2 k
    AICc = AIC + 2 k (k + 1) / (n - k - 1)
    BIC  = n log(RSS / n) + k log(n)
Regularised hypotheses are scored on their data residuals only (the penalty is not in RSS).
Selection per series: the lowest AICc among successful fits, with Akaike weights
w_i = exp(-Delta_i / 2) / sum_j exp(-Delta_j / 2), Delta_i = AICc_i - min AICc.

Data handling per series: flagged checkpoints and non-finite values are dropped (recorded in
``reason``); too few points, duplicate steps, a last step of 0 or a constant series skip the
series; a hypothesis with k >= n - 1 is skipped. After a first fit, points beyond
``outlier_mad`` robust sigmas of the AICc winner's residuals are removed once and every
hypothesis is refitted (reason "outlier step(s) [...] removed").

Derived per curve: asymptote (t -> inf; NaN if it diverges), final_value (curve at the last
observed step), peak_step (step of the interior maximum: Lambert W for the emlog forms, a
dense log grid up to 100 x the last step otherwise; NaN if there is none) and peak_in_range.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from madyn.curves.hypotheses import EMLOG, Hypothesis, clip_inside, get, warm_depth
from madyn.io import jsonable
from madyn.settings import FitSettings

Array = np.ndarray


@dataclass
class FitResult:
    """One hypothesis fitted to one series. Parameters, pcov and residuals in raw units;
    ``steps`` are the checkpoints used (after removals), residuals = data - curve there."""

    hypothesis: str
    family: str
    param_names: list[str]
    n: int
    k: int
    success: bool = False
    reason: str = ""
    popt: Array = field(default_factory=lambda: np.zeros(0))
    pcov: Array = field(default_factory=lambda: np.zeros((0, 0)))
    perr: Array = field(default_factory=lambda: np.zeros(0))
    r2: float = math.nan
    aic: float = math.nan
    aicc: float = math.nan
    bic: float = math.nan
    residuals: Array = field(default_factory=lambda: np.zeros(0))
    steps: Array = field(default_factory=lambda: np.zeros(0))
    last_step: float = math.nan
    asymptote: float = math.nan
    final_value: float = math.nan
    peak_step: float = math.nan
    peak_in_range: bool = False
    akaike_weight: float = math.nan
    is_winner: bool = False
    nfev: int = 0
    popt_norm: Array = field(default_factory=lambda: np.zeros(0))


# ---------------------------------------------------------------------------------------------
# one hypothesis
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """A cleaned series and its normalisation."""

    t: Array  # raw steps (n,)
    y: Array  # raw values (n,)
    t_scale: float
    mu: float
    sd: float

    @property
    def t_n(self) -> Array:
        return self.t / self.t_scale

    @property
    def y_n(self) -> Array:
        return (self.y - self.mu) / self.sd


def _residual_fns(h: Hypothesis, t: Array, y: Array, alpha: float):
    def fun(p: Array) -> Array:
        r = h.func(t, *p) - y
        pen = h.penalty(p, alpha)
        return np.concatenate([r, pen]) if pen.size else r

    def jac(p: Array) -> Array:
        J = h.jac(t, *p)
        pj = h.penalty_jac(p, alpha)
        return np.vstack([J, pj]) if pj.size else J

    return fun, jac


def _refine(h: Hypothesis, t: Array, y: Array, starts: Array, s: FitSettings):
    """Best TRF solution over ``starts`` (lowest cost, penalty included), or None."""
    fun, jac = _residual_fns(h, t, y, s.alpha)
    best, nfev, errors = None, 0, []
    for x0 in starts:
        try:
            with np.errstate(all="ignore"):
                sol = least_squares(fun, x0, jac=jac, bounds=h.bounds, method="trf",
                                    x_scale="jac", max_nfev=s.max_nfev,
                                    ftol=s.ftol)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
            errors.append(str(exc))
            continue
        nfev += sol.nfev
        if np.isfinite(sol.cost) and (best is None or sol.cost < best.cost):
            best = sol
    return best, nfev, errors


def _covariance(h: Hypothesis, t_fit: Array, p_n: Array, rss_n: float, d: _Data) -> Array:
    """Raw-unit covariance: s^2 (J^T J)^-1 on normalised data, mapped by d p_raw / d p_n."""
    n, k = len(t_fit), h.k
    J = h.jac(t_fit, *p_n)
    if n <= k or not np.all(np.isfinite(J)):
        return np.full((k, k), np.nan)
    _, sv, vt = np.linalg.svd(J, full_matrices=False)
    if sv[-1] <= np.finfo(float).eps * max(J.shape) * sv[0]:
        return np.full((k, k), np.nan)
    cov_n = (vt.T / sv**2) @ vt * (rss_n / (n - k))
    D = h.to_raw_jac(p_n, d.t_scale, d.mu, d.sd)
    return D @ cov_n @ D.T


def _numeric_peak(h: Hypothesis, p: Array, last: float) -> float:
    """Step of the interior maximum on a dense log grid up to 100 x last step; NaN if none."""
    grid = np.concatenate([[0.0], np.logspace(0, np.log10(max(last, 1.0) * 100), 3000)])
    with np.errstate(all="ignore"):
        f = h.func(grid, *p)
    if not np.all(np.isfinite(f)):
        return math.nan
    i = int(np.argmax(f))
    tol = 1e-9 * (np.ptp(f) + abs(f[i]))
    if i == 0 or i == len(f) - 1 or f[i] - max(f[0], f[-1]) <= tol:
        return math.nan
    return float(grid[i])


def _derived(r: FitResult, h: Hypothesis) -> None:
    last = float(r.last_step)
    r.asymptote = h.asymptote(r.popt)
    with np.errstate(all="ignore"):
        r.final_value = float(h.func(np.array([last]), *r.popt)[0])
    peak = h.peak_step(r.popt)
    r.peak_step = _numeric_peak(h, r.popt, last) if peak is None else peak
    r.peak_in_range = bool(np.isfinite(r.peak_step) and r.peak_step <= last)


def _score(r: FitResult, rss: float, tss: float) -> None:
    n, k = r.n, r.k
    ll = n * math.log(max(rss, 1e-300) / n)
    r.r2 = 1.0 - rss / tss if tss > 0 else math.nan
    r.aic = ll + 2 * k
    r.aicc = r.aic + 2 * k * (k + 1) / (n - k - 1)
    r.bic = ll + k * math.log(n)


def fit_hypothesis(h: Hypothesis, d: _Data, s: FitSettings,
                   warm: Array | None = None) -> FitResult:
    """Fit one hypothesis to one cleaned series; never raises (failures: success=False)."""
    n = len(d.t)
    r = FitResult(h.name, h.family, list(h.param_names), n=n, k=h.k, steps=d.t.copy(),
                  last_step=float(d.t.max()))
    if h.k >= n - 1:
        r.reason = f"skipped: k={h.k} >= n-1={n - 1}"
        return r
    try:
        t_fit = d.t_n if h.scale_time else d.t
        y_n = d.y_n
        n_grid = s.n_starts if warm is None else s.n_starts_warm
        starts = h.starts(t_fit, y_n, n_grid, s.grid_density)
        if warm is not None:
            w = np.atleast_2d(np.asarray(warm, float))
            w = [clip_inside(row, h.bounds) for row in w if np.all(np.isfinite(row))]
            starts = np.vstack([*w, starts]) if w else starts
        sol, r.nfev, errors = _refine(h, t_fit, y_n, starts, s)
        if sol is None:
            r.reason = "fit failed: " + ("; ".join(errors[:1]) or "no finite solution")
            return r
        p_n = sol.x
        res_n = y_n - h.func(t_fit, *p_n)
        rss_n = float(res_n @ res_n)
        r.popt_norm = p_n
        r.popt = h.to_raw(p_n, d.t_scale, d.mu, d.sd)
        with np.errstate(all="ignore"):
            r.residuals = d.y - h.func(d.t, *r.popt)
        rss = float(r.residuals @ r.residuals)
        if not np.isfinite(rss):
            r.reason = "fit failed: non-finite residuals"
            return r
        r.pcov = _covariance(h, t_fit, p_n, rss_n, d)
        with np.errstate(invalid="ignore"):
            r.perr = np.sqrt(np.diag(r.pcov))
        _score(r, rss, float(np.sum((d.y - d.y.mean()) ** 2)))
        _derived(r, h)
        r.success = True
        if sol.status == 0:
            r.reason = f"max_nfev={s.max_nfev} reached"
    except Exception as exc:  # noqa: BLE001 - a failed fit is recorded, never raised
        r.success = False
        r.reason = f"fit failed: {type(exc).__name__}: {exc}"
    return r


def _warm_start(h: Hypothesis, done: dict[str, FitResult]) -> Array | None:
    """(m, k) normalised optima of the successfully fitted ``h.warm_from`` sources, each
    mapped into ``h``'s parameters; None if there is none."""
    rows = []
    for src_name, warm_map in h.warm_from:
        src = done.get(src_name)
        if src is None or not src.success:
            continue
        p = np.asarray(src.popt_norm, float)
        with np.errstate(all="ignore"):
            rows.append(warm_map(p) if warm_map is not None else p)
    return np.array(rows) if rows else None


# ---------------------------------------------------------------------------------------------
# one series
# ---------------------------------------------------------------------------------------------


def _clean(steps: Array, values: Array, flagged: Array | None
           ) -> tuple[Array, Array, list[str]]:
    """Drop flagged and non-finite points, sort by step; returns t, y and reason notes."""
    t = np.asarray(steps, float)
    y = np.asarray(values, float)
    notes: list[str] = []
    keep = np.ones(len(t), bool)
    if flagged is not None:
        fl = np.asarray(flagged, bool)
        if fl.any():
            notes.append(f"{int(fl.sum())} flagged checkpoint{'s' if fl.sum() > 1 else ''} "
                         "removed")
        keep &= ~fl
    bad = keep & ~(np.isfinite(t) & np.isfinite(y))
    if bad.any():
        notes.append(f"{int(bad.sum())} non-finite value{'s' if bad.sum() > 1 else ''} removed")
    keep &= ~bad
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order], y[keep][order], notes


def _skip_reason(t: Array, y: Array, s: FitSettings) -> str:
    if len(t) < s.min_points:
        return f"skipped: {len(t)} usable points < min_points={s.min_points}"
    if len(np.unique(t)) < len(t):
        return "skipped: duplicate steps"
    if t.max() <= 0:
        return "skipped: last step is 0"
    if np.std(y) == 0:
        return "skipped: constant series"
    return ""


def _fit_all(hyps: list[Hypothesis], d: _Data, s: FitSettings) -> list[FitResult]:
    order = sorted(range(len(hyps)), key=lambda i: warm_depth(hyps[i].name))  # sources first
    done: dict[str, FitResult] = {}
    for i in order:
        h = hyps[i]
        done[h.name] = fit_hypothesis(h, d, s, _warm_start(h, done))
    return [done[h.name] for h in hyps]


def select(results: list[FitResult]) -> FitResult | None:
    """Akaike weights over successful fits with finite AICc; marks and returns the winner."""
    ok = [r for r in results if r.success and np.isfinite(r.aicc)]
    for r in results:
        r.akaike_weight, r.is_winner = (0.0 if r.success else math.nan), False
    if not ok:
        return None
    a = np.array([r.aicc for r in ok])
    w = np.exp(-0.5 * (a - a.min()))
    w /= w.sum()
    for r, wi in zip(ok, w, strict=True):
        r.akaike_weight = float(wi)
    best = ok[int(np.argmin(a))]
    best.is_winner = True
    return best


def _outliers(best: FitResult, y: Array, s: FitSettings) -> Array:
    """Mask of points whose residual exceeds outlier_mad robust sigmas (1.4826 MAD).

    The noise of these series is roughly multiplicative (coefficient of variation ~5 %), so
    for a positive series and curve a point must exceed the threshold both in raw residuals
    and in residuals relative to the curve (r / f): large values with proportionally large
    noise, and small values near a loosely fitted tail, are then not taken for outliers.
    """
    r = best.residuals
    mask = _beyond(r, s.outlier_mad)
    fitted = y - r
    if mask.any() and np.all(fitted > 0) and np.all(y > 0):
        mask &= _beyond(r / fitted, s.outlier_mad)
    return mask


def _beyond(r: Array, n_sigma: float) -> Array:
    med = np.median(r)
    sigma = 1.4826 * np.median(np.abs(r - med))
    if not np.isfinite(sigma) or sigma <= 0:
        return np.zeros(len(r), bool)
    return np.abs(r - med) > n_sigma * sigma


def _make_data(t: Array, y: Array) -> _Data:
    return _Data(t, y, float(t.max()), float(y.mean()), float(y.std()))


def fit_series(steps: Array, values: Array, settings: FitSettings | None = None,
               flagged: Array | None = None) -> list[FitResult]:
    """Fit every hypothesis of ``settings`` to one series and select by AICc.

    steps: (n,) training steps; values: (n,) raw values; flagged: optional (n,) bool of
    checkpoints to leave out. Returns one FitResult per hypothesis (settings order).
    Never raises for bad data: skipped or failed fits carry success=False and a reason.
    """
    s = settings or FitSettings()
    hyps = [get(name) for name in s.hypotheses]
    t, y, notes = _clean(steps, values, flagged)
    skip = _skip_reason(t, y, s)
    if skip:
        return [FitResult(h.name, h.family, list(h.param_names), n=len(t), k=h.k,
                          reason="; ".join([*notes, skip]), steps=t,
                          last_step=float(t.max()) if len(t) else math.nan) for h in hyps]
    results = _fit_all(hyps, _make_data(t, y), s)
    best = select(results)
    if best is not None and s.outlier_mad > 0:
        out = _outliers(best, y, s)
        if out.any() and len(t) - out.sum() >= s.min_points:
            notes.append(f"outlier step(s) {[int(v) for v in t[out]]} removed")
            t, y = t[~out], y[~out]
            if np.std(y) > 0:
                results = _fit_all(hyps, _make_data(t, y), s)
    for r in results:
        r.reason = "; ".join([*notes, r.reason] if r.reason else notes)
    select(results)
    return results


# ---------------------------------------------------------------------------------------------
# one model: tidy table and released layout
# ---------------------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), allow_nan=False)


def released_entry(r: FitResult, layer: int) -> dict:
    """The released-data-set record of one fit (strict-JSON values, NaN -> None)."""
    return jsonable({
        "param_names": r.param_names, "popt": r.popt, "pcov": r.pcov, "r2": r.r2,
        "aic": r.aic, "residuals": r.residuals, "aicc": r.aicc, "bic": r.bic,
        "akaike_weight": r.akaike_weight, "is_winner": r.is_winner, "success": r.success,
        "reason": r.reason, "n": r.n, "k": r.k, "perr": r.perr, "steps": r.steps,
        "asymptote": r.asymptote, "final_value": r.final_value, "peak_step": r.peak_step,
        "peak_in_range": r.peak_in_range, "layer": int(layer), "family": r.family,
    })


def table_row(r: FitResult, model: str, quantity: str, layer: int, n_layers: int) -> dict:
    """One row of the tidy fit table."""
    return {
        "model": model, "quantity": quantity, "layer": int(layer), "n_layers": int(n_layers),
        "hypothesis": r.hypothesis, "family": r.family, "n": r.n, "k": r.k, "r2": r.r2,
        "aic": r.aic, "aicc": r.aicc, "bic": r.bic, "akaike_weight": r.akaike_weight,
        "is_winner": r.is_winner, "success": r.success, "reason": r.reason,
        "param_names": _dumps(r.param_names), "popt": _dumps(r.popt), "perr": _dumps(r.perr),
        "asymptote": r.asymptote, "final_value": r.final_value, "peak_step": r.peak_step,
        "peak_in_range": r.peak_in_range, "last_step": r.last_step,
    }


TABLE_COLUMNS = list(table_row(FitResult("h", "f", [], 0, 0), "m", "q", 0, 1))


def fit_model(fit_input: pd.DataFrame, settings: FitSettings | None = None,
              progress: bool = True) -> tuple[pd.DataFrame, dict[str, list]]:
    """Fit every (quantity, layer) series of one model.

    fit_input: columns model, step, layer, quantity, value, flagged (one model).
    Returns the tidy table (one row per quantity, layer, hypothesis; TABLE_COLUMNS) and, per
    quantity, the released layout: a list over layers (ascending) of {hypothesis: record}.
    """
    s = settings or FitSettings()
    model = str(fit_input["model"].iloc[0]) if len(fit_input) else ""
    rows: list[dict] = []
    released: dict[str, list] = {}
    for q in [q for q in s.quantities if q in set(fit_input["quantity"])]:
        t0 = time.perf_counter()
        dq = fit_input[fit_input["quantity"] == q]
        layers = sorted(int(v) for v in dq["layer"].unique())
        released[q] = []
        best_r2 = []
        for layer in layers:
            d = dq[dq["layer"] == layer].sort_values("step")
            flagged = d["flagged"].to_numpy(bool) if "flagged" in d else None
            res = fit_series(d["step"].to_numpy(float), d["value"].to_numpy(float), s, flagged)
            rows += [table_row(r, model, q, layer, len(layers)) for r in res]
            released[q].append({r.hypothesis: released_entry(r, layer) for r in res})
            best_r2 += [r.r2 for r in res if r.is_winner]
        if progress:
            mean = np.nanmean(best_r2) if best_r2 else math.nan
            print(f"[fit] {model} {q}: {len(layers)} layers in {time.perf_counter() - t0:.1f} s,"
                  f" mean winner R^2 {mean:.4f}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), released


def fit_summary(table: pd.DataFrame) -> dict:
    """Metrics of the fit phase over all models (for DVC): per model and quantity, the mean
    over layers of the best emlog-family R^2 (best of original/reparam and their
    regularised variants: the study's figure), the mean and minimum R^2 of the AICc winner,
    and how often each hypothesis wins; plus the same pooled over every layer."""
    ok = table[table["success"].astype(bool)]

    def block(d: pd.DataFrame) -> dict:
        if d.empty:
            return {"n_layers": 0}
        key = ["model", "layer"]
        em = d[d["family"] == EMLOG].groupby(key)["r2"].max()
        win = d[d["is_winner"].astype(bool)]
        return {"n_layers": int(d.groupby(key).ngroups),
                "best_emlog_r2_mean": round(float(em.mean()), 4) if len(em) else None,
                "best_emlog_r2_min": round(float(em.min()), 4) if len(em) else None,
                "winner_r2_mean": round(float(win["r2"].mean()), 4),
                "winner_r2_min": round(float(win["r2"].min()), 4),
                "winners": {str(k): int(v) for k, v in
                            win["hypothesis"].value_counts().sort_index().items()}}

    per_model = {str(m): {str(q): block(dq) for q, dq in dm.groupby("quantity")}
                 for m, dm in ok.groupby("model")}
    failed = table[~table["success"].astype(bool)]
    return {"per_model": per_model,
            "all": {str(q): block(dq) for q, dq in ok.groupby("quantity")},
            "n_fits": int(len(table)), "n_failed": int(len(failed)),
            "failed_reasons": {str(k): int(v) for k, v in
                               failed["reason"].str.split(":").str[0].value_counts().items()}}
