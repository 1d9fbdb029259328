"""Per-model time series (step x layer x statistic) and checkpoint integrity.

The series table is tidy: one row per (step, layer, statistic) with ``mean``, ``std``
and ``sem`` over sequences, plus ``n`` (sequences with finite values), and the layer's
classification at that step (:mod:`madyn.measure.kinds`: ``kind`` in first_token / feature / none
/ unknown, ``kind_position``, ``kind_channel``, ``position_share``,
``channel_agreement``), repeated on each of its rows. Two ratios:

- ``ratio``: the mean over sequences of per-sequence top1/median (what the fits use: it
  matches the study, which fits the ratio series of per-sequence ratios averaged);
- ``ratio_of_means``: mean(top1) / mean(median) (std/sem not defined: NaN).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from madyn.measure.kinds import classify
from madyn.measure.stats_table import STAT_COLUMNS

SERIES_STATS = [c for c in STAT_COLUMNS if c not in ("top1_token", "top1_channel")]


def checkpoint_series(stats: pd.DataFrame, step: int) -> pd.DataFrame:
    """Reduce one checkpoint's seq x layer table to per-layer mean/std/sem rows."""
    present = [c for c in SERIES_STATS if c in stats.columns]  # released files: 4 of them
    long = stats.melt(id_vars=["seq", "layer"], value_vars=present,
                      var_name="statistic", value_name="value")
    long = long[np.isfinite(long["value"])]
    g = long.groupby(["layer", "statistic"])["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["sem"] = out["std"] / np.sqrt(out["n"])
    means = stats.groupby("layer")[["top1", "median"]].mean()
    rom = pd.DataFrame({"layer": means.index, "statistic": "ratio_of_means",
                        "mean": (means["top1"] / means["median"]).to_numpy(),
                        "std": np.nan, "n": stats.groupby("layer").size().to_numpy(),
                        "sem": np.nan})
    out = pd.concat([out, rom], ignore_index=True)
    out = out.merge(classify(stats), on="layer", how="left")
    out.insert(0, "step", int(step))
    return out


def integrity(fingerprints: dict[int, dict]) -> dict[int, str]:
    """Flag checkpoints whose weights repeat another step's.

    fingerprints: step -> {"sha256": overall, "shards": {file: sha256}}. A group of steps
    with identical weights keeps its last step (the hub serves the final weights under
    earlier revisions, never the reverse); the others are flagged. A step sharing any
    single shard with another step is flagged too (pythia-12b's first shard).
    Returns step -> reason for every flagged step.
    """
    flags: dict[int, str] = {}
    by_all: dict[str, list[int]] = defaultdict(list)
    by_shard: dict[str, list[int]] = defaultdict(list)
    for step, fp in fingerprints.items():
        by_all[fp["sha256"]].append(step)
        for name, h in fp.get("shards", {}).items():
            by_shard[f"{name}:{h}"].append(step)
    for steps in by_all.values():
        keep = max(steps)
        for s in steps:
            if s != keep:
                flags[s] = f"weights identical to step {keep}"
    for key, steps in by_shard.items():
        distinct = {fingerprints[s]["sha256"] for s in steps}
        if len(distinct) > 1:
            keep = max(steps)
            for s in steps:
                if s != keep and s not in flags:
                    flags[s] = f"shard {key.split(':')[0]} identical to step {keep}'s"
    return dict(sorted(flags.items()))


def build_series(tables: dict[int, pd.DataFrame], metas: dict[int, dict], model: str
                 ) -> tuple[pd.DataFrame, dict]:
    """Series table for one model and its integrity report.

    tables/metas: step -> per-checkpoint table and metadata (from
    :func:`madyn.measure.stats_table.read_stats`).
    The series gets ``flagged`` (bool) and ``flag_reason`` per step: weights repeated
    (see :func:`integrity`) or non-finite activations.
    """
    parts = [checkpoint_series(tables[s], s) for s in sorted(tables)]
    series = pd.concat(parts, ignore_index=True)
    series.insert(0, "model", model)
    fps = {s: m["weights"] for s, m in metas.items() if m.get("weights")}
    flags = integrity(fps)
    for s, t in tables.items():
        if int(t["nonfinite"].sum()) > 0:
            flags[s] = "; ".join(filter(None, [flags.get(s), "non-finite activations"]))
    series["flagged"] = series["step"].isin(list(flags))
    series["flag_reason"] = series["step"].map(lambda s: flags.get(s, "")).astype(str)
    report = {
        "model": model,
        "n_checkpoints": len(tables),
        "flagged": {str(k): v for k, v in sorted(flags.items())},
        "identical_groups": [sorted(v) for v in _groups(fps) if len(v) > 1],
        "nonfinite_steps": sorted(int(s) for s, t in tables.items()
                                  if int(t["nonfinite"].sum()) > 0),
    }
    return series, report


def _groups(fps: dict[int, dict]) -> list[list[int]]:
    g: dict[str, list[int]] = defaultdict(list)
    for s, fp in fps.items():
        g[fp["sha256"]].append(int(s))
    return list(g.values())


def fit_input(series: pd.DataFrame, quantities=("ratio", "top1", "median")) -> pd.DataFrame:
    """The tidy input of the fitting phase: model, step, layer, quantity, value, flagged."""
    s = series[series["statistic"].isin(quantities)]
    return pd.DataFrame({"model": s["model"], "step": s["step"].astype(int),
                         "layer": s["layer"].astype(int), "quantity": s["statistic"],
                         "value": s["mean"].astype(float),
                         "flagged": s["flagged"].astype(bool)}).reset_index(drop=True)


def middle_layers(n_layers: int) -> list[int]:
    """Layers whose relative depth (i + 0.5) / L lies in [0.25, 0.75] (all, if none)."""
    return [i for i in range(n_layers) if 0.25 <= (i + 0.5) / n_layers <= 0.75] or list(
        range(n_layers))


def growth_summary(series_by_model: dict[str, pd.DataFrame], statistic: str = "ratio"
                   ) -> dict:
    """Per model: ``statistic`` at the last checkpoint / at the first, per layer, and the
    same for the middle layers (relative depth in [0.25, 0.75]) and the minimum over
    training (the early dip). Flagged checkpoints are left out."""
    out = {}
    for model, series in series_by_model.items():
        d = series[(series["statistic"] == statistic) & ~series["flagged"]]
        wide = d.pivot(index="step", columns="layer", values="mean").sort_index()
        first, last = wide.iloc[0], wide.iloc[-1]
        n = wide.shape[1]
        middle = [wide.columns[i] for i in middle_layers(n)]
        g = last / first
        out[model] = {
            "first_step": int(wide.index[0]), "last_step": int(wide.index[-1]),
            "first": first.round(3).tolist(), "last": last.round(3).tolist(),
            "growth_per_layer": g.round(3).tolist(),
            "growth_middle_mean": round(float(g[middle].mean()), 3),
            "growth_from_min_per_layer": (last / wide.min()).round(3).tolist(),
            **final_kinds(series),
        }
    return out


def final_kinds(series: pd.DataFrame) -> dict:
    """The classification of each layer at the last unflagged checkpoint
    (:mod:`madyn.measure.kinds`): ``kind_per_layer``, ``position_per_layer``,
    ``channel_per_layer`` and, where measured, ``ratio_excl_token_per_layer`` and
    ``sink_mass_per_layer`` (means over sequences); empty for a series without kinds."""
    if "kind" not in series.columns:
        return {}
    d = series[~series["flagged"]]
    last = d[d["step"] == d["step"].max()]
    per_layer = last.drop_duplicates("layer").sort_values("layer")
    out = {"kind_per_layer": per_layer["kind"].tolist(),
           "position_per_layer": per_layer["kind_position"].astype(int).tolist(),
           "channel_per_layer": per_layer["kind_channel"].astype(int).tolist()}
    for stat in ("ratio_excl_token", "sink_mass"):
        v = last[last["statistic"] == stat].sort_values("layer")["mean"]
        if len(v) and v.notna().any():
            out[f"{stat}_per_layer"] = [None if not np.isfinite(x) else round(float(x), 3)
                                        for x in v]
    return out


def layer_summary(series_by_model: dict[str, pd.DataFrame], n_params: dict[str, int]
                  ) -> pd.DataFrame:
    """One row per (model, layer) for cross-model figures, from the observed series
    (flagged checkpoints left out): ``rel_depth`` = (layer + 1) / L, ``n_params``,
    ``peak_step`` / ``peak_ratio`` (step and value of the largest mean top1/median over
    training), ``final_ratio`` (at the last checkpoint), ``final_kurtosis``, ``final_kind``
    (:mod:`madyn.measure.kinds` at the last checkpoint; ``unknown`` without kinds)."""
    rows = []
    for model, series in series_by_model.items():
        d = series[~series["flagged"]]
        ratio = d[d["statistic"] == "ratio"].pivot(index="step", columns="layer",
                                                   values="mean").sort_index()
        kurt = d[d["statistic"] == "kurtosis"].pivot(index="step", columns="layer",
                                                     values="mean").sort_index()
        n_layers = ratio.shape[1]
        for layer in ratio.columns:
            col = ratio[layer].dropna()
            rows.append({"model": model, "layer": int(layer), "n_layers": n_layers,
                         "rel_depth": (int(layer) + 1) / n_layers,
                         "n_params": int(n_params[model]),
                         "peak_step": int(col.idxmax()), "peak_ratio": float(col.max()),
                         "final_ratio": float(col.iloc[-1]),
                         "final_kurtosis": (float(kurt[layer].dropna().iloc[-1])
                                            if layer in kurt else np.nan),
                         "final_kind": _kind_at(d, int(layer), int(col.index[-1]))})
    return pd.DataFrame(rows).sort_values(["n_params", "model", "layer"],
                                          ignore_index=True)


def _kind_at(series: pd.DataFrame, layer: int, step: int) -> str:
    """A layer's kind at ``step`` (``unknown`` for a series without kinds)."""
    if "kind" not in series.columns:
        return "unknown"
    k = series.loc[(series["layer"] == layer) & (series["step"] == step), "kind"]
    return str(k.iloc[0]) if len(k) else "unknown"
