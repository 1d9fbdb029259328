"""The files a run's forecast writes into its output folder (marked as madyn's):
``curves.csv`` (:data:`CURVE_COLUMNS`: per quantity, layer and step the mean and interval,
and the prior's), its copy with ``summary.json`` under ``archive/from_step<k>/`` (k: the
last step seen), ``forecast.png``, ``summary.json`` (per quantity and layer: final value,
asymptote, peak step, each with its interval) and ``score.json``
(:func:`madyn.stages.forecast_score.score`); or, for a refused forecast, ``summary.json``
with ``refused``, a header-only ``curves.csv`` and a figure saying why."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from madyn.io import atomic_path, mark_output_folder, write_json
from madyn.settings import ForecastSettings
from madyn.stages.forecast_score import score

CURVE_COLUMNS = ["quantity", "layer", "step", "seen", "mean", "lo", "hi", "prior_mean",
                 "prior_lo", "prior_hi"]


def write_refusal(out: Path, name: str, last_step: int | None, reason: str, level: float,
                  distance: dict | None) -> dict:
    """A recorded refusal: summary.json with ``refused``, curves.csv with its header only,
    a figure saying why."""
    from madyn.report.plots_forecast import plot_skipped

    with atomic_path(out / "curves.csv") as tmp:
        pd.DataFrame(columns=CURVE_COLUMNS).to_csv(tmp, index=False)
    plot_skipped(f"forecast refused: {reason}", out / "forecast.png")
    summary = {"model": name, "last_step": last_step, "level": level, "refused": reason,
               "layers": {}}
    if distance is not None:
        summary["prior_distance"] = distance
    write_json(out / "summary.json", summary)
    return summary


def refuse(out: Path, run_path: str, out_dir: str, name: str, last_step: int, why: str,
           s: ForecastSettings, distance: dict | None) -> dict:
    """A refused forecast recorded (--record-refusal) in madyn's own output folder, and the
    saved forecasts scored as at every forecast; the refusal's summary."""
    mark_output_folder(out, "madyn forecast --run")
    summary = write_refusal(out, name, last_step, why, s.level, distance)
    score(run_path, out_dir)
    return summary


def write_forecast(out: Path, run_path: str, out_dir: str, name: str, last_step: int,
                   s: ForecastSettings, result: tuple, source: str, distance: dict | None,
                   design_doc: dict | None = None) -> dict:
    """Write a forecast's curves.csv, its archive copy, forecast.png, summary.json and
    score.json; returns the summary."""
    rows, summary, figs, k_step = result[:4]
    summary_doc = {"model": name, "last_step": last_step, "level": s.level,
                   "seen_to_step": k_step, "time": "relative: step / planned last step",
                   "prior": source, "prior_distance": distance, "layers": summary}
    if design_doc is not None:
        summary_doc["design_prior"] = design_doc
    mark_output_folder(out, "madyn forecast --run")
    curves = pd.concat(rows, ignore_index=True)
    with atomic_path(out / "curves.csv") as tmp:
        curves.to_csv(tmp, index=False)
    arch = out / "archive" / f"from_step{k_step}"
    arch.mkdir(parents=True, exist_ok=True)
    with atomic_path(arch / "curves.csv") as tmp:
        curves.to_csv(tmp, index=False)
    write_json(arch / "summary.json", summary_doc)
    from madyn.report.plots_forecast import plot_run

    plot_run(figs, out / "forecast.png")
    write_json(out / "summary.json", summary_doc)
    score(run_path, out_dir)
    return summary_doc
