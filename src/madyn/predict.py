"""Predict a layer's curve parameters from the architecture, and evaluate how well that works.

Model types (one regressor per transformed target ``target_*`` of the feature table):

* ``mean``: ``DummyRegressor`` (the training mean), the floor every predictor must beat;
* ``ridge``: ``StandardScaler`` + ``Ridge``;
* ``rf``: ``RandomForestRegressor`` (n_jobs=1, fixed seed);
* ``xgb``: ``xgboost.XGBRegressor`` (tree_method hist, n_jobs=1, fixed random_state);
* ``ols``: statsmodels ``OLS`` with a constant (pinv solve).

Evaluations (:func:`evaluate`):

* ``study_protocol``: the study's random 80/20 split of rows (seeded). Layers of one model sit
  in both parts, so this leaks and does not measure an unseen architecture. Hyperparameters
  are chosen by ``cv_folds``-fold CV (shuffled, seeded) on the training part over small
  grids (ridge: alpha; rf: max_depth; xgb: max_depth x learning_rate).
* ``lomo``: leave-one-model-out. For every model, each predictor is trained on the other
  models only and predicts the held-out model's layers. Hyperparameters are fixed to the
  settings (ridge picks alpha by efficient leave-one-out on the training models: no
  held-out data is touched). Metrics pooled over all held-out rows, and per held-out model.
* ``curve_lomo``: the LOMO-predicted parameters, mapped back with the inverse transforms,
  give a curve ``hypotheses.get(parametrisation).func(steps, *p)`` on the held-out model's
  observed steps; compared with its observed series (``quantity``, flagged points out):
  R^2 of each layer's curve, relative error of the final value, and the absolute error of
  the peak step in log10(step + 1) (predicted peak: argmax on a dense grid over the observed
  range; observed peak: step of the largest observed value). Baseline ``mean_curve``: the
  mean over the other models of their fitted curves at the same relative depth (linear
  interpolation in (layer + 1) / L between their layers).

Metrics with undefined values (R^2 with < 2 points or constant truth; non-finite curves)
are NaN in Python and null in JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from madyn import hypotheses
from madyn.features import (
    FEATURE_COLUMNS,
    architecture,
    feature_frame,
    inverse_transform,
    is_architecture,
    read_feature_table,
)
from madyn.io import atomic_path, write_json

MODEL_TYPES = ("mean", "ridge", "rf", "xgb", "ols")


@dataclass(frozen=True)
class PredictSettings:
    """Settings of the prediction phase (``params.yaml``: ``predict``)."""

    seed: int = 0
    test_fraction: float = 0.2
    cv_folds: int = 5
    xgb_n_estimators: int = 300
    xgb_max_depth: int = 3
    xgb_learning_rate: float = 0.05
    ridge_alphas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    rf_n_estimators: int = 200
    parametrisation: str = "original"
    quantity: str = "ratio"
    n_boot: int = 20  # bootstrap ensemble size for predict_architecture's intervals
    interval: tuple[float, float] = (5.0, 95.0)  # percentiles of the interval
    predict_model: str = "xgb"  # model type of predict_architecture

    @classmethod
    def from_dict(cls, d: dict | None) -> PredictSettings:
        """Build from a mapping (e.g. params.yaml); unknown keys raise ValueError."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown predict setting(s) {unknown}; known: {sorted(known)}")
        for k in ("ridge_alphas", "interval"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        s = cls(**d)
        if s.predict_model not in (*MODEL_TYPES, "mean_curve"):
            raise ValueError(f"predict_model {s.predict_model!r} not in "
                             f"{(*MODEL_TYPES, 'mean_curve')}")
        return s


def _settings(settings: PredictSettings | dict | None) -> PredictSettings:
    return settings if isinstance(settings, PredictSettings) else PredictSettings.from_dict(
        settings)


def _check_table(table: pd.DataFrame, s: PredictSettings) -> None:
    """The table's parametrisation and quantity must be the settings' (ValueError)."""
    for col in ("parametrisation", "quantity"):
        have = sorted(set(table[col].astype(str)))
        if have != [getattr(s, col)]:
            raise ValueError(f"feature table has {col} {have}, settings say "
                             f"{getattr(s, col)!r}")


# ----------------------------------------------------------------------------- regressors

class OLSRegressor:
    """statsmodels OLS with a constant, behind a fit/predict interface."""

    def __init__(self) -> None:
        self.results_ = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> OLSRegressor:
        import statsmodels.api as sm

        Xc = sm.add_constant(np.asarray(X, float), has_constant="add")
        with warnings.catch_warnings():  # after the import: statsmodels adds "always" filters
            warnings.simplefilter("ignore")
            self.results_ = sm.OLS(np.asarray(y, float), Xc).fit()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        import statsmodels.api as sm

        Xc = sm.add_constant(np.asarray(X, float), has_constant="add")
        return np.asarray(self.results_.predict(Xc), float)


def make_model(kind: str, settings: PredictSettings, seed: int | None = None, **params: Any):
    """An unfitted regressor of ``kind`` (see :data:`MODEL_TYPES`) with settings defaults."""
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = settings.seed if seed is None else seed
    if kind == "mean":
        return DummyRegressor(strategy="mean")
    if kind == "ridge":
        reg = (Ridge(alpha=params["alpha"]) if "alpha" in params
               else RidgeCV(alphas=list(settings.ridge_alphas)))
        return make_pipeline(StandardScaler(), reg)
    if kind == "rf":
        return RandomForestRegressor(n_estimators=settings.rf_n_estimators, n_jobs=1,
                                     random_state=seed, max_depth=params.get("max_depth"))
    if kind == "xgb":
        return _xgb_class()(
            n_estimators=settings.xgb_n_estimators,
            max_depth=params.get("max_depth", settings.xgb_max_depth),
            learning_rate=params.get("learning_rate", settings.xgb_learning_rate),
            tree_method="hist", n_jobs=1, random_state=seed, verbosity=0)
    if kind == "ols":
        return OLSRegressor()
    raise ValueError(f"unknown model type {kind!r}; known: {MODEL_TYPES}")


_XGB_CLASS: list = []


def _xgb_class():
    """``xgboost.XGBRegressor`` fed a plain ``DMatrix``: its default ``QuantileDMatrix``
    costs ~50 ms per fit on tiny tables (same trees here, ~7x faster overall)."""
    if not _XGB_CLASS:
        import xgboost

        class XGBRegressorDM(xgboost.XGBRegressor):
            def _create_dmatrix(self, ref, **kwargs):
                return xgboost.DMatrix(**kwargs, nthread=self.n_jobs)

        _XGB_CLASS.append(XGBRegressorDM)
    return _XGB_CLASS[0]


def _grid(kind: str, s: PredictSettings) -> list[dict]:
    """Small hyperparameter grids of the study protocol's CV."""
    if kind == "ridge":
        return [{"alpha": a} for a in s.ridge_alphas]
    if kind == "rf":
        return [{"max_depth": None}, {"max_depth": 3}]
    if kind == "xgb":
        return [{"max_depth": d, "learning_rate": lr}
                for d in sorted({2, s.xgb_max_depth})
                for lr in sorted({s.xgb_learning_rate, 2 * s.xgb_learning_rate})]
    return [{}]


def _fit_predict(kind: str, s: PredictSettings, Xtr: np.ndarray, ytr: np.ndarray,
                 Xte: np.ndarray, seed: int | None = None, **params: Any) -> np.ndarray:
    """Predictions of ``kind`` trained on (Xtr, ytr), clipped to the range of ``ytr``.

    The clip guards every model type alike against extrapolating a (transformed) parameter
    beyond anything observed: linear models on a handful of models otherwise predict
    combinations whose curves overflow (trees and the mean never leave the range)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = make_model(kind, s, seed=seed, **params).fit(Xtr, ytr)
        pred = np.asarray(m.predict(Xte), float)
    return np.clip(pred, np.nanmin(ytr), np.nanmax(ytr))


def _cv_select(kind: str, s: PredictSettings, X: np.ndarray, y: np.ndarray
               ) -> tuple[dict, float]:
    """(best params, their mean CV MSE) by shuffled, seeded K-fold on (X, y)."""
    from sklearn.model_selection import KFold

    grid = _grid(kind, s)
    k = min(s.cv_folds, len(y))
    if k < 2:
        return grid[0], math.nan
    folds = list(KFold(n_splits=k, shuffle=True, random_state=s.seed).split(X))
    best, best_mse = grid[0], math.inf
    for params in grid:
        errs = [np.mean((_fit_predict(kind, s, X[tr], y[tr], X[va], **params) - y[va]) ** 2)
                for tr, va in folds]
        mse = float(np.mean(errs))
        if mse < best_mse:  # strict: ties keep the earlier (simpler) grid point
            best, best_mse = params, mse
    return best, best_mse


# ----------------------------------------------------------------------------- metrics

def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """R^2 (NaN with < 2 points or constant truth), MAE and RMSE."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if len(y) == 0:
        return {"r2": math.nan, "mae": math.nan, "rmse": math.nan, "n": 0}
    err = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum(err ** 2)) / ss_tot if len(y) >= 2 and ss_tot > 0 else math.nan
    return {"r2": r2, "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err ** 2))), "n": int(len(y))}


def _targets(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("target_")]


def _usable(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["usable"]].sort_values(["model", "layer"]).reset_index(drop=True)


def _X(df: pd.DataFrame) -> np.ndarray:
    return df[FEATURE_COLUMNS].to_numpy(dtype=float)


# ----------------------------------------------------------------------------- study protocol

def study_protocol(table: pd.DataFrame, s: PredictSettings) -> tuple[dict, pd.DataFrame]:
    """Random 80/20 row split, CV model selection on the 80 %, test metrics; and the test
    predictions (model, layer, target, model_type, y_true, y_pred)."""
    from sklearn.model_selection import train_test_split

    d = _usable(table)
    n_test = int(math.ceil(s.test_fraction * len(d)))
    if len(d) < 5 or n_test < 2 or len(d) - n_test < 3:
        return {"skipped": f"too few usable rows ({len(d)}) for a {s.test_fraction} split"}, \
            pd.DataFrame()
    tr, te = train_test_split(np.arange(len(d)), test_size=n_test, random_state=s.seed,
                              shuffle=True)
    tr, te = np.sort(tr), np.sort(te)
    X = _X(d)
    out: dict[str, Any] = {"n_train": len(tr), "n_test": len(te),
                           "test_models": sorted(d.loc[te, "model"].unique().tolist()),
                           "per_target": {}}
    preds = []
    for tgt in _targets(d):
        y = d[tgt].to_numpy(float)
        res = {}
        for kind in MODEL_TYPES:
            params, cv_mse = _cv_select(kind, s, X[tr], y[tr])
            p = _fit_predict(kind, s, X[tr], y[tr], X[te], **params)
            res[kind] = {**regression_metrics(y[te], p), "cv_mse": cv_mse,
                         "params": {k: v for k, v in params.items()}}
            preds.append(pd.DataFrame({"model": d.loc[te, "model"].to_numpy(),
                                       "layer": d.loc[te, "layer"].to_numpy(), "target": tgt,
                                       "model_type": kind, "y_true": y[te], "y_pred": p}))
        out["per_target"][tgt] = res
    out["mean_r2"] = _mean_r2(out["per_target"])
    return out, pd.concat(preds, ignore_index=True)


def _mean_r2(per_target: dict) -> dict[str, float]:
    out = {}
    for kind in MODEL_TYPES:
        vals = [per_target[t][kind]["r2"] for t in per_target]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        out[kind] = float(np.mean(vals)) if vals else math.nan
    return out


# ----------------------------------------------------------------------------- LOMO

def lomo_predictions(table: pd.DataFrame, s: PredictSettings,
                     kinds: tuple[str, ...] = MODEL_TYPES) -> pd.DataFrame:
    """Leave-one-model-out predictions of every target: columns model, layer, target,
    model_type, y_true, y_pred (sorted by model, layer)."""
    d = _usable(table)
    X = _X(d)
    models = d["model"].to_numpy()
    out = []
    for m in sorted(set(models)):
        te, tr = models == m, models != m
        for tgt in _targets(d):
            y = d[tgt].to_numpy(float)
            for kind in kinds:
                p = _fit_predict(kind, s, X[tr], y[tr], X[te])
                out.append(pd.DataFrame({"model": m, "layer": d.loc[te, "layer"].to_numpy(),
                                         "target": tgt, "model_type": kind,
                                         "y_true": y[te], "y_pred": p}))
    return pd.concat(out, ignore_index=True)


def lomo_metrics(preds: pd.DataFrame) -> dict:
    """Pooled and per-held-out-model metrics of :func:`lomo_predictions`."""
    per_target: dict[str, dict] = {}
    per_model: dict[str, dict] = {}
    for (tgt, kind), g in preds.groupby(["target", "model_type"], sort=True):
        per_target.setdefault(tgt, {})[kind] = regression_metrics(g["y_true"], g["y_pred"])
    for (m, tgt, kind), g in preds.groupby(["model", "target", "model_type"], sort=True):
        per_model.setdefault(m, {}).setdefault(tgt, {})[kind] = regression_metrics(
            g["y_true"], g["y_pred"])
    kinds = [k for k in MODEL_TYPES if k in set(preds["model_type"])]
    mean_r2 = {k: v for k, v in _mean_r2(per_target).items() if k in kinds}
    cands = {k: v for k, v in mean_r2.items() if k != "mean" and math.isfinite(v)}
    best = max(sorted(cands), key=lambda k: cands[k]) if cands else "xgb"
    return {"per_target": per_target, "per_model": per_model, "mean_r2": mean_r2,
            "best_model_type": best}


# ----------------------------------------------------------------------------- curves

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


def _observed(series: pd.DataFrame, model: str, layer: int, quantity: str
              ) -> tuple[np.ndarray, np.ndarray]:
    s = series[(series["model"] == model) & (series["layer"] == layer)
               & (series["quantity"] == quantity) & ~series["flagged"].astype(bool)]
    s = s.sort_values("step")
    return s["step"].to_numpy(float), s["value"].to_numpy(float)


def _interp_depth(dep: np.ndarray, C: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Rows of C (one per increasing depth ``dep``) linearly interpolated at depths ``at``
    (clamped at the ends): (len(at), C.shape[1])."""
    at = np.clip(np.asarray(at, float), dep[0], dep[-1])
    if len(dep) == 1:
        return np.repeat(C[:1], len(at), axis=0)
    i = np.clip(np.searchsorted(dep, at, side="right") - 1, 0, len(dep) - 2)
    w = ((at - dep[i]) / (dep[i + 1] - dep[i]))[:, None]
    with np.errstate(all="ignore"):
        return np.where(w == 0, C[i], (1 - w) * C[i] + w * C[i + 1])


def mean_curve_baseline(table: pd.DataFrame, model: str, layer_depths: np.ndarray,
                        steps: np.ndarray, parametrisation: str) -> np.ndarray:
    """(n_layers, n_steps): mean over the other models of their fitted curves at the same
    relative depths (linear interpolation in depth, clamped at the ends)."""
    d = _usable(table)
    d = d[d["model"] != model]
    if d.empty:
        return np.full((len(layer_depths), len(steps)), np.nan)
    with np.errstate(all="ignore"):
        return _depth_curves(d, np.asarray(layer_depths, float), steps,
                             parametrisation).mean(axis=0)


def curve_lomo(table: pd.DataFrame, series: pd.DataFrame, preds: pd.DataFrame,
               kinds: list[str], s: PredictSettings) -> tuple[dict, pd.DataFrame]:
    """Curve-space LOMO for ``kinds`` (model types in ``preds``) and the ``mean_curve``
    baseline; returns metrics and the predicted curves (model, layer, step, model_type,
    pred, observed)."""
    names = [c[len("param_"):] for c in table.columns if c.startswith("param_")]
    transforms = table.attrs["transforms"]
    d = _usable(table)
    per: dict[str, dict] = {k: {} for k in [*kinds, "mean_curve"]}
    curves = []
    for m in sorted(d["model"].unique()):
        layers = d.loc[d["model"] == m, ["layer", "f_depth"]].sort_values("layer")
        obs = {int(la): _observed(series, m, int(la), s.quantity) for la in layers["layer"]}
        if not any(len(v[0]) >= 2 for v in obs.values()):
            for k in per:
                per[k][m] = {"skipped": f"no observed {s.quantity} series for {m}"}
            continue
        for kind in [*kinds, "mean_curve"]:
            rows = []
            for la, dep in layers.itertuples(index=False):
                st, y = obs[int(la)]
                if len(st) < 2:
                    continue
                if kind == "mean_curve":
                    pred = mean_curve_baseline(table, m, np.array([dep]), st,
                                               s.parametrisation)[0]
                    g = dense_grid(st.min(), st.max())
                    gc = mean_curve_baseline(table, m, np.array([dep]), g, s.parametrisation)[0]
                    peak = float(g[int(np.argmax(gc))]) if np.all(np.isfinite(gc)) else math.nan
                else:
                    sel = preds[(preds["model"] == m) & (preds["layer"] == la)
                                & (preds["model_type"] == kind)]
                    tv = np.array([[sel.loc[sel["target"] == f"target_{n}", "y_pred"].iloc[0]
                                    for n in names]])
                    p = raw_params(tv, names, transforms)[0]
                    pred = curve(s.parametrisation, st, p)
                    peak = curve_peak(s.parametrisation, p, st.min(), st.max())
                sc = curve_scores(st, y, pred, peak)
                rows.append({"layer": int(la), **sc})
                curves.append(pd.DataFrame({"model": m, "layer": int(la), "step": st,
                                            "model_type": kind, "pred": pred, "observed": y}))
            per[kind][m] = _summarise_layers(rows)
    summary = {k: _summarise_models(v) for k, v in per.items()}
    out = {"model_types": [*kinds, "mean_curve"], "per_model": per, "summary": summary}
    return out, (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame())


def _nanstat(vals: list[float], fn) -> float:
    v = np.array([x for x in vals if x is not None and math.isfinite(x)], float)
    return float(fn(v)) if len(v) else math.nan


def _summarise_layers(rows: list[dict]) -> dict:
    return {"n_layers": len(rows), "n_nonfinite": sum(not r["finite"] for r in rows),
            "r2_mean": _nanstat([r["r2"] for r in rows], np.mean),
            "r2_median": _nanstat([r["r2"] for r in rows], np.median),
            "final_rel_err_mean": _nanstat([r["final_rel_err"] for r in rows], np.mean),
            "peak_log10_err_mean": _nanstat([r["peak_log10_err"] for r in rows], np.mean),
            "per_layer": [{k: r[k] for k in ("layer", "r2", "final_rel_err",
                                             "peak_log10_err")} for r in rows]}


def _summarise_models(per_model: dict) -> dict:
    ok = [v for v in per_model.values() if "skipped" not in v]
    layers = [r for v in ok for r in v["per_layer"]]
    return {"n_models": len(ok),
            "r2_mean_of_models": _nanstat([v["r2_mean"] for v in ok], np.mean),
            "r2_median_of_models": _nanstat([v["r2_median"] for v in ok], np.mean),
            "r2_median_layers": _nanstat([r["r2"] for r in layers], np.median),
            "final_rel_err_mean": _nanstat([r["final_rel_err"] for r in layers], np.mean),
            "peak_log10_err_mean": _nanstat([r["peak_log10_err"] for r in layers], np.mean),
            "n_nonfinite": sum(v["n_nonfinite"] for v in ok)}


# ----------------------------------------------------------------------------- evaluate

def evaluate(table: pd.DataFrame, series: pd.DataFrame | None,
             settings: PredictSettings | dict | None = None, return_extras: bool = False
             ) -> dict | tuple[dict, dict[str, pd.DataFrame]]:
    """All evaluations of the predictors on a feature table (see the module docstring).

    ``series``: observed values (model, step, layer, quantity, value, flagged); None skips
    curve LOMO. Returns the JSON-serialisable metrics (NaN -> None); with ``return_extras``
    also the prediction tables ``study_predictions``, ``lomo_predictions``, ``lomo_curves``.
    """
    s = _settings(settings)
    _check_table(table, s)
    d = _usable(table)
    n_models = int(d["model"].nunique())
    excluded = table[~table["usable"]]
    metrics: dict[str, Any] = {
        "parametrisation": s.parametrisation, "quantity": s.quantity,
        "n_rows": len(d), "n_models": n_models, "n_rows_total": len(table),
        "excluded": [{"model": r.model, "layer": int(r.layer), "reason": r.exclude_reason}
                     for r in excluded.itertuples()],
        "targets": _targets(table), "features": FEATURE_COLUMNS,
        "model_types": list(MODEL_TYPES), "settings": dataclasses.asdict(s),
    }
    extras: dict[str, pd.DataFrame] = {}
    metrics["study_protocol"], extras["study_predictions"] = study_protocol(table, s)
    if n_models < 2:
        reason = f"leave-one-model-out needs >= 2 models with usable rows, found {n_models}"
        metrics["lomo"] = {"skipped": reason}
        metrics["curve_lomo"] = {"skipped": reason}
    else:
        preds = lomo_predictions(table, s)
        extras["lomo_predictions"] = preds
        metrics["lomo"] = lomo_metrics(preds)
        kinds = sorted({metrics["lomo"]["best_model_type"], "xgb"})
        if series is None:
            metrics["curve_lomo"] = {"skipped": "no observed series given"}
        else:
            metrics["curve_lomo"], extras["lomo_curves"] = curve_lomo(
                table, series, preds, kinds, s)
    metrics = json.loads(json.dumps(_clean(metrics), allow_nan=False))
    return (metrics, extras) if return_extras else metrics


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def ols_summaries(table: pd.DataFrame) -> str:
    """statsmodels OLS summaries (all usable rows, features + constant) per target; the
    Date/Time fields are blanked so the text is reproducible."""
    import statsmodels.api as sm

    d = _usable(table)
    Xc = sm.add_constant(d[FEATURE_COLUMNS].astype(float), has_constant="add")
    parts = []
    for tgt in _targets(d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.OLS(d[tgt].astype(float), Xc).fit()
            text = res.summary(title=f"OLS: {tgt} ~ features").as_text()
        text = re.sub(r"(Date:\s+)\S.*?\d{4}", lambda mm: mm.group(1) + "-", text)
        text = re.sub(r"(Time:\s+)\d\d:\d\d:\d\d", lambda mm: mm.group(1) + "-", text)
        parts.append(text)
    return "\n\n".join(parts) + "\n"


def feature_importance(table: pd.DataFrame, s: PredictSettings) -> pd.DataFrame:
    """XGBoost gain per (target, feature), trained on all usable rows (0 = never split)."""
    d = _usable(table)
    rows = []
    for tgt in _targets(d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = make_model("xgb", s).fit(d[FEATURE_COLUMNS].astype(float), d[tgt].astype(float))
        gain = m.get_booster().get_score(importance_type="gain")
        rows += [{"target": tgt, "feature": f, "gain": float(gain.get(f, 0.0))}
                 for f in FEATURE_COLUMNS]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- new architecture

def _fit_all_targets(kind: str, s: PredictSettings, d: pd.DataFrame, Xnew: np.ndarray,
                     seed: int) -> np.ndarray:
    """(n_new, n_targets) predictions of ``kind`` trained on rows ``d``."""
    X = _X(d)
    return np.column_stack([_fit_predict(kind, s, X, d[t].to_numpy(float), Xnew, seed=seed)
                            for t in _targets(d)])


def predict_architecture(table: pd.DataFrame, config_or_arch: dict, steps,
                         settings: PredictSettings | dict | None = None
                         ) -> tuple[pd.DataFrame, dict]:
    """Predicted curves of every layer of a new architecture.

    ``config_or_arch``: a HF config dict or the output of :func:`madyn.features.architecture`;
    ``steps``: training steps to evaluate at. The point prediction is ``predict_model``
    trained on all usable rows. Intervals: a deterministic bootstrap over MODELS (grouped:
    ``n_boot`` resamples of the training models with replacement, rng seeded by ``seed``,
    regressor seed ``seed + b``), the ``interval`` percentiles of the ensemble's curves,
    pointwise per step, widened where needed to contain the point prediction (so
    lo <= pred <= hi wherever the curves are finite). Returns the curves (layer, step, pred,
    lo, hi) and a summary: per layer the peak step on a dense grid over the step range,
    whether it lies strictly inside, and the final value, each with lo / hi.
    """
    s = _settings(settings)
    _check_table(table, s)
    arch = config_or_arch if is_architecture(config_or_arch) else architecture(config_or_arch)
    steps = np.unique(np.asarray(steps, float))
    d = _usable(table)
    if d.empty:
        raise ValueError("feature table has no usable rows to train on")
    if s.predict_model == "mean_curve":
        return _predict_mean_curve(d, arch, steps, s)
    names = [c[len("param_"):] for c in d.columns if c.startswith("param_")]
    transforms = table.attrs["transforms"]
    new = feature_frame(arch)
    Xnew = _X(new)
    point = raw_params(_fit_all_targets(s.predict_model, s, d, Xnew, s.seed), names, transforms)
    models = np.array(sorted(d["model"].unique()))
    rng = np.random.default_rng(s.seed)
    boot = []
    for b in range(s.n_boot):
        pick = rng.choice(models, size=len(models), replace=True)
        db = pd.concat([d[d["model"] == m] for m in pick], ignore_index=True)
        boot.append(raw_params(_fit_all_targets(s.predict_model, s, db, Xnew, s.seed + b),
                               names, transforms))
    lo_q, hi_q = s.interval
    rows, layers = [], []
    grid = dense_grid(steps.min(), steps.max())
    for i in range(len(new)):
        pc = curve(s.parametrisation, steps, point[i])
        bc = np.stack([curve(s.parametrisation, steps, bp[i]) for bp in boot]) if boot \
            else pc[None]
        lo, hi = _band(bc, pc, lo_q, hi_q)
        rows.append(pd.DataFrame({"layer": i, "step": steps, "pred": pc, "lo": lo, "hi": hi}))
        layers.append(_layer_summary(i, s, point[i], [bp[i] for bp in boot], grid, lo_q, hi_q))
    summary = _prediction_summary(s, models, d, arch, steps, layers)
    return pd.concat(rows, ignore_index=True), _clean(summary)


def _prediction_summary(s: PredictSettings, models: np.ndarray, d: pd.DataFrame, arch: dict,
                        steps: np.ndarray, layers: list[dict]) -> dict:
    """The summary.json of :func:`predict_architecture` (any ``predict_model``)."""
    return {"model_type": s.predict_model, "parametrisation": s.parametrisation,
            "quantity": s.quantity, "n_boot": s.n_boot, "interval": list(s.interval),
            "interval_method": "bootstrap over training models (grouped), percentiles",
            "trained_on_models": models.tolist(), "n_rows": len(d),
            "architecture": arch, "steps": [float(steps.min()), float(steps.max())],
            "layers": layers}


def _depth_curves(d: pd.DataFrame, depths: np.ndarray, steps: np.ndarray,
                  parametrisation: str) -> np.ndarray:
    """(n_models, len(depths), len(steps)): each training model's fitted curves
    interpolated at relative ``depths`` (linear in depth, clamped at the ends)."""
    names = [c[len("param_"):] for c in d.columns if c.startswith("param_")]
    out = []
    for _m, g in d.groupby("model", sort=True):
        g = g.sort_values("f_depth")
        C = np.stack([curve(parametrisation, steps, p)
                      for p in g[[f"param_{n}" for n in names]].to_numpy(float)])
        out.append(_interp_depth(g["f_depth"].to_numpy(float), C, depths))
    return np.stack(out)


def _predict_mean_curve(d: pd.DataFrame, arch: dict, steps: np.ndarray,
                        s: PredictSettings) -> tuple[pd.DataFrame, dict]:
    """``predict_model: mean_curve``: each layer's curve is the mean of the training
    models' fitted curves at the same relative depth ((layer + 1) / L); the interval is
    the same grouped bootstrap over models as for the parameter predictors."""
    new = feature_frame(arch)
    depths = new["f_depth"].to_numpy(float)
    grid = dense_grid(steps.min(), steps.max())
    on_steps = _depth_curves(d, depths, steps, s.parametrisation)
    on_grid = _depth_curves(d, depths, grid, s.parametrisation)
    models = np.array(sorted(d["model"].unique()))
    rng = np.random.default_rng(s.seed)
    picks = [rng.integers(0, len(models), size=len(models)) for _ in range(s.n_boot)]
    lo_q, hi_q = s.interval
    rows, layers = [], []
    with np.errstate(all="ignore"):
        for i in range(len(new)):
            pc, pg = on_steps[:, i].mean(0), on_grid[:, i].mean(0)
            bc = np.stack([on_steps[k, i].mean(0) for k in picks])
            bg = np.stack([on_grid[k, i].mean(0) for k in picks])
            lo, hi = _band(bc, pc, lo_q, hi_q)
            rows.append(pd.DataFrame({"layer": i, "step": steps, "pred": pc, "lo": lo,
                                      "hi": hi}))
            j = int(np.nanargmax(pg))
            bj = np.nanargmax(bg, axis=1)
            pk_lo, pk_hi = _band(grid[bj][:, None], np.array([grid[j]]), lo_q, hi_q)
            fv_lo, fv_hi = _band(bg[:, -1:], pg[-1:], lo_q, hi_q)
            layers.append({"layer": i, "peak_step": float(grid[j]),
                           "peak_step_lo": float(pk_lo[0]), "peak_step_hi": float(pk_hi[0]),
                           "peak_in_range": bool(0 < j < len(grid) - 1),
                           "peak_in_range_frac": float(np.mean((bj > 0)
                                                               & (bj < len(grid) - 1))),
                           "final_ratio": float(pg[-1]), "final_ratio_lo": float(fv_lo[0]),
                           "final_ratio_hi": float(fv_hi[0])})
    summary = _prediction_summary(s, models, d, arch, steps, layers)
    return pd.concat(rows, ignore_index=True), _clean(summary)


def _band(ens: np.ndarray, point: np.ndarray, lo_q: float, hi_q: float
          ) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        lo = np.nanpercentile(np.where(np.isfinite(ens), ens, np.nan), lo_q, axis=0)
        hi = np.nanpercentile(np.where(np.isfinite(ens), ens, np.nan), hi_q, axis=0)
    return np.fmin(lo, point), np.fmax(hi, point)


def _layer_summary(i: int, s: PredictSettings, p: np.ndarray, boot: list[np.ndarray],
                   grid: np.ndarray, lo_q: float, hi_q: float) -> dict:
    def stats(q: np.ndarray) -> tuple[float, float, bool]:
        c = curve(s.parametrisation, grid, q)
        if not np.all(np.isfinite(c)):
            return math.nan, math.nan, False
        j = int(np.argmax(c))
        return float(grid[j]), float(c[-1]), 0 < j < len(grid) - 1

    peak, final, inside = stats(p)
    b = np.array([stats(q)[:2] for q in boot]).reshape(-1, 2)
    pk_lo, pk_hi = _band(b[:, :1], np.array([peak]), lo_q, hi_q)
    fv_lo, fv_hi = _band(b[:, 1:], np.array([final]), lo_q, hi_q)
    frac = float(np.mean([stats(q)[2] for q in boot])) if boot else float(inside)
    return {"layer": i, "peak_step": peak, "peak_step_lo": float(pk_lo[0]),
            "peak_step_hi": float(pk_hi[0]), "peak_in_range": bool(inside),
            "peak_in_range_frac": frac, "final_ratio": final,
            "final_ratio_lo": float(fv_lo[0]), "final_ratio_hi": float(fv_hi[0])}


# ----------------------------------------------------------------------------- file entry points

def _read_many(paths: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def run_features(fit_table_paths: list[str], config_paths: dict[str, str], out_parquet: str,
                 out_csv: str, parametrisation: str = "original", quantity: str = "ratio"
                 ) -> pd.DataFrame:
    """Fit tables (Parquet) + per-model config.json -> feature table (Parquet + CSV)."""
    from madyn.features import build_feature_table, write_feature_table

    fit = _read_many(fit_table_paths)
    configs = {m: json.loads(Path(p).read_text()) for m, p in config_paths.items()}
    table = build_feature_table(fit, configs, parametrisation, quantity)
    write_feature_table(table, out_parquet, out_csv)
    return table


def _read_series(paths: list[str]) -> pd.DataFrame:
    """Observed series from Parquet files: fit-input form, or measured series (converted)."""
    from madyn.series import fit_input

    frames = []
    for p in paths:
        df = pd.read_parquet(p)
        frames.append(df if "quantity" in df.columns else fit_input(df))
    return pd.concat(frames, ignore_index=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")


def run_evaluate(feature_table_path: str, series_paths: list[str],
                 settings: PredictSettings | dict | None, out_metrics_json: str,
                 out_dir_for_extras: str, figures: bool = True) -> dict:
    """Evaluate and write: the metrics JSON; in ``out_dir_for_extras`` ``ols_summary.txt``,
    ``study_predictions.csv``, ``lomo_predictions.csv``, ``lomo_curves.csv``,
    ``feature_importance.csv`` and (``figures``) the PNG figures of
    :mod:`madyn.plots_predict`."""
    s = _settings(settings)
    table = read_feature_table(feature_table_path)
    series = _read_series(series_paths) if series_paths else None
    metrics, extras = evaluate(table, series, s, return_extras=True)
    out = Path(out_dir_for_extras)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "ols_summary.txt") as tmp:
        tmp.write_text(ols_summaries(table))
    imp = feature_importance(table, s)
    _write_csv(imp, out / "feature_importance.csv")
    for name in ("study_predictions", "lomo_predictions", "lomo_curves"):
        _write_csv(extras.get(name, pd.DataFrame()), out / f"{name}.csv")
    if figures:
        from madyn import plots_predict as pp

        if "lomo_predictions" in extras:
            pp.plot_pred_vs_fitted(extras["lomo_predictions"], out / "lomo_pred_vs_fitted.png")
        pp.plot_feature_importance(imp, out / "feature_importance.png")
        if "lomo_curves" in extras and not extras["lomo_curves"].empty:
            m = _showcase_model(table)
            pp.plot_heldout_curves(extras["lomo_curves"], m, out / "lomo_heldout_curves.png")
    write_json(out_metrics_json, metrics)
    return metrics


def _showcase_model(table: pd.DataFrame) -> str:
    """The held-out model shown in the figure: the one with most parameters."""
    d = _usable(table)
    return str(d.sort_values(["n_params", "model"]).iloc[-1]["model"])


def run_predict(feature_table_path: str, config_json_path_or_arch_dict: str | dict, steps,
                settings: PredictSettings | dict | None, out_dir: str) -> dict:
    """Predict a new architecture; write ``curves.csv``, ``summary.json`` and
    ``prediction.png`` in ``out_dir``."""
    s = _settings(settings)
    table = read_feature_table(feature_table_path)
    cfg = config_json_path_or_arch_dict
    if not isinstance(cfg, dict):
        cfg = json.loads(Path(cfg).read_text())
    curves, summary = predict_architecture(table, cfg, steps, s)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(curves, out / "curves.csv")
    write_json(out / "summary.json", summary)
    from madyn import plots_predict as pp

    pp.plot_prediction(curves, summary, out / "prediction.png")
    return summary


__all__ = ["MODEL_TYPES", "PredictSettings", "OLSRegressor", "make_model", "evaluate",
           "study_protocol", "lomo_predictions", "lomo_metrics", "curve_lomo",
           "predict_architecture", "run_features", "run_evaluate", "run_predict",
           "regression_metrics", "ols_summaries", "feature_importance"]
