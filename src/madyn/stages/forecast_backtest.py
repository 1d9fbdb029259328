"""The backtest of a complete suite (``madyn forecast --series``): every model truncated at
each of the settings' fractions of its steps and the rest forecast with the other models as
the prior (:func:`madyn.predict.forecast.backtest`); writes the table (CSV, one row per
quantity, model, layer, truncation and method), the summary per quantity and truncation
(JSON metrics: final-value error in %, interval coverage) and a figure of the median layer.
A suite too small for a backtest, or one given a reason to skip, gets the same outs saying
why."""

from __future__ import annotations

import sys
import time

import pandas as pd

from madyn.io import atomic_path, write_json
from madyn.predict import forecast
from madyn.settings import FitSettings, ForecastSettings


def _read(paths: list[str]) -> dict[str, pd.DataFrame]:
    """model -> its series table, each Parquet read once."""
    frames = [pd.read_parquet(p) for p in paths]
    return {str(s["model"].iloc[0]): s for s in frames}


def _curves(series: dict[str, pd.DataFrame], quantity: str) -> dict:
    """model -> (steps, depths, L x S values) of ``quantity``."""
    return {m: forecast.layer_curves(s, quantity) for m, s in series.items()}


def _example(curves: dict, table: pd.DataFrame, level: float) -> tuple:
    """The figure's layer: the model and middle layer whose 25 %-forecast error is the
    median one, forecast from that truncation (Forecast, truth, title)."""
    frac = min(table["fraction"].unique(), key=lambda f: abs(f - 0.25))
    rows = table[(table["method"] == "forecast") & (table["fraction"] == frac)].dropna(
        subset=["final_rel_err"]).sort_values("final_rel_err")
    row = rows.iloc[len(rows) // 2]
    steps, depths, vals = curves[row["model"]]
    others = [c for m, c in curves.items() if m != row["model"]]
    samples = forecast.prior_samples(others, float(depths[int(row["layer"])]), steps)
    truth = vals[int(row["layer"])]
    fc = forecast.forecast_layer(steps, truth[:int(row["observed"])], samples, level)
    title = (f"{row['model']} layer {int(row['layer'])}: {row['quantity']} forecast from "
             f"{int(100 * frac)} % of its steps")
    return fc, truth, title


def backtest(series_paths: list[str], out_json: str, out_csv: str, out_png: str,
             settings: ForecastSettings | None = None,
             fit_settings: FitSettings | None = None, workers: int = 1,
             skip: str | None = None) -> dict:
    """Truncate every model of a complete suite at each of ``settings.fractions`` and
    forecast the rest (:func:`madyn.predict.forecast.backtest`, the models in ``workers``
    processes); write the table (CSV), the summary per quantity (JSON metrics) and a
    figure. Prints the backtest's cost. ``skip``: the reason the suite has no backtest
    (its outs record it, as for a suite too small for one)."""
    s = settings or ForecastSettings()
    if skip is None and len(series_paths) < forecast.MIN_PRIOR_MODELS + 1:
        skip = (f"{len(series_paths)} model(s): a backtest needs at least "
                f"{forecast.MIN_PRIOR_MODELS + 1}")
    if skip is not None:  # a recorded skip, every out made
        reason = skip
        from madyn.report.plots_forecast import plot_skipped

        with atomic_path(out_csv) as tmp:
            pd.DataFrame(columns=["model", "layer", "fraction", "method"]).to_csv(tmp,
                                                                                 index=False)
        plot_skipped(reason, out_png)
        write_json(out_json, {"skipped": reason, "level": s.level})
        print(f"madyn forecast: skipped: {reason}", file=sys.stderr)
        return {"skipped": reason}
    t0 = time.monotonic()
    tables, curves, series = [], {}, _read(series_paths)
    for q in s.quantities:
        curves[q] = _curves(series, q)
        tab = forecast.backtest(curves[q], s.fractions, s.level, fit_settings, workers)
        tables.append(tab.assign(quantity=q))
    table = pd.concat(tables, ignore_index=True)
    if table.empty:
        raise forecast.ForecastError("no layer could be forecast (too few checkpoints?)")
    summary = {q: forecast.backtest_summary(table[table["quantity"] == q])
               for q in s.quantities}
    summary["level"] = s.level
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    from madyn.report.plots_forecast import plot_backtest

    q0 = s.quantities[0]
    plot_backtest(_example(curves[q0], table[table["quantity"] == q0], s.level),
                  summary[q0], q0, out_png)
    write_json(out_json, summary)
    print(f"madyn forecast: backtest of {len(series_paths)} models, {len(s.quantities)} "
          f"quantities, {len(s.fractions)} truncations: {time.monotonic() - t0:.1f} s",
          file=sys.stderr)
    return summary


def backtest_lines(summary: dict, quantities: list[str]) -> list[str]:
    """One line per quantity and truncation of a backtest summary (what ``madyn forecast``
    prints): each method's final-value error and the forecast interval's coverage; none for
    a skipped backtest."""
    lines = []
    for q in quantities if "skipped" not in summary else ():
        for frac, methods in summary[q].items():
            line = ", ".join(f"{m} {v['final_err_pct']:.1f} %" for m, v in methods.items())
            cov = methods.get("forecast", {}).get("coverage")
            lines.append(f"  {q:6} {frac:>4} seen: final-value error {line}; forecast "
                         f"interval coverage {cov}")
    return lines
