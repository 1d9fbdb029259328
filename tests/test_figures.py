"""The one PNG writer of every figure module, and the figure modules using it."""

from __future__ import annotations

import matplotlib.pyplot as plt

from madyn.report import plots_effects, plots_fit, plots_predict
from madyn.report import plots_series as plots
from madyn.report.figures import save_figure


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = tmp_path / "sub" / "f.png"
    out.parent.mkdir()
    save_figure(fig, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(out.parent.iterdir()) == [out]  # no temporary file left beside it
    assert not plt.fignum_exists(fig.number)


def test_figure_modules_share_the_one_writer():
    for module in (plots, plots_effects, plots_fit, plots_predict):
        assert module.save_figure is save_figure
        assert not hasattr(module, "_save")
