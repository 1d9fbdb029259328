"""The headline metrics: the few numbers (about 30) a researcher compares between
experiments (``dvc metrics diff``, ``dvc exp show``), read from the detailed summaries
each phase writes. Per-model and per-layer detail stays in those summaries, the tables
and the plots; wall times stay in ``results/<suite>/timing``.

Each section is one function of the detailed summary it reads, returning a flat
``{name: number}``; a number the summary lacks (a suite too small for a backtest, a
predictor not run) is left out rather than written as null. A new section is one more
function and one more entry in :func:`headline`."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from madyn.measure.series import middle_layers

DIGITS = 4  # significant digits kept: a diff shows changes, not floating-point noise
FIT_QUANTITIES = ("ratio", "top1", "median")
CURVE_PREDICTORS = ("xgb", "mean_curve")  # the study's predictor and the baseline
CURVE_SCORES = {"r2_median_layers": "r2", "peak_log10_err_mean": "peak_log10_err",
                "final_rel_err_mean": "final_rel_err"}
FORECAST_FRACTION = 0.25
FORECAST_METHODS = {"forecast": ("final_err_pct", "peak_log10_err", "r2_unseen", "coverage"),
                    "prior": ("final_err_pct",), "early_fit": ("final_err_pct",)}


def _round(x: Any) -> float | int | None:
    """``x`` to :data:`DIGITS` significant digits (ints kept); None for a missing or
    non-finite value."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int):
        return x
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{DIGITS}g}")


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, None where a key is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _clean(section: dict[str, Any]) -> dict[str, float | int]:
    """The section's numbers rounded, missing ones left out."""
    out = {k: _round(v) for k, v in section.items()}
    return {k: v for k, v in out.items() if v is not None}


def growth_section(growth: dict) -> dict:
    """top1/median growth (last / first checkpoint) of the middle layers: the mean over
    models of each model's middle-layer mean, its range over models, and the final
    middle-layer top1/median (mean over models). ``growth``: metrics/growth.json."""
    mids = [g["growth_middle_mean"] for g in growth.values()]
    finals = []
    for g in growth.values():
        mid = middle_layers(len(g["last"]))
        finals.append(sum(g["last"][i] for i in mid) / len(mid))
    if not mids:
        return {}
    return _clean({"ratio_mid_mean": sum(mids) / len(mids), "ratio_mid_min": min(mids),
                   "ratio_mid_max": max(mids),
                   "final_ratio_mid_mean": sum(finals) / len(finals)})


KINDS = ("first_token", "feature")  # madyn.measure.kinds' classes of a layer's largest entry


def kinds_section(growth: dict) -> dict:
    """Share of layers (over every model) whose largest entry at the last checkpoint is a
    first-token massive activation or a feature outlier (:mod:`madyn.measure.kinds`); layers of
    unknown kind (a released file without positions) count in neither numerator nor
    denominator. Empty when no model has kinds. ``growth``: metrics/growth.json."""
    kinds = [k for g in growth.values() for k in g.get("kind_per_layer", [])
             if k != "unknown"]
    if not kinds:
        return {}
    return _clean({f"{k}_share": sum(x == k for x in kinds) / len(kinds) for k in KINDS})


def fit_section(fit: dict) -> dict:
    """Fit R² over every layer of every model: the study's family (best of its exponential
    variants) and the AICc winner, mean per quantity and minimum for top1/median; the
    number of failed fits. ``fit``: metrics/fit.json."""
    out: dict[str, Any] = {}
    for q in FIT_QUANTITIES:
        out[f"{q}.study_r2_mean"] = _get(fit, "all", q, "best_emlog_r2_mean")
        out[f"{q}.winner_r2_mean"] = _get(fit, "all", q, "winner_r2_mean")
    out["ratio.study_r2_min"] = _get(fit, "all", "ratio", "best_emlog_r2_min")
    out["ratio.winner_r2_min"] = _get(fit, "all", "ratio", "winner_r2_min")
    out["n_failed"] = fit.get("n_failed")
    return _clean(out)


def predict_section(predict: dict) -> dict:
    """The study's predictor (XGBoost) against the mean-curve baseline, leave-one-model-out
    in curve space: median R² over held-out layers, mean peak-step error (decades) and
    mean relative error of the final value. ``predict``: metrics/predict.json."""
    summary = _get(predict, "curve_lomo", "summary") or {}
    return _clean({f"{p}.{short}": _get(summary, p, key)
                   for p in CURVE_PREDICTORS for key, short in CURVE_SCORES.items()})


def _fraction_key(by_fraction: dict, fraction: float) -> str | None:
    """The key ("25%") of the backtest fraction nearest ``fraction``."""
    pcts = {k: float(k.rstrip("%")) for k in by_fraction if k.endswith("%")}
    if not pcts:
        return None
    return min(pcts, key=lambda k: abs(pcts[k] - 100 * fraction))


def forecast_section(forecast: dict, fraction: float = FORECAST_FRACTION) -> dict:
    """The forecast backtest of top1/median from the first ``fraction`` of training (the
    nearest fraction run): the forecast's final-value error (%), peak-step error
    (decades), R² on the unseen steps and interval coverage, and the final-value error of
    the prior alone and of a fit to the early points alone. ``forecast``:
    metrics/forecast.json (no backtest on a suite too small for one: empty)."""
    by_fraction = forecast.get("ratio") or {}
    key = _fraction_key(by_fraction, fraction)
    if key is None:
        return {}
    row = by_fraction[key]
    return _clean({f"{method}.{score}": _get(row, method, score)
                   for method, scores in FORECAST_METHODS.items() for score in scores})


def interventions_section(interventions: dict) -> dict:
    """Spearman rho of log kurtosis with cos_sim across layers (every suite).
    ``interventions``: metrics/interventions.json."""
    return _clean({"kurtosis_cos_sim_rho": _get(interventions, "association", "rho")})


def headline(growth: dict, fit: dict, predict: dict, forecast: dict,
             interventions: dict) -> dict:
    """Every section, keyed by section name (DVC shows ``growth.ratio_mid_mean`` ...)."""
    n_layers = sum(len(g["last"]) for g in growth.values())
    sections = {
        "suite": {"n_models": len(growth), "n_layers": n_layers},
        "growth": growth_section(growth),
        "kinds": kinds_section(growth),
        "fit": fit_section(fit),
        "predict": predict_section(predict),
        "forecast": forecast_section(forecast),
        "interventions": interventions_section(interventions),
    }
    return {k: v for k, v in sections.items() if v}


# How far a headline metric may move between x86-64 machines with the same code, params
# and packages: the default (native) kernels train other floats on other processors
# (docs/reproducibility.md). (kind, bound): "rel" a relative difference, "abs" an absolute
# one; a metric not listed (the suite's counts) must be equal. Measured by training the
# embedded suite under each instruction set forced (tests/isa_headline.py) and on two
# vendors' machines; the slow test tests/test_reproducibility.py holds the suite to it.
MACHINE_TOLERANCE: dict[str, tuple[str, float]] = {
    "growth.": ("rel", 0.10),
    "kinds.": ("abs", 0.16),
    "fit.": ("abs", 0.02),
    "fit.n_failed": ("abs", 0),
    "predict.": ("abs", 0.3),
    "forecast.": ("rel", 0.5),
    "forecast.forecast.r2_unseen": ("abs", 5.0),
    "forecast.forecast.coverage": ("abs", 0.2),
    "interventions.": ("abs", 0.5),
}


def flatten(doc: dict, prefix: str = "") -> dict[str, float | int]:
    """A headline as {"section.metric": number} (``dvc metrics show``'s names)."""
    out: dict[str, float | int] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def tolerance(metric: str) -> tuple[str, float]:
    """``metric``'s :data:`MACHINE_TOLERANCE` entry: its own, else that of the longest
    prefix ending in "." that names it; ("abs", 0) for a metric none names."""
    if metric in MACHINE_TOLERANCE:
        return MACHINE_TOLERANCE[metric]
    prefixes = [k for k in MACHINE_TOLERANCE if k.endswith(".") and metric.startswith(k)]
    return MACHINE_TOLERANCE[max(prefixes, key=len)] if prefixes else ("abs", 0.0)


def outside_tolerance(reference: dict, other: dict) -> list[str]:
    """The metrics of headline ``other`` that differ from ``reference`` by more than
    :data:`MACHINE_TOLERANCE` allows (a metric missing from either: outside), as
    "name: reference -> other"."""
    a, b = flatten(reference), flatten(other)
    bad = []
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            bad.append(f"{k}: {a.get(k)} -> {b.get(k)}")
            continue
        kind, bound = tolerance(k)
        diff = abs(b[k] - a[k])
        if diff > (bound * abs(a[k]) if kind == "rel" else bound) + 1e-12:
            bad.append(f"{k}: {a[k]} -> {b[k]}")
    return bad


def count(metrics: dict) -> int:
    """How many numbers ``metrics`` holds (DVC's columns)."""
    return sum(count(v) if isinstance(v, dict) else 1 for v in metrics.values())


def curves_table(series: list[pd.DataFrame], statistic: str = "ratio") -> pd.DataFrame:
    """The measured per-layer curves as tidy rows for ``dvc plots``: model, layer,
    curve ("<model> L<layer>"), depth (relative depth (layer + 0.5) / n_layers), step and
    ``statistic`` (top1/median by default); flagged checkpoints left out. Sorted by model,
    layer, step."""
    rows = []
    for s in series:
        d = s[(s["statistic"] == statistic) & ~s["flagged"]]
        n = int(d["layer"].max()) + 1 if len(d) else 0
        rows.append(pd.DataFrame({
            "model": d["model"].astype(str), "layer": d["layer"].astype(int),
            "curve": d["model"].astype(str) + " L" + d["layer"].astype(int).astype(str),
            "depth": ((d["layer"].astype(int) + 0.5) / max(n, 1)).round(3),
            "step": d["step"].astype(int), statistic: d["mean"].astype(float).round(4)}))
    if not rows:
        return pd.DataFrame(columns=["model", "layer", "curve", "depth", "step", statistic])
    return (pd.concat(rows, ignore_index=True)
            .sort_values(["model", "layer", "step"]).reset_index(drop=True))


def run_section(layers: list[dict]) -> dict:
    """The headline numbers of one run (its run summary's rows, one per layer): the last
    checkpoint's step, the middle layers' last and forecast ratio (means), the highest
    peak, the share of layers holding a first-token or feature massive activation."""
    n = len(layers)
    mid = [layers[i] for i in middle_layers(n)]

    def mean(key: str, rows: list[dict]) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    kinds = [r["kind"] for r in layers]
    return _clean({
        "last_step": max(r["last_step"] for r in layers),
        "ratio_mid_last": mean("last_ratio", mid),
        "ratio_peak_max": max(r["peak_ratio"] for r in layers),
        "first_token_share": kinds.count("first_token") / n,
        "feature_share": kinds.count("feature") / n,
        "ratio_mid_forecast": mean("forecast_ratio", mid),
    })


def run_headline(fit: dict, summary: dict) -> dict:
    """The headline of a single-run suite: the suite's size, the fit quality over its runs,
    and one section per run (:func:`run_section`), side by side; nothing averaged across
    runs."""
    models = summary["models"]
    out = {"suite": {"n_models": len(models),
                     "n_layers": sum(len(m["layers"]) for m in models.values())},
           "fit": fit_section(fit)}
    for model, rec in models.items():
        out[f"run:{model}"] = run_section(rec["layers"])
    return {k: v for k, v in out.items() if v}
