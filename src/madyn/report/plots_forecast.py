"""Figures of the forecast (matplotlib, Agg backend; PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from madyn.report.figures import save_figure  # noqa: E402

METHOD_COLORS = {"forecast": "tab:red", "prior": "0.45", "last_value": "tab:blue",
                 "early_fit": "tab:green"}


def draw_forecast(ax, fc, truth: np.ndarray | None, title: str) -> None:
    """One layer: its observed points, the prior's band, the forecast's band and (when
    known) the truth; x: step + 1 (log)."""
    x = fc.steps + 1
    k = fc.observed
    ax.fill_between(x, fc.prior_lo, fc.prior_hi, color="0.8", label="prior (other models)")
    ax.plot(x, fc.prior_mean, color="0.45", lw=1)
    ax.fill_between(x[k - 1:], fc.lo[k - 1:], fc.hi[k - 1:], color="tab:red", alpha=0.25,
                    label="forecast interval")
    ax.plot(x[k - 1:], fc.mean[k - 1:], color="tab:red", lw=1.5, label="forecast")
    if truth is not None:
        ax.plot(x, truth, "k.", ms=3, label="truth")
    ax.plot(x[:k], fc.mean[:k], "o", color="tab:blue", ms=4, label="seen")
    ax.axvline(x[k - 1], color="tab:blue", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step + 1")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def plot_backtest(example: tuple, summary: dict, quantity: str, out: str | Path) -> None:
    """Left: one layer forecast from its first quarter of training (``example``:
    (Forecast, truth, title)); right: the backtest's median final-value error per method
    and truncation for ``quantity``."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    draw_forecast(a, *example)
    fracs = list(summary)
    methods = list(METHOD_COLORS)
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [summary[f].get(m, {}).get("final_err_pct", np.nan) for f in fracs]
        b.bar(np.arange(len(fracs)) + i * w, vals, w, color=METHOD_COLORS[m], label=m)
    b.set_xticks(np.arange(len(fracs)) + 0.4 - w / 2, [f"{f} seen" for f in fracs])
    b.set_ylabel(f"median |final {quantity} error| (%)")
    b.set_yscale("log")
    b.set_title("backtest: every model and layer, truncated", fontsize=9)
    b.legend(fontsize=7)
    save_figure(fig, out)


def plot_run(forecasts: dict, out: str | Path) -> None:
    """A run still training: each quantity's middle layer (``forecasts``: quantity ->
    (Forecast, title))."""
    n = len(forecasts)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), layout="constrained", squeeze=False)
    for ax, (fc, title) in zip(axes[0], forecasts.values(), strict=True):
        draw_forecast(ax, fc, None, title)
    save_figure(fig, out)



def plot_skipped(reason: str, out: str | Path) -> None:
    """A figure that says why there is no backtest."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, f"no forecast backtest: {reason}", ha="center", va="center")
    save_figure(fig, out)
