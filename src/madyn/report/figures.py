"""Writing a matplotlib figure: the one PNG writer every figure module uses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from madyn.io import atomic_path  # noqa: E402


def save_figure(fig, out: str | Path) -> None:
    """Write ``fig`` as a PNG (110 dpi, tight bounding box) to ``out`` atomically (a
    killed job leaves no half-written file), then close it."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
