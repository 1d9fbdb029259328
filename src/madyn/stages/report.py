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
