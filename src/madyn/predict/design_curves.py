"""A suite's design data for the curve-space predictors: each model's per-layer curves of one
quantity on time relative to its schedule, its design label and its numeric design features.
No file I/O.

A suite enters as, per model, its observed curves of one quantity (steps (S,), relative
depths (L,), L x S values: :func:`madyn.predict.forecast.layer_curves`), its design label
(the models of one design differ only by seed) and a row of numeric design features
(:func:`model_features`). Each (model, layer) becomes one row (:class:`DesignData`): its
relative depth (layer + 1) / L and its log curve on a fixed grid of relative time
u = step / last step (:data:`N_GRID` points, :data:`GRID_V`: uniform on
v = log(1 + 1000 u), 0 <= u <= 1; linear interpolation in v); :func:`curve_on_steps` maps
a grid curve back onto a schedule's steps. The predictors:
:mod:`madyn.predict.design_predictors`; their leave-one-design-out:
:mod:`madyn.predict.design_lodo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from madyn.predict.forecast import REL_SCALE, rel_axis

N_GRID = 24
GRID_V = np.linspace(0.0, float(np.log1p(REL_SCALE)), N_GRID)
GRID_U = np.expm1(GRID_V) / REL_SCALE


# ---------------------------------------------------------------------------- features

SCHEDULES = ("cosine", "linear", "constant")


def model_features(config: dict, last_step: float, recipe: dict | None = None
                   ) -> dict[str, float]:
    """A model's design features (NaN where unknown): its shape (log2 width, log2 depth,
    heads per width, MLP ratio, rotary fraction, log10 parameters), block layout and
    optimiser (:func:`madyn.predict.features.design_features`), and its schedule: log10 of
    the planned last step, warmup fraction, schedule shape (one-hot), weight decay,
    log10(1 - beta2), log2 batch size and BOS (0/1), from ``recipe`` (keys as a suite's
    train section: warmup, schedule, weight_decay, beta2, batch_size, bos), over the
    config's design record."""
    from madyn.architecture import DESIGN_KEY, architecture, design
    from madyn.predict.features import design_features

    arch = architecture(config)
    rec = {**(config.get(DESIGN_KEY) or {}), **(recipe or {})}
    d, L = float(arch["hidden_size"]), float(arch["num_hidden_layers"])
    out = {"x_log2_width": math.log2(d), "x_log2_layers": math.log2(L),
           "x_heads_per_width": float(arch["num_attention_heads"]) / d,
           "x_ff_ratio": float(arch["intermediate_size"]) / d,
           "x_rotary": float(arch.get("rotary_pct", 1.0)),
           "x_log_params": math.log10(float(arch["n_params"]))}
    axes = design(config)
    if rec.get("lr") is not None:
        axes["lr"] = float(rec["lr"])
    if rec.get("optimizer"):
        axes["optimizer"] = str(rec["optimizer"])
    if rec.get("eps") is not None:
        axes["eps"] = float(rec["eps"])
    if axes["optimizer"] == "adamw" and not math.isfinite(axes["eps"]):
        axes["eps"] = 1e-8  # torch's AdamW default, which madyn's trainer uses
    out.update({"x_" + k[2:]: v for k, v in design_features(axes).items()})
    out["x_log_steps"] = math.log10(max(float(last_step), 1.0))

    def num(key: str, fn=float) -> float:
        v = rec.get(key)
        try:
            return fn(v) if v is not None else math.nan
        except (TypeError, ValueError):
            return math.nan

    warm = num("warmup")
    out["x_warmup_frac"] = warm / max(float(last_step), 1.0) if math.isfinite(warm) else math.nan
    sched = rec.get("schedule")
    for s in SCHEDULES:
        out[f"x_sched_{s}"] = (float(sched == s) if sched else math.nan)
    out["x_weight_decay"] = num("weight_decay")
    b2 = num("beta2")
    out["x_log_1m_beta2"] = math.log10(1 - b2) if math.isfinite(b2) and b2 < 1 else math.nan
    bs = num("batch_size")
    out["x_log2_batch"] = math.log2(bs) if math.isfinite(bs) and bs > 0 else math.nan
    bos = rec.get("bos")
    out["x_bos"] = float(bool(bos)) if bos is not None else math.nan
    return out


def usable_features(features: pd.DataFrame, models: list[str]) -> list[str]:
    """The feature columns known (finite) for every one of ``models`` and varying
    between them."""
    f = features.loc[models]
    return [c for c in features.columns if c.startswith("x_")
            and np.isfinite(f[c].to_numpy(float)).all() and f[c].nunique() > 1]


# ---------------------------------------------------------------------------- rows

@dataclass
class DesignData:
    """One quantity of a suite, as rows: ``models``/``designs``/``depth``/``layer`` (n,),
    ``Y`` (n, N_GRID) log curves on :data:`GRID_U`, ``X`` the models' feature frame
    (index model); ``curves``: model -> (steps, depths, L x S values), the observed."""

    models: np.ndarray
    designs: np.ndarray
    layer: np.ndarray
    depth: np.ndarray
    Y: np.ndarray
    X: pd.DataFrame
    curves: dict
    design_of: dict = field(default_factory=dict)

    def subset(self, keep: np.ndarray) -> DesignData:
        return DesignData(self.models[keep], self.designs[keep], self.layer[keep],
                          self.depth[keep], self.Y[keep], self.X, self.curves, self.design_of)

    def rows_of_designs(self, designs) -> np.ndarray:
        return np.isin(self.designs, list(designs))


def log_on_grid(steps: np.ndarray, values: np.ndarray, last_step: float) -> np.ndarray:
    """A positive curve (values at ``steps``) as log values on :data:`GRID_U` (linear in
    v = log(1 + 1000 u), u = step / ``last_step``; clamped at the ends)."""
    with np.errstate(all="ignore"):
        return np.interp(GRID_V, rel_axis(np.asarray(steps, float) / last_step),
                         np.log(np.asarray(values, float)))


def design_data(curves: dict, designs: dict[str, str], features: pd.DataFrame
                ) -> DesignData:
    """Rows of every layer whose curve is finite and positive throughout. ``curves``:
    model -> (steps, depths, L x S values); ``designs``: model -> design label (default:
    the model's own name); ``features``: index model, columns ``x_*``."""
    rows = []
    for m in sorted(curves):
        steps, depths, vals = curves[m]
        last = float(np.max(steps))
        for la, dep in enumerate(depths):
            v = vals[la]
            if not (np.isfinite(v).all() and (v > 0).all()):
                continue
            rows.append((m, designs.get(m, m), la, float(dep), log_on_grid(steps, v, last)))
    if not rows:
        raise ValueError("no layer with a finite, positive curve")
    ms, ds, ls, dp, ys = zip(*rows, strict=True)
    return DesignData(np.array(ms), np.array(ds), np.array(ls, int), np.array(dp, float),
                      np.stack(ys), features, curves,
                      {m: designs.get(m, m) for m in curves})


def curve_on_steps(logc: np.ndarray, steps: np.ndarray, last_step: float) -> np.ndarray:
    """A grid log curve (N_GRID,) as raw values at ``steps`` of a schedule ending at
    ``last_step``."""
    return np.exp(np.interp(rel_axis(np.asarray(steps, float) / last_step), GRID_V, logc))
