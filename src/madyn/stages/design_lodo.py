"""Design-LODO stage: the curve-space predictors of :mod:`madyn.predict.design_predictors`
under nested leave-one-design-out (:mod:`madyn.predict.design_lodo`) on a suite's series,
the sample-efficiency curve, and a prediction of a new design's curves by the winner
(``madyn predict``'s default)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.io import atomic_path, read_json, write_json
from madyn.predict import design_curves as dc
from madyn.predict import design_lodo as dl
from madyn.predict import design_predictors as dp
from madyn.predict.forecast import layer_curves

# the recipe keys a suite states that become design features (model_features)
RECIPE_KEYS = ("optimizer", "lr", "eps", "warmup", "warmup_fraction", "schedule",
               "weight_decay", "beta2", "batch_size", "bos", "steps")


def suite_recipes(suite: dict) -> dict[str, dict]:
    """model -> what its suite entry (over the suite's train section) states of the recipe
    (:data:`RECIPE_KEYS`)."""
    train = dict(suite.get("train") or {})
    out = {}
    for m in suite.get("models", []):
        r = {k: v for k, v in {**train, **m}.items() if k in RECIPE_KEYS}
        if "warmup" not in r and "warmup_fraction" in r and "steps" in r:
            r["warmup"] = float(r["warmup_fraction"]) * float(r["steps"])
        out[str(m["name"])] = r
    return out


def load(series_paths: list[str], config_paths: list[str], designs: dict[str, str],
         recipes: dict[str, dict], quantity: str) -> dc.DesignData:
    """The suite's rows of ``quantity``: series Parquets (one model each), config.json
    files (matched by file stem), model -> design label, model -> recipe."""
    configs = {Path(p).stem: read_json(p) for p in config_paths}
    curves, feats = {}, {}
    for p in series_paths:
        s = pd.read_parquet(p)
        m = str(s["model"].iloc[0])
        if m not in configs:
            raise ValueError(f"no config.json for model {m!r} (give --configs)")
        curves[m] = layer_curves(s, quantity)
        feats[m] = dc.model_features(configs[m], float(curves[m][0].max()), recipes.get(m))
    return dc.design_data(curves, designs, pd.DataFrame.from_dict(feats, orient="index"))


def evaluate(series_paths: list[str], config_paths: list[str], designs: dict[str, str],
             recipes: dict[str, dict], quantities: list[str], out_json: str, out_csv: str,
             out_efficiency: str, out_png: str | None = None, workers: int = 1,
             sizes=(8, 16, 32), repeats: int = 3, seed: int = 0,
             out_backtest: str | None = None, fractions=(0.1, 0.25, 0.5),
             level: float = 0.9, fit_settings=None, early_fit: bool = True) -> dict:
    """Nested LODO of every kind for each quantity, the design-prior forecast backtest
    leaving each design out (``out_backtest``: its rows, CSV), and the sample-efficiency
    curve of the winner and the mean curve (first quantity); writes the metrics JSON, the
    scored rows (CSV), the efficiency table (CSV) and its figure."""
    from madyn.predict import design_forecast as dfc

    t0 = time.monotonic()
    doc: dict = {"quantities": {}, "grid": {"n": dc.N_GRID, "axis": "v = log(1 + 1000 u)"},
                 "forecast": {"level": level, "fractions": list(fractions)}}
    tables, backtests = [], []
    for q in quantities:
        data = load(series_paths, config_paths, designs, recipes, q)
        table, summary, held = dl.lodo(data, dp.KINDS, nested=True, seed=seed,
                                       workers=workers)
        summary["winner"], summary["winner_inner_log_mse"] = dl.winner(data, dp.KINDS, seed)
        summary["features"] = dc.usable_features(data.X, sorted(set(data.models)))
        doc["quantities"][q] = summary
        tables.append(table.assign(quantity=q))
        bt = dfc.cross_conformal(dfc.backtest_rows(data, held, fractions, fit_settings,
                                                   early_fit, workers), level)
        backtests.append(bt.assign(quantity=q))
        doc["forecast"][q] = {"summary": dfc.summary(bt),
                              "calibration": {m: dfc.calibration(bt, level, m)
                                              for m in ("forecast", "prior")},
                              "weights": dfc.blend_weights(bt)}
    if out_backtest:
        with atomic_path(out_backtest) as tmp:
            pd.concat(backtests, ignore_index=True).to_csv(tmp, index=False,
                                                           float_format="%.6g")
    q0 = quantities[0]
    data = load(series_paths, config_paths, designs, recipes, q0)
    win = doc["quantities"][q0]["winner"]
    kinds = tuple(dict.fromkeys(["mean_log", win]))
    eff = dl.sample_efficiency(data, kinds, sizes, repeats, seed, workers)
    doc["sample_efficiency"] = {"quantity": q0, "rows": eff.to_dict(orient="records")}
    doc["seconds"] = round(time.monotonic() - t0, 1)
    with atomic_path(out_csv) as tmp:
        pd.concat(tables, ignore_index=True).to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_efficiency) as tmp:
        eff.to_csv(tmp, index=False, float_format="%.6g")
    if out_png:
        from madyn.report.plots_predict import plot_sample_efficiency

        plot_sample_efficiency(eff, q0, out_png)
    write_json(out_json, doc)
    print(f"madyn design-lodo: {doc['quantities'][q0]['n_designs']} designs, "
          f"{len(quantities)} quantities: {doc['seconds']} s", file=sys.stderr)
    return doc


def table_lines(doc: dict) -> list[str]:
    """A markdown table per quantity: kind, median curve R^2, mean / median final-value
    error, layers."""
    lines = []
    for q, s in doc["quantities"].items():
        lines += [f"{q} ({s['n_designs']} designs, {s['n_layers']} layers; winner "
                  f"{s['winner']})", "",
                  "| predictor | median curve R² | final-value error (mean) | (median) |",
                  "|---|---|---|---|"]
        for k, v in s["per_kind"].items():
            lines.append(f"| {k} | {v['r2_median']:.3f} | {100 * v['final_rel_err_mean']:.1f} "
                         f"% | {100 * v['final_rel_err_median']:.1f} % |")
        lines.append("")
    fc = doc.get("forecast", {})
    for q in doc["quantities"]:
        if q not in fc:
            continue
        lines += [f"forecast backtest, {q}: final-value error (median %) and coverage of "
                  f"the {int(100 * fc['level'])} % interval", "",
                  "| seen | forecast | prior alone | last value | early AICc fit | "
                  "prior moved to the run's level | coverage | prior coverage |",
                  "|---|---|---|---|---|---|---|---|"]
        for frac, m in fc[q]["summary"].items():
            def err(k, m=m):
                return f"{m[k]['final_err_pct']:.1f} %" if k in m else "n/a"
            lines.append(f"| {frac} | {err('forecast')} | {err('prior')} | "
                         f"{err('last_value')} | {err('early_fit')} | {err('offset')} | "
                         f"{m['forecast'].get('coverage')} | {m['prior'].get('coverage')} |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------- madyn predict

def predict_design(series_paths: list[str], config_paths: list[str],
                   designs: dict[str, str], recipes: dict[str, dict], config: dict,
                   query_recipe: dict, steps: np.ndarray, last_step: float,
                   quantity: str, kind: str | None, measured: dict | None,
                   level: float = 0.9, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """A new design's per-layer curves of ``quantity`` at ``steps`` (a schedule ending at
    ``last_step``) by ``kind`` (None: the winner of a non-nested LODO run here, over
    every kind), trained on every model of the suite. Intervals: split-conformal, the
    ``level`` quantile of the absolute held-out log residuals of that kind under LODO, per
    grid point. Returns curves (layer, step, pred, lo, hi) and a summary."""
    data = load(series_paths, config_paths, designs, recipes, quantity)
    if kind is None:
        _, doc, _ = dl.lodo(data, dp.KINDS, nested=False, seed=seed)
        kind = max(doc["per_kind"], key=lambda k: doc["per_kind"][k]["r2_median"])
        measured = doc["per_kind"][kind]
        chosen_by = "leave-one-design-out, computed now (no design_lodo metrics found)"
    else:
        chosen_by = "nested leave-one-design-out (design_lodo metrics)"
    _, doc, held = dl.lodo(data, (kind,), nested=False, seed=seed)
    measured = measured or doc["per_kind"][kind]
    resid = np.abs(held - data.Y)
    n = len(resid)
    qlev = min(1.0, math.ceil((n + 1) * level) / n)
    half = np.quantile(resid, qlev, axis=0)
    pred = dp.Predictor(kind, seed).fit(data)
    feats = dc.model_features(config, last_step, query_recipe)
    missing = [c for c in pred.cols if not math.isfinite(feats.get(c, math.nan))]
    if missing:
        raise ValueError(f"the {kind} predictor uses {missing} (they vary across the "
                         "suite's designs); give the new design's recipe")
    from madyn.architecture import architecture

    L = int(architecture(config)["num_hidden_layers"])
    depths = (np.arange(L) + 1) / L
    X = pd.DataFrame([feats] * L)
    logc = pred.predict(X, depths)
    rows, layers = [], []
    steps = np.asarray(steps, float)
    for i in range(L):
        c = dc.curve_on_steps(logc[i], steps, last_step)
        lo = dc.curve_on_steps(logc[i] - half, steps, last_step)
        hi = dc.curve_on_steps(logc[i] + half, steps, last_step)
        rows.append(pd.DataFrame({"layer": i, "step": steps, "pred": c, "lo": lo, "hi": hi}))
        j = int(np.argmax(logc[i]))
        layers.append({"layer": i, "peak_step": float(dc.GRID_U[j] * last_step),
                       "peak_in_range": bool(0 < j < dc.N_GRID - 1),
                       f"final_{quantity}": float(np.exp(logc[i][-1])),
                       f"final_{quantity}_lo": float(np.exp(logc[i][-1] - half[-1])),
                       f"final_{quantity}_hi": float(np.exp(logc[i][-1] + half[-1]))})
    summary = {"model_type": kind, "chosen_by": chosen_by,
               "measured_lodo": {k: measured.get(k) for k in
                                 ("r2_median", "final_rel_err_mean", "final_rel_err_median",
                                  "n_designs", "n_layers") if k in measured},
               "quantity": quantity, "time": "relative: step / last_step",
               "last_step": float(last_step), "features": pred.cols,
               "design_features": {c: feats[c] for c in pred.cols},
               "interval": [50 * (1 - level), 50 * (1 + level)],
               "interval_method": "split-conformal on leave-one-design-out log residuals",
               "trained_on_models": sorted(set(data.models.tolist())),
               "n_designs": int(len(set(data.designs.tolist()))), "layers": layers}
    return pd.concat(rows, ignore_index=True), summary
