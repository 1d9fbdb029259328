"""How well the design predicts a layer's curve: the evaluations of the regressors of
:mod:`madyn.predict.regressors` on a feature table. No file I/O.

Inputs: the shape features, plus each design feature that is known for every row and varies
between them (:func:`madyn.predict.features.feature_columns`; listed in the metrics' ``features``).

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
* ``lodo`` / ``curve_lodo``: the same, leaving out one DESIGN at a time (all its seeds, so
  no seed of the held-out design is seen), when some design has several models; the
  baseline then averages the other designs' models.

Metrics with undefined values (R^2 with < 2 points or constant truth; non-finite curves)
are NaN in Python and null in JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from madyn.io import jsonable
from madyn.predict.curves import (
    curve,
    curve_peak,
    curve_scores,
    dense_grid,
    mean_curve_baseline,
    raw_params,
)
from madyn.predict.features import (
    check_table,
    feature_columns,
    feature_matrix,
    param_names,
    target_columns,
    usable_rows,
)
from madyn.predict.regressors import (
    MODEL_TYPES,
    cv_select,
    fit_predict,
    make_model,
    regression_metrics,
)
from madyn.settings import PredictSettings


def _select_and_predict(job: tuple[str, str], d: pd.DataFrame, X: np.ndarray,
                        tr: np.ndarray, te: np.ndarray, s: PredictSettings
                        ) -> tuple[dict, float, np.ndarray]:
    """:func:`study_protocol`'s work for one (target, model type): the CV-selected
    params, their CV MSE, and the test rows' predictions."""
    tgt, kind = job
    y = d[tgt].to_numpy(float)
    params, cv_mse = cv_select(kind, s, X[tr], y[tr])
    return params, cv_mse, fit_predict(kind, s, X[tr], y[tr], X[te], **params)


def study_protocol(table: pd.DataFrame, s: PredictSettings, workers: int = 1
                   ) -> tuple[dict, pd.DataFrame]:
    """Random 80/20 row split, CV model selection on the 80 %, test metrics; and the test
    predictions (model, layer, target, model_type, y_true, y_pred). ``workers`` > 1: the
    (target, model type) pairs in that many processes (the same results)."""
    from sklearn.model_selection import train_test_split

    d = usable_rows(table)
    n_test = int(math.ceil(s.test_fraction * len(d)))
    if len(d) < 5 or n_test < 2 or len(d) - n_test < 3:
        return {"skipped": f"too few usable rows ({len(d)}) for a {s.test_fraction} split"}, \
            pd.DataFrame()
    tr, te = train_test_split(np.arange(len(d)), test_size=n_test, random_state=s.seed,
                              shuffle=True)
    tr, te = np.sort(tr), np.sort(te)
    X = feature_matrix(d, feature_columns(d))
    out: dict[str, Any] = {"n_train": len(tr), "n_test": len(te),
                           "test_models": sorted(d.loc[te, "model"].unique().tolist()),
                           "per_target": {}}
    from functools import partial

    from madyn.parallel import map_ordered

    jobs = [(tgt, kind) for tgt in target_columns(d) for kind in MODEL_TYPES]
    fitted = dict(zip(jobs, map_ordered(partial(_select_and_predict, d=d, X=X, tr=tr, te=te,
                                                s=s), jobs, workers), strict=True))
    preds = []
    for tgt in target_columns(d):
        y = d[tgt].to_numpy(float)
        res = {}
        for kind in MODEL_TYPES:
            params, cv_mse, p = fitted[tgt, kind]
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


def lomo_predictions(table: pd.DataFrame, s: PredictSettings,
                     kinds: tuple[str, ...] = MODEL_TYPES, group: str = "model",
                     workers: int = 1, by_model: pd.DataFrame | None = None
                     ) -> pd.DataFrame:
    """Leave-one-group-out predictions of every target (``group`` "model": one model held
    out at a time; "design": all seeds of one design): columns model, layer, target,
    model_type, y_true, y_pred (sorted by group, model, layer). ``workers`` > 1: the
    groups in that many processes (the same rows). ``by_model``: this function's rows for
    ``group`` "model" on the same table and kinds; a group of one model reuses them (the
    same training rows, so the same fits: a design atlas's single-seed designs)."""
    from functools import partial

    from madyn.parallel import map_ordered

    d = usable_rows(table)
    groups = d[group].to_numpy()
    order = sorted(set(groups))
    known: dict = {}
    if by_model is not None and group != "model":
        models = d.groupby(group)["model"].unique()
        known = {g: by_model[by_model["model"] == models[g][0]] for g in order
                 if len(models[g]) == 1}
    held_out = partial(_held_out_predictions, d=d, X=feature_matrix(d, feature_columns(d)),
                       groups=groups, s=s, kinds=kinds)
    todo = [g for g in order if g not in known]
    fresh = dict(zip(todo, map_ordered(held_out, todo, workers), strict=True))
    frames = [f for g in order for f in ([known[g]] if g in known else fresh[g])]
    return pd.concat(frames, ignore_index=True)


def _held_out_predictions(g, d: pd.DataFrame, X: np.ndarray, groups: np.ndarray,
                          s: PredictSettings, kinds: tuple[str, ...]) -> list[pd.DataFrame]:
    """:func:`lomo_predictions`' frames for the held-out group ``g`` (``X``: the rows'
    features, ``groups``: each row's group)."""
    te, tr = groups == g, groups != g
    out = []
    for tgt in target_columns(d):
        y = d[tgt].to_numpy(float)
        for kind in kinds:
            p = fit_predict(kind, s, X[tr], y[tr], X[te])
            out.append(pd.DataFrame({"model": d.loc[te, "model"].to_numpy(),
                                     "layer": d.loc[te, "layer"].to_numpy(),
                                     "target": tgt, "model_type": kind,
                                     "y_true": y[te], "y_pred": p}))
    return out


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


def _observed(series: pd.DataFrame, quantity: str
              ) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(model, layer) -> the unflagged steps and values of ``quantity``, by step."""
    s = series[(series["quantity"] == quantity) & ~series["flagged"].astype(bool)]
    return {(str(m), int(la)): (g["step"].to_numpy(float), g["value"].to_numpy(float))
            for (m, la), g in s.sort_values("step", kind="stable").groupby(["model", "layer"])}


def _predicted_targets(preds: pd.DataFrame, kinds: list[str], names: list[str]
                       ) -> dict[tuple[str, int, str], np.ndarray]:
    """(model, layer, model type) -> the predicted targets ``target_<name>`` in ``names``
    order, for the model types ``kinds`` of :func:`lomo_predictions`' rows."""
    rows = preds[preds["model_type"].isin(kinds)]
    if rows.empty:
        return {}
    wide = rows.pivot_table(index=["model", "layer", "model_type"], columns="target",
                            values="y_pred", aggfunc="first", dropna=False)
    values = wide[[f"target_{n}" for n in names]].to_numpy(float)
    return {(str(m), int(la), k): v for (m, la, k), v in zip(wide.index, values, strict=True)}


def curve_lomo(table: pd.DataFrame, series: pd.DataFrame, preds: pd.DataFrame,
               kinds: list[str], s: PredictSettings, group: str = "model"
               ) -> tuple[dict, pd.DataFrame]:
    """Curve-space leave-one-group-out for ``kinds`` (model types in ``preds``, made by
    :func:`lomo_predictions` with the same ``group``) and the ``mean_curve`` baseline (over
    the models of the other groups); returns metrics and the predicted curves (model,
    layer, step, model_type, pred, observed)."""
    names = param_names(table)
    transforms = table.attrs["transforms"]
    d = usable_rows(table)
    group_of = dict(zip(d["model"], d[group], strict=False))
    per: dict[str, dict] = {k: {} for k in [*kinds, "mean_curve"]}
    curves = []
    observed = _observed(series, s.quantity)
    none = (np.array([]), np.array([]))
    predicted = _predicted_targets(preds, kinds, names)
    for m in sorted(d["model"].unique()):
        layers = d.loc[d["model"] == m, ["layer", "f_depth"]].sort_values("layer")
        obs = {int(la): observed.get((str(m), int(la)), none) for la in layers["layer"]}
        if not any(len(v[0]) >= 2 for v in obs.values()):
            for k in per:
                per[k][m] = {"skipped": f"no observed {s.quantity} series for {m}"}
            continue
        held = [x for x, gx in group_of.items() if gx == group_of[m]]
        for kind in [*kinds, "mean_curve"]:
            rows = []
            for la, dep in layers.itertuples(index=False):
                st, y = obs[int(la)]
                if len(st) < 2:
                    continue
                if kind == "mean_curve":
                    pred = mean_curve_baseline(table, held, np.array([dep]), st,
                                               s.parametrisation)[0]
                    g = dense_grid(st.min(), st.max())
                    gc = mean_curve_baseline(table, held, np.array([dep]), g,
                                             s.parametrisation)[0]
                    peak = float(g[int(np.argmax(gc))]) if np.all(np.isfinite(gc)) else math.nan
                else:
                    tv = predicted[str(m), int(la), kind][None, :]
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


def evaluate(table: pd.DataFrame, series: pd.DataFrame | None,
             settings: PredictSettings | dict | None = None, return_extras: bool = False,
             workers: int = 1) -> dict | tuple[dict, dict[str, pd.DataFrame]]:
    """All evaluations of the predictors on a feature table (see the module docstring).

    ``series``: observed values (model, step, layer, quantity, value, flagged); None skips
    curve LOMO. Returns the JSON-serialisable metrics (NaN -> None); with ``return_extras``
    also the prediction tables ``study_predictions``, ``lomo_predictions``, ``lomo_curves``.
    ``workers``: processes the held-out groups are spread over (the same results).
    """
    s = PredictSettings.of(settings)
    check_table(table, s.parametrisation, s.quantity)
    d = usable_rows(table)
    n_models = int(d["model"].nunique())
    excluded = table[~table["usable"]]
    metrics: dict[str, Any] = {
        "parametrisation": s.parametrisation, "quantity": s.quantity,
        "n_rows": len(d), "n_models": n_models, "n_rows_total": len(table),
        "excluded": [{"model": r.model, "layer": int(r.layer), "reason": r.exclude_reason}
                     for r in excluded.itertuples()],
        "targets": target_columns(table), "features": feature_columns(d),
        "model_types": list(MODEL_TYPES), "settings": dataclasses.asdict(s),
    }
    extras: dict[str, pd.DataFrame] = {}
    metrics["study_protocol"], extras["study_predictions"] = study_protocol(table, s, workers)
    if n_models < 2:
        reason = f"leave-one-model-out needs >= 2 models with usable rows, found {n_models}"
        metrics["lomo"] = {"skipped": reason}
        metrics["curve_lomo"] = {"skipped": reason}
    else:
        preds = lomo_predictions(table, s, workers=workers)
        extras["lomo_predictions"] = preds
        metrics["lomo"] = lomo_metrics(preds)
        kinds = sorted({metrics["lomo"]["best_model_type"], "xgb"})
        if series is None:
            metrics["curve_lomo"] = {"skipped": "no observed series given"}
        else:
            metrics["curve_lomo"], extras["lomo_curves"] = curve_lomo(
                table, series, preds, kinds, s)
    metrics["lodo"], metrics["curve_lodo"] = leave_one_design_out(
        table, series, s, workers, by_model=extras.get("lomo_predictions"))
    metrics = json.loads(json.dumps(jsonable(metrics), allow_nan=False))
    return (metrics, extras) if return_extras else metrics


def leave_one_design_out(table: pd.DataFrame, series: pd.DataFrame | None,
                         s: PredictSettings, workers: int = 1,
                         by_model: pd.DataFrame | None = None) -> tuple[dict, dict]:
    """Leave-one-design-out (every seed of a design held out together; the honest test of
    the design features when a suite repeats designs over seeds): parameter metrics, and
    curve-space scores of the best model type and xgb against the ``mean_curve`` baseline
    of the other designs. Skipped (with the reason) unless >= 2 designs and some design
    has several models. ``by_model``: the leave-one-model-out predictions, reused for the
    designs of one model (:func:`lomo_predictions`)."""
    d = usable_rows(table)
    n_designs, n_models = int(d["design"].nunique()), int(d["model"].nunique())
    if n_designs < 2 or n_designs == n_models:
        why = (f"needs >= 2 designs, found {n_designs}" if n_designs < 2 else
               "every model is its own design: leave-one-design-out is lomo")
        return {"skipped": why}, {"skipped": why}
    preds = lomo_predictions(table, s, group="design", workers=workers, by_model=by_model)
    out = {"n_designs": n_designs, "designs": sorted(d["design"].unique().tolist()),
           **lomo_metrics(preds)}
    if series is None:
        return out, {"skipped": "no observed series given"}
    kinds = sorted({out["best_model_type"], "xgb"})
    curves, _ = curve_lomo(table, series, preds, kinds, s, group="design")
    return out, curves


def ols_summaries(table: pd.DataFrame) -> str:
    """statsmodels OLS summaries (all usable rows, features + constant) per target; the
    Date/Time fields are blanked so the text is reproducible."""
    import statsmodels.api as sm

    d = usable_rows(table)
    Xc = sm.add_constant(d[feature_columns(d)].astype(float), has_constant="add")
    parts = []
    for tgt in target_columns(d):
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
    d = usable_rows(table)
    cols = feature_columns(d)
    rows = []
    for tgt in target_columns(d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = make_model("xgb", s).fit(d[cols].astype(float), d[tgt].astype(float))
        gain = m.get_booster().get_score(importance_type="gain")
        rows += [{"target": tgt, "feature": f, "gain": float(gain.get(f, 0.0))}
                 for f in cols]
    return pd.DataFrame(rows)


def showcase_model(table: pd.DataFrame) -> str:
    """The held-out model shown in the figure: the one with most parameters."""
    d = usable_rows(table)
    return str(d.sort_values(["n_params", "model"]).iloc[-1]["model"])
