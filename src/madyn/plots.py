"""Figures of the measured series (matplotlib, Agg backend; PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from madyn.io import atomic_path  # noqa: E402


def _save(fig, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


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
    _save(fig, out)


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
    _save(fig, out)


def growth(series: pd.DataFrame, statistic: str = "ratio") -> pd.Series:
    """Per layer: value at the last checkpoint / value at the first (step 0)."""
    d = _stat(series, statistic)
    first = d[d["step"] == d["step"].min()].set_index("layer")["mean"]
    last = d[d["step"] == d["step"].max()].set_index("layer")["mean"]
    return (last / first).rename("growth").astype(float).replace([np.inf], np.nan)
