"""Report stage: cross-model tables (layers.csv, loss.csv) and figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from madyn.architecture import architecture
from madyn.io import atomic_path, read_json


def loss_table(manifest_paths: list[str]) -> pd.DataFrame:
    """(model, loss, step) of every training manifest's ``loss_curve`` at its
    ``loss_steps``; ValueError naming the manifest when ``loss_steps`` is absent or of
    another length."""
    frames = []
    for f in manifest_paths:
        m = read_json(f)
        if "loss_steps" not in m:
            raise ValueError(f"{f}: training manifest has no 'loss_steps' (the step of each "
                             "loss_curve entry); retrain with this madyn version")
        if len(m["loss_steps"]) != len(m["loss_curve"]):
            raise ValueError(f"{f}: 'loss_steps' has {len(m['loss_steps'])} entries, "
                             f"'loss_curve' {len(m['loss_curve'])}")
        frames.append(pd.DataFrame({"model": m["model"], "loss": m["loss_curve"],
                                    "step": m["loss_steps"]}))
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=["model", "step", "loss"]))


def figures(series_paths: list[str], config_paths: dict[str, str],
            manifest_paths: list[str], out_dir: str) -> pd.DataFrame:
    """Write ``layers.csv`` (per model and layer summary), ``loss.csv`` (training loss of
    the manifests) and the cross-model figures in ``out_dir``; returns the layer table."""
    from madyn.measure.series import layer_summary
    from madyn.report import plots_series as plots

    series = {Path(f).stem: pd.read_parquet(f) for f in series_paths}
    n_params = {m: architecture(read_json(c))["n_params"] for m, c in config_paths.items()}
    layers = layer_summary(series, n_params)
    loss = loss_table(manifest_paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "layers.csv") as tmp:
        layers.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out / "loss.csv") as tmp:
        loss.to_csv(tmp, index=False)
    plots.plot_peak_heatmaps(layers, out / "peak_heatmaps.png")
    plots.plot_final_vs_params(layers, out / "final_vs_params.png")
    plots.plot_kurtosis(series, out / "kurtosis.png")
    return layers


def headline(growth: str, fit: str, predict: str, forecast: str, interventions: str,
             out: str) -> dict:
    """Write the headline metrics (:func:`madyn.report.headline.headline`) of the detailed
    summaries at these paths to ``out`` (JSON); returns them."""
    from madyn.io import write_json
    from madyn.report.headline import headline as make

    metrics = make(read_json(growth), read_json(fit), read_json(predict),
                   read_json(forecast), read_json(interventions))
    write_json(out, metrics)
    return metrics


def curves(series_paths: list[str], out: str) -> pd.DataFrame:
    """Write the measured per-layer top1/median curves of these series (tidy CSV, the
    data of ``dvc plots``: :func:`madyn.report.headline.curves_table`) to ``out``."""
    from madyn.report.headline import curves_table

    table = curves_table([pd.read_parquet(f) for f in series_paths])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table


def run_summary(series_paths: list[str], forecast_paths: dict[str, str],
                thresholds: list[float], trend_checkpoints: int, out_csv: str,
                out_json: str, out_txt: str) -> list[str]:
    """The run summary of each model (:mod:`madyn.report.run_summary`; the model is the
    series file's stem, its forecast ``forecast_paths[model]`` when that file exists):
    ``out_csv`` (one row per model and layer), ``out_json`` (per model: its notes and
    rows) and ``out_txt`` (the terminal lines, what ``madyn run`` and Snakemake print at
    the end). Returns the lines."""
    from madyn.io import write_json
    from madyn.report import run_summary as rs

    tables, notes = [], {}
    for f in series_paths:
        series = pd.read_parquet(f)
        model = str(series["model"].iloc[0])
        fc_path = forecast_paths.get(model)
        forecast = read_json(fc_path) if fc_path and Path(fc_path).is_file() else None
        tables.append(rs.layer_table(series, forecast, tuple(thresholds), trend_checkpoints))
        notes[model] = rs.notes(series, forecast)
    table = pd.concat(tables, ignore_index=True)
    lines = rs.lines(table, notes, tuple(thresholds))
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    records = {m: {"notes": notes[m],
                   "layers": [{k: (None if isinstance(v, float) and v != v else v)
                               for k, v in r.items()}
                              for r in g.drop(columns="model").to_dict("records")]}
               for m, g in table.groupby("model", sort=False)}
    write_json(out_json, {"thresholds": list(thresholds),
                          "trend_checkpoints": trend_checkpoints, "models": records})
    with atomic_path(out_txt) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return lines


def run_headline(fit: str, summary: str, out: str) -> dict:
    """Write the headline of a single-run suite (:func:`madyn.report.headline.run_headline`)
    from its fit metrics and run summary (JSON paths) to ``out``; returns it."""
    from madyn.io import write_json
    from madyn.report.headline import run_headline as make

    metrics = make(read_json(fit), read_json(summary))
    write_json(out, metrics)
    return metrics
