"""A run's archived forecasts scored against what arrived since (``madyn forecast
--score``): coverage of the intervals and median errors, against the last value carried
forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from madyn.io import write_json


def _interp_log(steps: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values`` (positive) at steps ``at``, linear in log value and log(1 + step)."""
    return np.exp(np.interp(np.log1p(at), np.log1p(steps), np.log(values)))


def score_archive(curves: pd.DataFrame, run: pd.DataFrame) -> dict:
    """One archived forecast (its curves.csv) against the run's series now: per quantity
    and layer, for the checkpoints after the forecast's last seen step (``later``) and the
    planned last step when it has arrived (``final``): the share inside the interval
    (``coverage``), the median absolute error of the forecast (``err_pct``) and of the last
    value carried forward (``last_value_err_pct``); per quantity and overall, the same
    over layers (medians of errors, shares of all values)."""
    out: dict = {"quantities": {}}
    every = {"later": [], "final": []}
    for q, dq in curves.groupby("quantity", sort=False):
        per = {}
        for layer, d in dq.groupby("layer", sort=True):
            d = d.sort_values("step")
            seen = d[d["seen"].astype(bool)]
            k, last = int(seen["step"].max()), int(d["step"].max())
            obs = run[(run["statistic"] == q) & (run["layer"] == layer)
                      & (run["step"] > k) & (run["step"] <= last)].sort_values("step")
            if obs.empty:
                continue
            at, truth = obs["step"].to_numpy(float), obs["mean"].to_numpy(float)
            st = d["step"].to_numpy(float)
            mean, lo, hi = (_interp_log(st, d[c].to_numpy(float), at)
                            for c in ("mean", "lo", "hi"))
            lv = float(seen.sort_values("step")["mean"].iloc[-1])
            cells = {}
            for part, sel in (("later", np.ones(len(at), bool)), ("final", at == last)):
                if not sel.any():
                    continue
                t = truth[sel]
                cov = (lo[sel] <= t) & (t <= hi[sel])
                err = np.abs(mean[sel] - t) / t
                lerr = np.abs(lv - t) / t
                cells[part] = {"n": int(sel.sum()), "coverage": round(float(cov.mean()), 3),
                               "err_pct": round(100 * float(np.median(err)), 2),
                               "last_value_err_pct": round(100 * float(np.median(lerr)), 2)}
                every[part].append((q, cov, err, lerr))
            per[str(int(layer))] = cells
        out["quantities"][q] = {"layers": per, **{
            part: _cells([e for e in v if e[0] == q]) for part, v in every.items()
            if any(e[0] == q for e in v)}}
    out["overall"] = {part: _cells(v) for part, v in every.items() if v}
    return out


def _cells(entries: list) -> dict:
    """Coverage over all values, median errors over all values, of (q, covered, err,
    last-value err) entries."""
    cov = np.concatenate([e[1] for e in entries])
    err = np.concatenate([e[2] for e in entries])
    lerr = np.concatenate([e[3] for e in entries])
    return {"n": int(len(cov)), "coverage": round(float(cov.mean()), 3),
            "err_pct": round(100 * float(np.median(err)), 2),
            "last_value_err_pct": round(100 * float(np.median(lerr)), 2)}


def score(run_path: str, out_dir: str) -> dict:
    """Score every forecast archived under ``out_dir``/archive/from_step<k>/ against the
    run's series now (``run_path``): :func:`score_archive` per archive; writes
    ``out_dir``/score.json and returns it (archives with nothing arrived since are listed
    with ``n`` 0)."""
    run = pd.read_parquet(run_path)
    seen_to = int(run["step"].max())
    doc: dict = {"model": str(run["model"].iloc[0]), "observed_to_step": seen_to,
                 "archives": {}}
    arch = Path(out_dir) / "archive"
    for d in sorted(arch.glob("from_step*"), key=lambda p: int(p.name[9:] or 0)):
        f = d / "curves.csv"
        if not f.is_file() or not d.name[9:].isdigit():
            continue
        if int(d.name[9:]) >= seen_to:
            doc["archives"][d.name] = {"n": 0, "note": "nothing arrived since"}
            continue
        doc["archives"][d.name] = score_archive(pd.read_csv(f), run)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "score.json", doc)
    return doc


def score_lines(doc: dict) -> list[str]:
    """What ``madyn forecast --score`` prints: per archive and quantity, the interval's
    coverage and the median errors of the forecast and the last value, later checkpoints
    and the final step."""
    lines = []
    for name, a in doc["archives"].items():
        if not a.get("quantities"):
            lines.append(f"  {name}: {a.get('note', 'nothing to score')}")
            continue
        for q, v in list(a["quantities"].items()) + [("all", a.get("overall", {}))]:
            for part in ("later", "final"):
                c = v.get(part)
                if c:
                    lines.append(f"  {name} {q:6} {part:5}: coverage {c['coverage']:.2f} of "
                                 f"{c['n']}, error {c['err_pct']:.1f} % (last value "
                                 f"{c['last_value_err_pct']:.1f} %)")
    return lines
