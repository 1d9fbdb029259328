"""The run summary: what a researcher asks of one training run, per model (run) and layer.

From a model's series (:mod:`madyn.measure.series`; flagged checkpoints left out) and, where
one was made, its forecast (``forecast/<model>/summary.json``, :mod:`madyn.stages.forecast`):

- ``kind``: the layer's kind at the last checkpoint (:mod:`madyn.measure.kinds`), and
  ``kind_since``: the first step of the unbroken stretch of checkpoints, ending at the last
  one, at which it has been that kind (first_token or feature; empty for none/unknown);
- ``first_x<T>``: the first step at which the ratio (top1 / median, mean over sequences)
  reached each threshold ``T`` (empty: not yet);
- ``peak_step``, ``peak_ratio``; ``first_step``, ``first_ratio``, ``last_step``,
  ``last_ratio`` (growth is ``last_ratio / first_ratio``: from the first *measured* step);
- ``trend_pct``: the ratio's relative change over the last ``trend_checkpoints``
  checkpoints, in percent;
- ``forecast_step``, ``forecast_ratio``, ``forecast_lo``, ``forecast_hi``: where the ratio is
  heading, at the run's planned last step, with the forecast's interval (empty when no
  forecast was made; the reason is in the model's notes).

No file I/O: :mod:`madyn.stages.report` reads and writes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MASSIVE_KINDS = ("first_token", "feature")


def _threshold_name(t: float) -> str:
    return f"first_x{t:g}"


def columns(thresholds: list[float]) -> list[str]:
    """The table's columns, in order."""
    return (["model", "layer", "kind", "kind_since",
             *[_threshold_name(t) for t in thresholds],
             "peak_step", "peak_ratio", "first_step", "first_ratio", "last_step", "last_ratio",
             "trend_pct", "forecast_step", "forecast_ratio", "forecast_lo", "forecast_hi"])


def _kind_since(kinds: pd.Series) -> float:
    """First step of the last unbroken stretch of the final kind (NaN unless massive).
    ``kinds``: step -> kind, sorted by step."""
    last = kinds.iloc[-1]
    if last not in MASSIVE_KINDS:
        return np.nan
    since = kinds.index[-1]
    for step, kind in zip(kinds.index[::-1], kinds.to_numpy()[::-1], strict=True):
        if kind != last:
            break
        since = step
    return float(since)


def _forecast_final(forecast: dict | None, layer: int) -> tuple[float, float, float, float]:
    """(step, value, lo, hi) of the ratio's forecast final value (NaNs without one)."""
    try:
        final = forecast["layers"]["ratio"][str(layer)]["final"]
        return (float(forecast["last_step"]), float(final["value"]), float(final["lo"]),
                float(final["hi"]))
    except (KeyError, TypeError, ValueError):
        return (np.nan,) * 4


def layer_table(series: pd.DataFrame, forecast: dict | None = None,
                thresholds: tuple[float, ...] = (10.0, 100.0),
                trend_checkpoints: int = 3) -> pd.DataFrame:
    """One row per layer of one model's ``series`` (:func:`columns`)."""
    d = series[(series["statistic"] == "ratio") & ~series["flagged"].astype(bool)]
    model = str(series["model"].iloc[0])
    rows = []
    for layer, g in d.groupby("layer", sort=True):
        g = g.sort_values("step")
        steps, ratio = g["step"].to_numpy(int), g["mean"].to_numpy(float)
        kinds = (pd.Series(g["kind"].to_numpy(), index=steps) if "kind" in g.columns
                 else pd.Series(["unknown"] * len(steps), index=steps))
        i_peak = int(np.nanargmax(ratio)) if np.isfinite(ratio).any() else 0
        k = min(trend_checkpoints, len(ratio))
        trend = (ratio[-1] / ratio[-k] - 1) * 100 if k >= 2 and ratio[-k] > 0 else np.nan
        row = {"model": model, "layer": int(layer), "kind": str(kinds.iloc[-1]),
               "kind_since": _kind_since(kinds)}
        for t in thresholds:
            hit = np.flatnonzero(ratio >= t)
            row[_threshold_name(t)] = float(steps[hit[0]]) if len(hit) else np.nan
        fstep, fval, flo, fhi = _forecast_final(forecast, int(layer))
        row.update(peak_step=int(steps[i_peak]), peak_ratio=float(ratio[i_peak]),
                   first_step=int(steps[0]), first_ratio=float(ratio[0]),
                   last_step=int(steps[-1]), last_ratio=float(ratio[-1]),
                   trend_pct=float(trend), forecast_step=fstep, forecast_ratio=fval,
                   forecast_lo=flo, forecast_hi=fhi)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns(list(thresholds)))


def notes(series: pd.DataFrame, forecast: dict | None) -> list[str]:
    """What a reader must know to read one model's rows: a missing step 0 (growth from the
    first measured step), flagged checkpoints left out, and why there is no forecast."""
    out = []
    steps = sorted(series["step"].unique())
    if steps and steps[0] != 0:
        out.append(f"no step 0: growth is measured from step {int(steps[0])}")
    flagged = sorted(series.loc[series["flagged"].astype(bool), "step"].unique())
    if flagged:
        out.append(f"{len(flagged)} flagged checkpoints left out: "
                   + ", ".join(str(int(s)) for s in flagged[:8])
                   + (" ..." if len(flagged) > 8 else ""))
    if forecast is None:
        out.append("no forecast")
    elif forecast.get("refused") or forecast.get("skipped"):
        out.append(f"no forecast: {forecast.get('refused') or forecast.get('skipped')}")
    return out


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if float(x).is_integer() and abs(x) >= 1:
        return str(int(x))
    return f"{x:.{digits}g}"


def lines(table: pd.DataFrame, model_notes: dict[str, list[str]],
          thresholds: tuple[float, ...]) -> list[str]:
    """The summary as terminal lines: a heading per model, then one line per layer."""
    cross = [_threshold_name(t) for t in thresholds]
    head = (["layer", "kind", "since", *[f"x{t:g} at" for t in thresholds], "peak (step)",
             "last", "trend", "heading to"])
    out = []
    for model, g in table.groupby("model", sort=False):
        g = g.sort_values("layer")
        last = int(g["last_step"].max())
        fstep = g["forecast_step"].dropna()
        target = f"; forecast to step {int(fstep.iloc[0])}" if len(fstep) else ""
        out.append(f"run {model}: last checkpoint step {last}{target}")
        out += [f"  ({n})" for n in model_notes.get(str(model), [])]
        body = []
        for _, r in g.iterrows():
            heading = ("-" if not math.isfinite(r["forecast_ratio"]) else
                       f"{_fmt(r['forecast_ratio'])} [{_fmt(r['forecast_lo'])}, "
                       f"{_fmt(r['forecast_hi'])}]")
            trend = "-" if not math.isfinite(r["trend_pct"]) else f"{r['trend_pct']:+.1f} %"
            body.append([str(r["layer"]), r["kind"], _fmt(r["kind_since"]),
                         *[_fmt(r[c]) for c in cross],
                         f"{_fmt(r['peak_ratio'])} ({r['peak_step']})",
                         _fmt(r["last_ratio"]), trend, heading])
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        for cells in [head, *body]:
            out.append("  " + "  ".join(c.rjust(w) if i != 1 else c.ljust(w)
                                        for i, (c, w) in enumerate(zip(cells, widths,
                                                                       strict=True))))
    return out


def markdown(table: pd.DataFrame, model_notes: dict[str, list[str]],
             thresholds: tuple[float, ...]) -> str:
    """The summary as reStructuredText-compatible plain text (a literal block per model),
    for the report's front page."""
    text = lines(table, model_notes, thresholds)
    return "\n".join(text) + "\n"
