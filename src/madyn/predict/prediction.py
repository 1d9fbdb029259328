"""Predict a new architecture's per-layer curves from the feature table, before training
(a run's forecast from its first steps: :mod:`madyn.predict.forecast`). No file I/O.

The point prediction is ``predict_model`` trained on every usable row (a parameter
regressor of :mod:`madyn.predict.regressors`, or ``mean_curve``: the training models' fitted curves
averaged at the same relative depth). Intervals: a deterministic bootstrap over MODELS
(grouped), the ``interval`` percentiles of the ensemble, widened to contain the point
prediction. Peaks are taken on a dense step grid over the requested step range.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd

from madyn.architecture import architecture, design, is_architecture
from madyn.io import jsonable
from madyn.predict.curves import curve, dense_grid, depth_curves, raw_params
from madyn.predict.features import (
    DESIGN_FEATURES,
    check_table,
    feature_columns,
    feature_frame,
    feature_matrix,
    param_names,
    target_columns,
    usable_rows,
)
from madyn.predict.regressors import fit_predict
from madyn.settings import PredictSettings

# what a user gives for a design feature the predictors need (madyn predict's options)
DESIGN_INPUT = {"f_log_lr": "lr", "f_log_eps": "eps (or optimizer sgd)", "f_sgd": "optimizer"}


def query_features(d: pd.DataFrame, arch: dict, axes: dict | None
                   ) -> tuple[pd.DataFrame, list[str]]:
    """The new model's feature rows (one per layer; ``axes``: its :func:`design`, None when
    unknown) and the predictors' columns on training rows ``d``; ValueError naming the
    design input the query lacks when the predictors use it (it varies across the
    training models)."""
    cols = feature_columns(d)
    new = feature_frame(arch, axes=axes)
    missing = [c for c in cols if not np.isfinite(new[c].to_numpy(float)).all()]
    if missing:
        need = sorted({DESIGN_INPUT.get(c, c) for c in missing})
        raise ValueError(f"the predictors use {missing} (they vary across the training "
                         f"models); give the new model's {' and '.join(need)}")
    return new, cols


def _fit_all_targets(kind: str, s: PredictSettings, d: pd.DataFrame, Xnew: np.ndarray,
                     seed: int, cols: list[str]) -> np.ndarray:
    """(n_new, n_targets) predictions of ``kind`` trained on rows ``d`` (columns
    ``cols``)."""
    X = feature_matrix(d, cols)
    return np.column_stack([fit_predict(kind, s, X, d[t].to_numpy(float), Xnew, seed=seed)
                            for t in target_columns(d)])


def predict_architecture(table: pd.DataFrame, config_or_arch: dict, steps,
                         settings: PredictSettings | dict | None = None
                         ) -> tuple[pd.DataFrame, dict]:
    """Predicted curves of every layer of a new architecture.

    ``config_or_arch``: a HF config dict or the output of :func:`madyn.architecture.architecture`;
    ``steps``: training steps to evaluate at. The point prediction is ``predict_model``
    trained on all usable rows. Intervals: a deterministic bootstrap over MODELS (grouped:
    ``n_boot`` resamples of the training models with replacement, rng seeded by ``seed``,
    regressor seed ``seed + b``), the ``interval`` percentiles of the ensemble's curves,
    pointwise per step, widened where needed to contain the point prediction (so
    lo <= pred <= hi wherever the curves are finite). Returns the curves (layer, step, pred,
    lo, hi) and a summary: per layer the peak step on a dense grid over the step range,
    whether it lies strictly inside, and the final value, each with lo / hi.
    """
    s = PredictSettings.of(settings)
    check_table(table, s.parametrisation, s.quantity)
    if is_architecture(config_or_arch):
        arch, axes = config_or_arch, None
    else:
        arch, axes = architecture(config_or_arch), design(config_or_arch)
    steps = np.unique(np.asarray(steps, float))
    d = usable_rows(table)
    if d.empty:
        raise ValueError("feature table has no usable rows to train on")
    if s.predict_model in ("mean_curve", "auto"):  # depth alone: no shape or design feature
        # (auto, the curve-space winner, needs the suite's series: madyn.stages.predict)
        s = dataclasses.replace(s, predict_model="mean_curve")
        curves, summary = _predict_mean_curve(d, arch, steps, s)
        return curves, {**summary, "features": [], "design_features": {}}
    names = param_names(d)
    transforms = table.attrs["transforms"]
    new, cols = query_features(d, arch, axes)
    Xnew = feature_matrix(new, cols)
    point = raw_params(_fit_all_targets(s.predict_model, s, d, Xnew, s.seed, cols), names,
                       transforms)
    models = np.array(sorted(d["model"].unique()))
    rng = np.random.default_rng(s.seed)
    boot = []
    for b in range(s.n_boot):
        pick = rng.choice(models, size=len(models), replace=True)
        db = pd.concat([d[d["model"] == m] for m in pick], ignore_index=True)
        boot.append(raw_params(_fit_all_targets(s.predict_model, s, db, Xnew, s.seed + b,
                                                cols), names, transforms))
    lo_q, hi_q = s.interval
    rows, layers = [], []
    grid = dense_grid(steps.min(), steps.max())
    for i in range(len(new)):
        pc = curve(s.parametrisation, steps, point[i])
        bc = np.stack([curve(s.parametrisation, steps, bp[i]) for bp in boot]) if boot \
            else pc[None]
        lo, hi = band(bc, pc, lo_q, hi_q)
        rows.append(pd.DataFrame({"layer": i, "step": steps, "pred": pc, "lo": lo, "hi": hi}))
        layers.append(layer_summary(i, s, point[i], [bp[i] for bp in boot], grid, lo_q, hi_q))
    summary = _prediction_summary(s, models, d, arch, steps, layers)
    summary["features"] = cols
    summary["design_features"] = {c: float(new[c].iloc[0]) for c in cols
                                  if c in DESIGN_FEATURES}
    return pd.concat(rows, ignore_index=True), jsonable(summary)


def _prediction_summary(s: PredictSettings, models: np.ndarray, d: pd.DataFrame, arch: dict,
                        steps: np.ndarray, layers: list[dict]) -> dict:
    """The summary.json of :func:`predict_architecture` (any ``predict_model``)."""
    return {"model_type": s.predict_model, "parametrisation": s.parametrisation,
            "quantity": s.quantity, "n_boot": s.n_boot, "interval": list(s.interval),
            "interval_method": "bootstrap over training models (grouped), percentiles",
            "trained_on_models": models.tolist(), "n_rows": len(d),
            "architecture": arch, "steps": [float(steps.min()), float(steps.max())],
            "layers": layers}


def _predict_mean_curve(d: pd.DataFrame, arch: dict, steps: np.ndarray,
                        s: PredictSettings) -> tuple[pd.DataFrame, dict]:
    """``predict_model: mean_curve``: each layer's curve is the mean of the training
    models' fitted curves at the same relative depth ((layer + 1) / L); the interval is
    the same grouped bootstrap over models as for the parameter predictors."""
    new = feature_frame(arch)
    depths = new["f_depth"].to_numpy(float)
    grid = dense_grid(steps.min(), steps.max())
    on_steps = depth_curves(d, depths, steps, s.parametrisation)
    on_grid = depth_curves(d, depths, grid, s.parametrisation)
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
            lo, hi = band(bc, pc, lo_q, hi_q)
            rows.append(pd.DataFrame({"layer": i, "step": steps, "pred": pc, "lo": lo,
                                      "hi": hi}))
            j = int(np.nanargmax(pg))
            bj = np.nanargmax(bg, axis=1)
            pk_lo, pk_hi = band(grid[bj][:, None], np.array([grid[j]]), lo_q, hi_q)
            fv_lo, fv_hi = band(bg[:, -1:], pg[-1:], lo_q, hi_q)
            layers.append({"layer": i, "peak_step": float(grid[j]),
                           "peak_step_lo": float(pk_lo[0]), "peak_step_hi": float(pk_hi[0]),
                           "peak_in_range": bool(0 < j < len(grid) - 1),
                           "peak_in_range_frac": float(np.mean((bj > 0)
                                                               & (bj < len(grid) - 1))),
                           "final_ratio": float(pg[-1]), "final_ratio_lo": float(fv_lo[0]),
                           "final_ratio_hi": float(fv_hi[0])})
    summary = _prediction_summary(s, models, d, arch, steps, layers)
    return pd.concat(rows, ignore_index=True), jsonable(summary)


def band(ens: np.ndarray, point: np.ndarray, lo_q: float, hi_q: float
          ) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        lo = np.nanpercentile(np.where(np.isfinite(ens), ens, np.nan), lo_q, axis=0)
        hi = np.nanpercentile(np.where(np.isfinite(ens), ens, np.nan), hi_q, axis=0)
    return np.fmin(lo, point), np.fmax(hi, point)


def layer_summary(i: int, s: PredictSettings, p: np.ndarray, boot: list[np.ndarray],
                   grid: np.ndarray, lo_q: float, hi_q: float) -> dict:
    def stats(q: np.ndarray) -> tuple[float, float, bool]:
        c = curve(s.parametrisation, grid, q)
        if not np.all(np.isfinite(c)):
            return math.nan, math.nan, False
        j = int(np.argmax(c))
        return float(grid[j]), float(c[-1]), 0 < j < len(grid) - 1

    peak, final, inside = stats(p)
    b = np.array([stats(q)[:2] for q in boot]).reshape(-1, 2)
    pk_lo, pk_hi = band(b[:, :1], np.array([peak]), lo_q, hi_q)
    fv_lo, fv_hi = band(b[:, 1:], np.array([final]), lo_q, hi_q)
    frac = float(np.mean([stats(q)[2] for q in boot])) if boot else float(inside)
    return {"layer": i, "peak_step": peak, "peak_step_lo": float(pk_lo[0]),
            "peak_step_hi": float(pk_hi[0]), "peak_in_range": bool(inside),
            "peak_in_range_frac": frac, "final_ratio": final,
            "final_ratio_lo": float(fv_lo[0]), "final_ratio_hi": float(fv_hi[0])}
