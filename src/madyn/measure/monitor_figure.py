"""The live monitor's figure, ``madyn_monitor.png``: each layer's ratio (top1 / median, the
mean over the probe; dimensionless) against the training step (optimizer steps), both axes
log scaled (the step axis symlog, so step 0 shows), redrawn by
:class:`madyn.measure.monitor.Monitor` after each table it writes. Drawn on matplotlib's Agg
canvas (imported at the first draw), so the user's pyplot backend is left alone; 6.4 x 4.0
inches at 100 dpi, written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def draw_ratios(ratios: dict[int, np.ndarray], model_name: str, path: Path) -> None:
    """Write ``path``: ``ratios`` (step -> each layer's ratio, mean over the probe) against
    the step for the steps of the newest step's layer count, log scales, plain tick labels
    and fixed margins (cheap to lay out); the title names ``model_name`` and the last
    step, the legend (up to 12 layers) each layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    from madyn.io import atomic_path

    n = len(ratios[max(ratios)])
    steps = [s for s in sorted(ratios) if len(ratios[s]) == n]
    values = np.array([ratios[s] for s in steps])  # steps x layers
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for layer in range(n):
        ax.plot(steps, values[:, layer], marker="o", ms=3, lw=1.2, label=f"layer {layer}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.set_xlabel("step")
    ax.set_ylabel("ratio top1 / median (mean over the probe)")
    ax.set_title(f"madyn monitor: {model_name}, last step {steps[-1]}", fontsize=10)
    if n <= 12:
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.subplots_adjust(left=0.11, right=0.97, top=0.92, bottom=0.12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
