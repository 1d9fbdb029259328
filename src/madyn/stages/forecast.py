"""Forecast stage: the backtest of a complete suite, and the forecast of a run that is
still training to its planned last step."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.io import atomic_path, check_output_folder, output_folder, write_json
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


def _asymptote(steps: np.ndarray, curve: np.ndarray, fit_settings: FitSettings) -> float:
    """The asymptote of the AICc winner fitted to a curve (NaN when no fit succeeds)."""
    from madyn.curves.fit import fit_series, select

    best = select(fit_series(steps, curve, fit_settings))
    return float(best.asymptote) if best is not None else float("nan")


SERIES_COLUMNS = ("model", "step", "layer", "statistic", "mean")


def read_run(path: str, quantities: list[str]) -> pd.DataFrame:
    """The series table of one run (:data:`SERIES_COLUMNS`), checked: rows, every column,
    one model, each (step, layer, statistic) once, finite values of ``quantities``;
    ForecastError naming the file otherwise (a pivot would average a repeated step or a
    second model in, and drop a step that is all NaN)."""
    try:
        run = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise forecast.ForecastError(f"{path}: not a series table ({e})") from None
    missing = [c for c in SERIES_COLUMNS if c not in run.columns]
    if missing:
        raise forecast.ForecastError(f"{path}: no column {missing[0]!r} (a series table, as "
                                     "madyn step series writes it, has "
                                     f"{', '.join(SERIES_COLUMNS)})")
    if run.empty:
        raise forecast.ForecastError(f"{path}: no rows")
    models = sorted(map(str, run["model"].unique()))
    if len(models) > 1:
        raise forecast.ForecastError(
            f"{path}: holds {len(models)} models ({', '.join(map(repr, models[:5]))}); "
            "give the series of one run")
    twice = run.duplicated(["step", "layer", "statistic"], keep=False)
    if twice.any():
        r = run[twice].iloc[0]
        raise forecast.ForecastError(f"{path}: step {r['step']}, layer {r['layer']}, "
                                     f"{r['statistic']} given more than once")
    used = run[run["statistic"].isin(quantities)]
    bad = ~np.isfinite(pd.to_numeric(used["mean"], errors="coerce").to_numpy(float))
    if bad.any():
        r = used[bad].iloc[0]
        raise forecast.ForecastError(f"{path}: non-finite values ({int(bad.sum())}; first: "
                                     f"step {r['step']}, layer {r['layer']}, "
                                     f"{r['statistic']} = {r['mean']})")
    return run


def forecast_run(prior_paths: list[str], run_path: str, last_step: int, out_dir: str,
                 settings: ForecastSettings | None = None,
                 fit_settings: FitSettings | None = None) -> dict:
    """Forecast a run still training (its series so far: ``run_path``) to ``last_step``,
    with the models of ``prior_paths`` as the prior; writes ``curves.csv`` (quantity,
    layer, step, seen, mean, lo, hi, prior_mean, prior_lo, prior_hi), ``summary.json``
    (per quantity and layer: final value, asymptote, peak step, each with its interval,
    and the share of draws peaking before ``last_step``) and ``forecast.png``, all at once
    (:func:`madyn.io.output_folder`: ``out_dir`` new, empty, or madyn's own). The run's
    table is checked first (:func:`read_run`)."""
    s = settings or ForecastSettings()
    fs = fit_settings or FitSettings()
    check_output_folder(out_dir)
    run = read_run(run_path, s.quantities)
    name = str(run["model"].iloc[0])
    rows, summary, figs = [], {}, {}
    prior_series = {m: t for m, t in _read(prior_paths).items() if m != name}
    for q in s.quantities:
        steps_seen, depths, vals = forecast.layer_curves(run, q)
        if last_step <= steps_seen[-1]:
            raise forecast.ForecastError(f"--last-step {last_step} is not after the run's "
                                        f"last checkpoint ({int(steps_seen[-1])})")
        prior = _curves(prior_series, q)
        later = sorted({float(t) for st, _, _ in prior.values() for t in st
                        if steps_seen[-1] < t <= last_step} | {float(last_step)})
        steps = np.r_[steps_seen, later]
        summary[q] = {}
        for layer, depth in enumerate(depths):
            samples = forecast.prior_samples(list(prior.values()), float(depth), steps)
            fc = forecast.forecast_layer(steps, vals[layer], samples, s.level)
            fitted = [_asymptote(steps, c, fs) for c in (fc.lo, fc.mean, fc.hi)]
            a = sorted(fitted)
            summary[q][str(layer)] = {
                "final": dict(zip(("value", "lo", "hi"), fc.final, strict=True)),
                "asymptote": {"value": fitted[1], "lo": a[0], "hi": a[-1]},
                "peak_step": dict(zip(("value", "lo", "hi"), fc.peak_step, strict=True)),
                "peak_before_last_step": fc.peak_before_end}
            rows.append(pd.DataFrame({
                "quantity": q, "layer": layer, "step": steps.astype(int),
                "seen": np.arange(len(steps)) < fc.observed, "mean": fc.mean, "lo": fc.lo,
                "hi": fc.hi, "prior_mean": fc.prior_mean, "prior_lo": fc.prior_lo,
                "prior_hi": fc.prior_hi}))
            if layer == len(depths) // 2:
                figs[q] = (fc, f"{name} layer {layer}: {q} to step {last_step}")
    from madyn.report.plots_forecast import plot_run

    with output_folder(out_dir, "madyn forecast --run") as out:
        pd.concat(rows, ignore_index=True).to_csv(out / "curves.csv", index=False)
        plot_run(figs, out / "forecast.png")
        write_json(out / "summary.json", {"model": name,
                                          "last_step": last_step, "level": s.level,
                                          "layers": summary})
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


def record_refusal(run_path: str, out_dir: str, reason: str) -> dict:
    """A run's forecast that cannot be made, recorded (``--record-refusal``): summary.json
    with ``refused`` (the reason), a curves.csv with its header only and a figure saying
    why, all at once in a folder madyn made (:func:`madyn.io.output_folder`), so that a
    single-run suite's workflow goes on. Returns the summary."""
    from madyn.report.plots_forecast import plot_skipped

    check_output_folder(out_dir)
    try:
        name = str(pd.read_parquet(run_path, columns=["model"])["model"].iloc[0])
    except (OSError, ValueError, KeyError, IndexError):
        name = Path(run_path).stem
    summary = {"model": name, "refused": reason, "layers": {}}
    with output_folder(out_dir, "madyn forecast --run") as out:
        pd.DataFrame(columns=["quantity", "layer", "step", "seen", "mean", "lo", "hi",
                              "prior_mean", "prior_lo", "prior_hi"]).to_csv(
            out / "curves.csv", index=False)
        plot_skipped(f"no forecast of {name}: {reason}", out / "forecast.png")
        write_json(out / "summary.json", summary)
    return summary
