"""Fit stage: fit one model's series, its figures, and the summary over all models."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from madyn.curves.fit import fit_model, fit_summary
from madyn.io import atomic_path, write_json
from madyn.measure.series import fit_input
from madyn.settings import FitSettings


def run(series_path: str, params_dir: str, out_table: str,
        settings: FitSettings | None = None) -> pd.DataFrame:
    """Fit one model's series Parquet (from :func:`madyn.measure.series.build_series`); write
    ``{params_dir}/layer_fit_params_{quantity}.json`` per quantity and the tidy fit table
    Parquet ``out_table``, each atomically. Returns the table."""
    s = settings or FitSettings()
    series = pd.read_parquet(series_path)
    table, released = fit_model(fit_input(series, s.quantities), s)
    Path(params_dir).mkdir(parents=True, exist_ok=True)
    for q, layers in released.items():
        write_json(Path(params_dir) / f"layer_fit_params_{q}.json", layers)
    with atomic_path(out_table) as tmp:
        table.to_parquet(tmp, index=False)
    return table


def plot(series_path: str, fits_path: str, out_examples: str, out_quality: str) -> None:
    """Example-fit and fit-quality figures (PNG) of one model."""
    from madyn.report.plots_fit import plot_example_fits, plot_fit_quality

    table = pd.read_parquet(fits_path)
    data = fit_input(pd.read_parquet(series_path), tuple(table["quantity"].unique()))
    plot_example_fits(data, table, out_examples)
    plot_fit_quality(table, out_quality)


def summarise(fit_paths: list[str], out_table: str, out_metrics: str) -> dict:
    """Concatenate the per-model fit tables into ``out_table`` (Parquet) and write the fit
    metrics (:func:`madyn.curves.fit.fit_summary`) to ``out_metrics`` (JSON); returns them."""
    table = pd.concat([pd.read_parquet(f) for f in fit_paths], ignore_index=True)
    with atomic_path(out_table) as tmp:
        table.to_parquet(tmp, index=False)
    summary = fit_summary(table)
    write_json(out_metrics, summary)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """One line per model of the fit metrics (what ``madyn step fit-summary`` prints): the
    ratio fits' mean best R^2 and the winning hypotheses."""
    lines = []
    for m, q in summary["per_model"].items():
        r = q.get("ratio", {})
        best = r.get("best_emlog_r2_mean")  # None: no emlog fit of this model converged
        lines.append(f"{m:14s} ratio: mean best R^2 "
                     f"{'none' if best is None else f'{best:.4f}'}, "
                     f"winners {r.get('winners', {})}")
    return lines
