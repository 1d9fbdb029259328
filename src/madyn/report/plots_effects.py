"""Forest figure of the design effects (matplotlib, Agg backend; PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from madyn.predict.effects import QUANTITIES  # noqa: E402
from madyn.report.figures import save_figure  # noqa: E402

_TICKS = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 1.5, 2, 3, 5, 7)]


def _log_axis(ax, lo: float, hi: float) -> None:
    """Log x from ``lo`` to ``hi`` with plain-number ticks (0.5, 1, 2, ...), at most ~7."""
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [t for t in _TICKS if lo <= t <= hi]
    while len(ticks) > 7:
        ticks = ticks[::2] if 1.0 in ticks[::2] else ticks[1::2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_effects(table: pd.DataFrame, path: str | Path, base: str = "base") -> None:
    """One panel per quantity, one row per design (the table's order, top to bottom):
    the ratio design mean / base mean (point, log x) with its bootstrap interval (bar);
    vertical line at 1. Filled points: the diff interval excludes 0; hollow: it does not,
    or there is no interval. A cell with no ratio is marked "n/a" (a panel with none says
    how many base models had a value)."""
    quantities = list(pd.unique(table["quantity"]))
    designs = list(pd.unique(table["design"]))
    ncol = min(3, max(len(quantities), 1))
    nrow = int(np.ceil(max(len(quantities), 1) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 0.32 * len(designs) * nrow + 1.6
                                                  * nrow), squeeze=False, sharey=True,
                             layout="constrained")
    y = np.arange(len(designs))[::-1]
    for ax, q in zip(axes.ravel(), quantities, strict=False):
        d = table[table["quantity"] == q].set_index("design").reindex(designs)
        r, lo, hi = (d[c].to_numpy(float) for c in ("ratio", "ratio_lo", "ratio_hi"))
        sig = d["excludes_zero"].fillna(False).to_numpy(bool)
        has_ci = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(r)
        ax.errorbar(r[has_ci], y[has_ci], xerr=[r[has_ci] - lo[has_ci], hi[has_ci] - r[has_ci]],
                    fmt="none", ecolor="0.35", elinewidth=1.6, capsize=3, zorder=2)
        ok = np.isfinite(r)
        ax.plot(r[ok & sig], y[ok & sig], "o", color="tab:red", ms=6, zorder=3)
        ax.plot(r[ok & ~sig], y[ok & ~sig], "o", mfc="white", mec="tab:blue", ms=6, zorder=3)
        if not ok.any():
            nb = int(d["n_base"].max()) if d["n_base"].notna().any() else 0
            ax.text(0.5, 0.5, f"no ratio: {nb} base model(s) with a finite value",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    color="0.4", bbox={"fc": "white", "ec": "0.8"})
        for yy in y[~ok] if ok.any() else []:
            ax.text(1, yy, "n/a", ha="center", va="center", fontsize=7, color="0.4",
                    bbox={"fc": "white", "ec": "none", "pad": 0.5})
        ax.axvline(1, color="k", lw=1)
        finite = np.concatenate([r[ok], lo[has_ci], hi[has_ci], [1.0]])
        _log_axis(ax, float(finite.min()) / 1.25, float(finite.max()) * 1.25)
        unit = QUANTITIES.get(q, ("", "", ""))[2]
        ax.set_title(f"{q}" + (f" ({unit})" if unit and unit != "dimensionless" else ""),
                     fontsize=10)
        ax.set_xlabel(f"design / {base} (log)")
        ax.grid(alpha=0.3, axis="x")
    for ax in axes.ravel()[len(quantities):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_yticks(y)
        ax.set_yticklabels(designs, fontsize=9)
        ax.set_ylim(-0.7, len(designs) - 0.3)
    fig.suptitle(f"Effect of each design on the seed mean, relative to {base!r} "
                 "(bar: bootstrap interval over seeds; filled: difference excludes 0)",
                 fontsize=10)
    save_figure(fig, path)
