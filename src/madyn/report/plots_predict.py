"""Figures of the prediction phase (matplotlib, Agg backend; PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from madyn.report.figures import save_figure  # noqa: E402

_COLORS = {"mean": "0.5", "ridge": "tab:blue", "rf": "tab:green", "xgb": "tab:red",
           "ols": "tab:purple", "mean_curve": "0.4"}


def _grid(n: int, ncol: int = 3, size: tuple[float, float] = (4.2, 3.6)):
    ncol = min(ncol, max(n, 1))
    nrow = int(np.ceil(max(n, 1) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(size[0] * ncol, size[1] * nrow),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def plot_pred_vs_fitted(preds: pd.DataFrame, out: str | Path,
                        model_types: tuple[str, ...] = ("ridge", "rf", "xgb")) -> None:
    """LOMO-predicted vs fitted (transformed) parameter, one panel per target; diagonal."""
    targets = list(pd.unique(preds["target"]))  # the table's order
    fig, axes = _grid(len(targets))
    for ax, tgt in zip(axes, targets, strict=False):
        d = preds[preds["target"] == tgt]
        for kind in model_types:
            k = d[d["model_type"] == kind]
            ax.plot(k["y_true"], k["y_pred"], "o", ms=3.5, alpha=0.7,
                    color=_COLORS.get(kind), label=kind)
        vals = np.concatenate([d["y_true"].to_numpy(float), d["y_pred"].to_numpy(float)])
        vals = vals[np.isfinite(vals)]
        if len(vals):
            lo, hi = float(vals.min()), float(vals.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title(tgt)
        ax.set_xlabel("fitted (transformed)")
        ax.set_ylabel("LOMO predicted")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Leave-one-model-out: predicted vs fitted curve parameters")
    save_figure(fig, out)


def plot_feature_importance(imp: pd.DataFrame, out: str | Path) -> None:
    """XGBoost gain per feature, one panel per target (horizontal bars)."""
    targets = list(pd.unique(imp["target"]))
    fig, axes = _grid(len(targets), size=(4.2, 3.8))
    for ax, tgt in zip(axes, targets, strict=False):
        d = imp[imp["target"] == tgt]
        ax.barh(d["feature"], d["gain"], color="tab:red")
        ax.set_title(tgt)
        ax.set_xlabel("XGBoost gain")
        ax.tick_params(axis="y", labelsize=7)
        ax.invert_yaxis()
    fig.suptitle("Feature importance (XGBoost gain, trained on all rows)")
    save_figure(fig, out)


def plot_heldout_curves(curves: pd.DataFrame, model: str, out: str | Path) -> None:
    """One held-out model: observed series per layer (dots) and the LOMO-predicted curves
    of each model type (lines), log-x (step + 1)."""
    d = curves[curves["model"] == model]
    layers = sorted(d["layer"].unique())
    fig, axes = _grid(len(layers), ncol=4, size=(3.6, 3.0))
    for ax, layer in zip(axes, layers, strict=False):
        g = d[d["layer"] == layer]
        first = g[g["model_type"] == g["model_type"].iloc[0]]
        ax.plot(first["step"] + 1, first["observed"], "k.", ms=4, label="observed")
        for kind, k in g.groupby("model_type", sort=True):
            ax.plot(k["step"] + 1, k["pred"], "-", lw=1.3, color=_COLORS.get(kind),
                    label=f"LOMO {kind}")
        ax.set_xscale("log")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{model} held out: observed vs curves predicted from the other models")
    save_figure(fig, out)


def plot_prediction(curves: pd.DataFrame, summary: dict, out: str | Path) -> None:
    """Per-layer predicted curves of a new architecture with interval bands, log-x."""
    layers = sorted(curves["layer"].unique())
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for layer in layers:
        g = curves[curves["layer"] == layer].sort_values("step")
        c = cmap(layer / max(1, len(layers) - 1))
        x = g["step"] + 1
        ax.plot(x, g["pred"], color=c, lw=1.5, label=f"layer {layer}")
        ax.fill_between(x, g["lo"], g["hi"], color=c, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("training step + 1")
    ax.set_ylabel(f"predicted {summary.get('quantity', 'ratio')}")
    a = summary.get("architecture", {})
    lo, hi = summary.get("interval", [5, 95])
    ax.set_title(f"Predicted ({summary.get('model_type')}): L={a.get('num_hidden_layers')}, "
                 f"d={a.get('hidden_size')}, heads={a.get('num_attention_heads')}; "
                 f"bands {lo:g}-{hi:g}% ({summary.get('interval_method', 'model bootstrap')})",
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1)
    save_figure(fig, out)


def plot_sample_efficiency(eff: pd.DataFrame, quantity: str, out: str | Path) -> None:
    """Error on unseen designs against the number of training designs: median curve R^2
    (left) and mean final-value error (right), one line per predictor."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    for kind, g in eff.groupby("kind", sort=False):
        g = g.sort_values("n_train")
        a1.plot(g["n_train"], g["r2_median"], "o-", label=kind)
        a2.plot(g["n_train"], 100 * g["final_rel_err_mean"], "o-", label=kind)
    a1.set_ylabel("median curve R² (held-out designs)")
    a2.set_ylabel("final-value error, mean (%)")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xlabel("training designs")
        a.grid(alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle(f"Sample efficiency ({quantity}): leave-one-design-out on random subsets")
    save_figure(fig, out)
