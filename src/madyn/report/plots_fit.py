"""Figures of the per-layer curve fits (matplotlib, Agg backend; PNG files)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from madyn.curves.hypotheses import REGISTRY, get  # noqa: E402
from madyn.report.figures import save_figure  # noqa: E402

_COLORS = dict(zip(REGISTRY, plt.get_cmap("tab10").colors, strict=False))


def _example_layers(layers: list[int]) -> list[int]:
    """A shallow, a middle and a deep layer (fewer if the model has fewer)."""
    picks = [layers[0], layers[len(layers) // 2], layers[-1]]
    return list(dict.fromkeys(picks))


def _curve(hypothesis: str, popt: list, steps: np.ndarray) -> np.ndarray:
    p = np.array([np.nan if v is None else v for v in popt], float)
    with np.errstate(all="ignore"):
        return get(hypothesis).func(steps, *p)


def _panel(ax, data: pd.DataFrame, fits: pd.DataFrame) -> None:
    """Data points (flagged: red crosses) and every successful curve (winner thick)."""
    x = data["step"].to_numpy(float)
    keep = ~data["flagged"].to_numpy(bool)
    ax.plot(x[keep] + 1, data["value"].to_numpy()[keep], "o", color="k", ms=3.5, label="data")
    if (~keep).any():
        ax.plot(x[~keep] + 1, data["value"].to_numpy()[~keep], "x", color="red", ms=6,
                label="flagged")
    grid = np.concatenate([[0.0], np.logspace(0, np.log10(max(x.max(), 1.0)), 400)])
    for _, r in fits[fits["success"]].iterrows():
        win = bool(r["is_winner"])
        label = f"{r['hypothesis']} R2={r['r2']:.3f}" + (" (AICc winner)" if win else "")
        ax.plot(grid + 1, _curve(r["hypothesis"], json.loads(r["popt"]), grid),
                color=_COLORS.get(r["hypothesis"], "grey"), lw=2.8 if win else 0.9,
                alpha=1.0 if win else 0.7, zorder=3 if win else 2, label=label)
    lo, hi = np.nanmin(data["value"]), np.nanmax(data["value"])
    pad = 0.15 * (hi - lo) if hi > lo else 1.0
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xscale("log")
    ax.grid(alpha=0.3)


def plot_example_fits(fit_input: pd.DataFrame, table: pd.DataFrame, out_png: str | Path
                      ) -> None:
    """Per quantity a row of a shallow, a middle and a deep layer: data, every successful
    hypothesis, the AICc winner thick and marked in the legend; x = training step + 1, log."""
    model = str(table["model"].iloc[0]) if len(table) else ""
    quantities = [q for q in ("ratio", "top1", "median") if q in set(table["quantity"])]
    quantities += sorted(set(table["quantity"]) - set(quantities))
    ncols = max(len(_example_layers(sorted(table.loc[table.quantity == q, "layer"].unique())))
                for q in quantities) if quantities else 1
    fig, axes = plt.subplots(max(1, len(quantities)), ncols, squeeze=False,
                             figsize=(5.2 * ncols, 3.8 * max(1, len(quantities))))
    for i, q in enumerate(quantities):
        tq = table[table["quantity"] == q]
        picks = _example_layers(sorted(int(v) for v in tq["layer"].unique()))
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(picks):
                ax.axis("off")
                continue
            layer = picks[j]
            d = fit_input[(fit_input["quantity"] == q) & (fit_input["layer"] == layer)]
            _panel(ax, d.sort_values("step"), tq[tq["layer"] == layer])
            ax.set_title(f"{q}, layer {layer}", fontsize=10)
            ax.legend(fontsize=6, loc="best")
            if i == len(quantities) - 1:
                ax.set_xlabel("training step + 1")
    fig.suptitle(f"{model}: per-layer fits (thick = lowest AICc)")
    save_figure(fig, out_png)


def plot_fit_quality(table: pd.DataFrame, out_png: str | Path) -> None:
    """R^2 (top) and AICc (bottom) per layer, per quantity (columns) and per hypothesis."""
    model = str(table["model"].iloc[0]) if len(table) else ""
    quantities = [q for q in ("ratio", "top1", "median") if q in set(table["quantity"])]
    ncols = max(1, len(quantities))
    fig, axes = plt.subplots(2, ncols, squeeze=False, figsize=(5.2 * ncols, 7), sharex="col")
    ok = table[table["success"]]
    for j, q in enumerate(quantities):
        tq = ok[ok["quantity"] == q]
        for h, g in tq.groupby("hypothesis", sort=False):
            g = g.sort_values("layer")
            style = dict(color=_COLORS.get(h, "grey"), marker="o", ms=3, lw=1.2, label=h)
            axes[0, j].plot(g["layer"], g["r2"], **style)
            axes[1, j].plot(g["layer"], g["aicc"], **style)
        win = tq[tq["is_winner"]]
        axes[1, j].plot(win["layer"], win["aicc"], "k*", ms=9, label="winner", zorder=4)
        axes[0, j].set_title(q)
        axes[0, j].set_ylim(max(-0.05, float(tq["r2"].min()) - 0.02) if len(tq) else 0, 1.005)
        axes[1, j].set_xlabel("layer")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("R$^2$")
    axes[1, 0].set_ylabel("AICc")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(f"{model}: fit quality per layer and hypothesis")
    save_figure(fig, out_png)
