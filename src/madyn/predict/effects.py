"""Effects of design interventions on massive activations (pure: no file I/O).

A suite trains several *designs* (a training or architecture change) with a few seeds each.
Every model is reduced to one number per quantity (:data:`QUANTITIES`); each design is then
compared with the base design by the difference and the ratio of seed means, with
percentile-bootstrap intervals that resample seeds. A second analysis checks, across
(model, layer), the association between outlier features (kurtosis) and signal
propagation (cosine similarity) that He et al. report in *Understanding and Minimising
Outlier Features in Neural Network Training* (arXiv 2405.19279).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd

from madyn.io import jsonable

# name -> (where it comes from, what it is, unit)
QUANTITIES: dict[str, tuple[str, str, str]] = {
    "final_ratio": ("fit", "winning ratio fit's curve at the last observed step "
                    "(top1/median)", "dimensionless"),
    "asymptote": ("fit", "winning ratio fit's limit t -> inf (top1/median; NaN where it "
                  "diverges)", "dimensionless"),
    "peak_step": ("fit", "step of the winning ratio fit's interior maximum (NaN where it has "
                  "none within the observed steps)", "training steps"),
    "final_kurtosis": ("series", "kurtosis of per-channel RMS at the last unflagged "
                       "checkpoint (1 = no outlier channel)", "dimensionless"),
    "final_sink_mass": ("series", "attention mass on the sink token at the last unflagged "
                        "checkpoint", "fraction (0-1)"),
    "final_cos_sim": ("series", "mean off-diagonal token cosine similarity at the last "
                      "unflagged checkpoint (signal propagation; 1 = rank collapse)",
                      "dimensionless"),
    "first_token_share": ("series", "share of layers whose largest activation is a "
                          "first-token massive activation (madyn.measure.kinds) at the last "
                          "unflagged checkpoint (NaN where kinds are unknown)",
                          "fraction (0-1)"),
    "max_sink_mass": ("series", "attention mass on position 0, the largest over layers "
                      "(sinks form in one layer, which a median hides), at the last "
                      "unflagged checkpoint", "fraction (0-1)"),
    "max_first_peak_ratio": ("series", "largest entry at position 0 over the median |h|, "
                             "the largest over layers, at the last unflagged checkpoint",
                             "dimensionless"),
}

_FIT_COLUMNS = ("model", "quantity", "layer", "is_winner", "success", "final_value",
                "asymptote", "peak_step", "peak_in_range")
_SERIES_COLUMNS = ("model", "step", "layer", "statistic", "mean", "flagged")
_SERIES_STATS = {"final_kurtosis": "kurtosis", "final_sink_mass": "sink_mass",
                 "final_cos_sim": "cos_sim"}
TABLE_COLUMNS = ["design", "quantity", "n_base", "n_design", "base_mean", "design_mean",
                 "diff", "diff_lo", "diff_hi", "ratio", "ratio_lo", "ratio_hi",
                 "excludes_zero"]


def _require(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")


def _one_model(df: pd.DataFrame, what: str) -> str:
    models = pd.unique(df["model"])
    if len(models) != 1:
        raise ValueError(f"{what}: expected one model, got {len(models)} "
                         f"({', '.join(map(str, models[:5]))})")
    return str(models[0])


def _median_finite(values) -> float:
    """Median of the finite entries of ``values``; NaN if there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else math.nan


def _max_finite(values) -> float:
    """Largest finite entry of ``values``; NaN if there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max()) if len(v) else math.nan


def last_unflagged(series: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``series`` (one model's tidy series) at its last unflagged step; empty if
    every step is flagged."""
    ok = series[~series["flagged"].astype(bool)]
    return ok[ok["step"] == ok["step"].max()] if len(ok) else ok


def model_quantities(series: pd.DataFrame, fits: pd.DataFrame) -> dict[str, float]:
    """The :data:`QUANTITIES` of ONE model.

    series: the model's tidy series (model, step, layer, statistic, mean, flagged, ...);
    fits: its fit table (madyn.curves.fit: one row per quantity x layer x hypothesis).
    Fit quantities come from the AICc winner (``is_winner`` and ``success``) of quantity
    "ratio" in each layer: ``final_value``, ``asymptote`` and ``peak_step`` (the latter
    NaN unless ``peak_in_range``). Series quantities are the layer means at the last
    unflagged step. Each quantity is the MEDIAN over layers of its finite values (NaN if
    no layer has one). ValueError naming a missing column, or if either table holds
    other than one model or they disagree.
    """
    _require(series, _SERIES_COLUMNS, "series")
    _require(fits, _FIT_COLUMNS, "fits")
    model = _one_model(series, "series")
    if _one_model(fits, "fits") != model:
        raise ValueError(f"fits are of model {_one_model(fits, 'fits')!r}, series of "
                         f"{model!r}")
    w = fits[(fits["quantity"] == "ratio") & fits["is_winner"].astype(bool)
             & fits["success"].astype(bool)]
    peak = w["peak_step"].where(w["peak_in_range"].astype(bool))
    out = {"final_ratio": _median_finite(w["final_value"]),
           "asymptote": _median_finite(w["asymptote"]),
           "peak_step": _median_finite(peak)}
    last = last_unflagged(series)
    for name, stat in _SERIES_STATS.items():
        out[name] = _median_finite(last.loc[last["statistic"] == stat, "mean"])
    out["first_token_share"] = first_token_share(last)
    out["max_sink_mass"] = _max_finite(last.loc[last["statistic"] == "sink_mass", "mean"])
    out["max_first_peak_ratio"] = _max_finite(
        last.loc[last["statistic"] == "first_peak_ratio", "mean"])
    return {q: out[q] for q in QUANTITIES}


def first_token_share(last: pd.DataFrame) -> float:
    """Share of layers of kind ``first_token`` in one checkpoint's series rows (NaN when
    the series has no kinds or they are all unknown)."""
    if "kind" not in last.columns:
        return math.nan
    kinds = last.drop_duplicates("layer")["kind"]
    kinds = kinds[kinds != "unknown"]
    return float((kinds == "first_token").mean()) if len(kinds) else math.nan


def _cell_rng(seed: int, design: str, quantity: str) -> np.random.Generator:
    """A generator of its own per (design, quantity): adding or reordering designs does not
    change another cell's interval."""
    return np.random.default_rng([seed, zlib.crc32(design.encode()),
                                  zlib.crc32(quantity.encode())])


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values``: shape (n_boot,)."""
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def _compare(base: np.ndarray, design: np.ndarray, n_boot: int, level: float,
             rng: np.random.Generator) -> dict:
    """diff/ratio of means and their percentile-bootstrap intervals (NaN with < 2 values in
    either group, or for the ratio where a base mean <= 0)."""
    nan = math.nan
    bm = float(base.mean()) if len(base) else nan
    dm = float(design.mean()) if len(design) else nan
    row = {"n_base": len(base), "n_design": len(design), "base_mean": bm,
           "design_mean": dm, "diff": dm - bm, "diff_lo": nan, "diff_hi": nan,
           "ratio": dm / bm if bm > 0 else nan, "ratio_lo": nan, "ratio_hi": nan}
    if len(base) >= 2 and len(design) >= 2:
        b = _boot_means(base, n_boot, rng)
        d = _boot_means(design, n_boot, rng)
        q = [50 * (1 - level), 50 * (1 + level)]
        row["diff_lo"], row["diff_hi"] = (float(x) for x in np.percentile(d - b, q))
        if bm > 0 and (b > 0).all():
            row["ratio_lo"], row["ratio_hi"] = (float(x) for x in np.percentile(d / b, q))
    row["excludes_zero"] = bool(row["diff_lo"] > 0 or row["diff_hi"] < 0)
    return row


def effect_table(per_model: pd.DataFrame, designs: dict[str, str], base: str,
                 n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Each non-base design against ``base``, per quantity.

    per_model: one row per model, a ``model`` column and a column per quantity (those of
    :data:`QUANTITIES` present are used, in its order); designs: model -> design label;
    base: the base design's label. Per (design, quantity), over the models' finite values:
    n_base, n_design, base_mean, design_mean, diff = design_mean - base_mean with the
    percentile-bootstrap interval diff_lo/diff_hi at ``level`` (seeds resampled with
    replacement within the design and within the base, independently, ``n_boot`` times;
    a numpy Generator seeded from ``seed``, the design and the quantity), ratio =
    design_mean / base_mean (NaN if base_mean <= 0) with ratio_lo/ratio_hi from the same
    draws, and excludes_zero (the diff interval excludes 0).
    A group with fewer than 2 finite values gets its means but NaN intervals (one seed
    says nothing about seed-to-seed spread) and excludes_zero False. With 3 seeds the
    percentile bootstrap is narrow (it ignores the n-1 correction): read the intervals as
    descriptive. Rows: designs in the order first met in ``designs``, quantities in
    :data:`QUANTITIES` order. ValueError naming the label, model or argument at fault.
    """
    if "model" not in per_model.columns:
        raise ValueError("per_model: missing column model")
    if base not in designs.values():
        raise ValueError(f"base design {base!r} is not among the design labels "
                         f"({', '.join(sorted(set(designs.values())))})")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    models = [str(m) for m in per_model["model"]]
    if len(set(models)) != len(models):
        raise ValueError("per_model: duplicate model rows")
    unlabelled = [m for m in models if m not in designs]
    if unlabelled:
        raise ValueError(f"no design label for model(s) {', '.join(unlabelled)}")
    absent = [m for m in designs if m not in set(models)]
    if absent:
        raise ValueError(f"model(s) {', '.join(absent)} have a design label but no row")
    quantities = [q for q in QUANTITIES if q in per_model.columns]
    if not quantities:
        raise ValueError(f"per_model: no quantity column (expected some of "
                         f"{', '.join(QUANTITIES)})")
    label = per_model["model"].astype(str).map(designs)
    rows = []
    for design in dict.fromkeys(designs.values()):
        if design == base:
            continue
        for q in quantities:
            vals = per_model[q].astype(float)
            b = vals[(label == base) & np.isfinite(vals)].to_numpy()
            d = vals[(label == design) & np.isfinite(vals)].to_numpy()
            rows.append({"design": design, "quantity": q,
                         **_compare(b, d, n_boot, level, _cell_rng(seed, design, q))})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def final_layer_values(series: pd.DataFrame, statistics: tuple[str, ...]) -> pd.DataFrame:
    """One row per layer at the model's last unflagged step, a column per statistic."""
    last = last_unflagged(series)
    last = last[last["statistic"].isin(statistics)]
    wide = last.pivot_table(index="layer", columns="statistic", values="mean")
    return wide.reindex(columns=list(statistics)).reset_index()


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(rho, two-sided p) of scipy.stats.spearmanr; NaN with < 3 pairs or a constant."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def kurtosis_cos_association(series_by_model: dict[str, pd.DataFrame]) -> dict:
    """Spearman association of log kurtosis with cos_sim across (model, layer), each model
    at its last unflagged step (He et al., arXiv 2405.19279: larger kurtosis goes with
    larger input correlation, i.e. rho > 0). Pairs with a non-finite value or kurtosis <= 0 are left
    out. Returns rho, p_value (scipy.stats.spearmanr, two-sided), n (pairs), n_models,
    and ``model_level``: the same across models of their per-model medians over layers
    (layers of one model are not independent, so the pair-level p is optimistic).
    rho and p_value are NaN with fewer than 3 pairs or a constant variable. The log does
    not change a rank correlation; it names the quantity as plotted."""
    xs, ys, mx, my = [], [], [], []
    for model, series in series_by_model.items():
        _require(series, _SERIES_COLUMNS, f"series of {model}")
        w = final_layer_values(series, ("kurtosis", "cos_sim"))
        ok = np.isfinite(w["kurtosis"]) & np.isfinite(w["cos_sim"]) & (w["kurtosis"] > 0)
        if ok.any():
            x, y = np.log(w.loc[ok, "kurtosis"]), w.loc[ok, "cos_sim"]
            xs += list(x)
            ys += list(y)
            mx.append(float(np.median(x)))
            my.append(float(np.median(y)))
    rho, p = _spearman(np.asarray(xs, float), np.asarray(ys, float))
    mrho, mp = _spearman(np.asarray(mx), np.asarray(my))
    return {"x": "log kurtosis (last unflagged step)", "y": "cos_sim (last unflagged step)",
            "method": "spearman", "rho": rho, "p_value": p, "n": len(xs),
            "n_models": len(mx),
            "model_level": {"rho": mrho, "p_value": mp, "n": len(mx)}}


def effects_json(table: pd.DataFrame, association: dict, base: str,
                 designs: dict[str, str]) -> dict:
    """JSON-ready summary: base design, models per design, quantity descriptions, the
    effect rows (design -> quantity -> numbers) and the association; NaN -> None."""
    per_design: dict[str, list[str]] = {}
    for m, d in designs.items():
        per_design.setdefault(d, []).append(m)
    effects: dict[str, dict] = {}
    for r in table.to_dict("records"):
        effects.setdefault(r["design"], {})[r["quantity"]] = {
            k: v for k, v in r.items() if k not in ("design", "quantity")}
    return jsonable({
        "base_design": base,
        "designs": per_design,
        "quantities": {q: {"source": s, "description": d, "unit": u}
                       for q, (s, d, u) in QUANTITIES.items()},
        "effects": effects,
        "association": association,
    })
