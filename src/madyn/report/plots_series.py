"""Figures of the measured series (matplotlib, Agg backend; PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from madyn.report.figures import save_figure  # noqa: E402


def _stat(series: pd.DataFrame, name: str) -> pd.DataFrame:
    return series[series["statistic"] == name].sort_values(["layer", "step"])


def plot_series(series: pd.DataFrame, out: str | Path) -> None:
    """top1, median and top1/median per layer over training steps (log-x, step + 1).

    Shaded: +- one standard error over sequences; crosses: flagged checkpoints.
    """
    model = series["model"].iloc[0]
    layers = sorted(series["layer"].unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, name, label in zip(axes, ["top1", "median", "ratio"],
                               ["top1 |h|", "median |h|", "top1 / median"], strict=True):
        d = _stat(series, name)
        for layer in layers:
            s = d[d["layer"] == layer]
            x = s["step"].to_numpy() + 1
            c = cmap(layer / max(1, len(layers) - 1))
            ax.plot(x, s["mean"], color=c, lw=1.4, label=f"layer {layer}")
            ax.fill_between(x, s["mean"] - s["sem"], s["mean"] + s["sem"], color=c, alpha=0.2)
            f = s[s["flagged"]]
            ax.plot(f["step"] + 1, f["mean"], "x", color="red", ms=7)
        ax.set_xscale("log")
        ax.set_xlabel("training step + 1")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, ncol=2 if len(layers) > 8 else 1)
    fig.suptitle(f"{model}: decoder-layer outputs over training (mean over sequences)")
    save_figure(fig, out)


def plot_first_last(series: pd.DataFrame, out: str | Path) -> None:
    """top1, top2, top3 and median per layer at the first and the last checkpoint."""
    model = series["model"].iloc[0]
    steps = sorted(series["step"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, step in zip(axes, [steps[0], steps[-1]], strict=True):
        d = series[series["step"] == step]
        for name, style in [("top1", "o-"), ("top2", "s-"), ("top3", "^-"),
                            ("median", "k--")]:
            s = d[d["statistic"] == name].sort_values("layer")
            ax.plot(s["layer"], s["mean"], style, label=name, ms=4)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(f"step {step}")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[0].set_ylabel("|h| (mean over sequences)")
    axes[0].legend()
    fig.suptitle(f"{model}: largest activations per layer, first vs last checkpoint")
    save_figure(fig, out)


def _depth_grid(layers: pd.DataFrame, value: str, bins: int) -> tuple[np.ndarray, list[str]]:
    """models (rows, by parameter count) x relative-depth bins (columns) of ``value``."""
    models = list(dict.fromkeys(layers.sort_values("n_params")["model"]))
    grid = np.full((len(models), bins), np.nan)
    for i, m in enumerate(models):
        d = layers[layers["model"] == m]
        col = np.minimum((d["rel_depth"].to_numpy() * bins - 1e-9).astype(int), bins - 1)
        for j in range(bins):
            v = d[value].to_numpy()[col == j]
            if len(v):
                grid[i, j] = float(np.mean(v))
    return grid, models


def plot_peak_heatmaps(layers: pd.DataFrame, out: str | Path, bins: int = 8) -> None:
    """Heatmaps of the peak step (log10) and the peak top1/median of each layer, by
    relative depth (x, (layer + 1) / L in ``bins`` bins; a bin holds the mean of its layers)
    and model (y, ordered by parameter count)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * layers["model"].nunique() + 2.2))
    for ax, value, label, tf in [
        (axes[0], "peak_step", "step of the peak (log10 step+1)", lambda g: np.log10(g + 1)),
        (axes[1], "peak_ratio", "peak top1/median", lambda g: g),
    ]:
        grid, models = _depth_grid(layers, value, bins)
        im = ax.imshow(tf(grid), aspect="auto", cmap="magma", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}" if value == "peak_step" else f"{v:.1f}",
                        ha="center", va="center", fontsize=7, color="cyan")
        ax.set_yticks(range(len(models)))
        n_par = layers.drop_duplicates("model").set_index("model")["n_params"]
        ax.set_yticklabels([f"{m} ({n_par[m] / 1e6:.2f}M)" for m in models], fontsize=8)
        ax.set_xticks(range(bins))
        ax.set_xticklabels([f"{(j + 1) / bins:.2f}" for j in range(bins)], fontsize=8)
        ax.set_xlabel("relative depth (upper edge of bin)")
        ax.set_title(label)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Where and when top1/median peaks, by relative depth and model size")
    save_figure(fig, out)


def plot_final_vs_params(layers: pd.DataFrame, out: str | Path) -> None:
    """Final top1/median against parameter count: every layer (points, coloured by relative
    depth), the model's mean and maximum over layers (lines)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sc = ax.scatter(layers["n_params"], layers["final_ratio"], c=layers["rel_depth"],
                    cmap="viridis", s=25, zorder=3)
    g = layers.groupby("n_params")["final_ratio"]
    ax.plot(g.mean().index, g.mean().to_numpy(), "k-o", ms=3, label="mean over layers")
    ax.plot(g.max().index, g.max().to_numpy(), "r--", label="max over layers")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("top1 / median at the last checkpoint")
    fig.colorbar(sc, ax=ax, label="relative depth")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, out)


def plot_kurtosis(series_by_model: dict[str, pd.DataFrame], out: str | Path) -> None:
    """Kurtosis of per-channel RMS (He et al., *Understanding and Minimising Outlier
    Features in Neural Network Training*, arXiv 2405.19279; 1 = no outlier channel) over
    training, one panel per model, one line per layer (log-x, step + 1)."""
    n = len(series_by_model)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (model, series) in zip(axes.flat, series_by_model.items(), strict=False):
        d = _stat(series, "kurtosis")
        layers = sorted(d["layer"].unique())
        for layer in layers:
            s = d[d["layer"] == layer]
            ax.plot(s["step"] + 1, s["mean"], color=cmap(layer / max(1, len(layers) - 1)),
                    label=f"layer {layer}")
        ax.set_xscale("log")
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("training step + 1")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("kurtosis of channel RMS")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("Outlier features: kurtosis of per-channel RMS over training")
    save_figure(fig, out)
