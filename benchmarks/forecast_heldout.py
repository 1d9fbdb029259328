"""The run forecast (relative time, madyn.predict.forecast.forecast_relative) on runs it has
not seen: every held-out series is truncated at each fraction of its last step and forecast
to its last step from a prior; prints and returns, per fraction and quantity, the share of
true final values inside the 90 % intervals and the median final-value error of the
forecast and of the last value carried forward.

    python benchmarks/forecast_heldout.py --prior data/prior/embedded.parquet \
        --heldout results/x/series/*.parquet [--foreign 1] [--leave-one-out]

``--leave-one-out``: the held-out series are also the prior, each forecast from the others
(same recipe: ``--foreign`` 0 unless given)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from madyn.predict import forecast
from madyn.stages.forecast_prior import load_prior, prior_curves, prior_rows

QUANTITIES = ("ratio", "top1", "median")


def heldout(prior_table: pd.DataFrame, series: list[pd.DataFrame], foreign: float,
            fractions=(0.1, 0.25, 0.5), loo: bool = False) -> pd.DataFrame:
    """One row per (model, quantity, layer, fraction): covered, err, last_err."""
    rows = []
    for s in series:
        name = str(s["model"].iloc[0])
        table = prior_table[prior_table["model"] != name] if loo else prior_table
        for q in QUANTITIES:
            prior = list(prior_curves(table, q).values())
            steps, depths, vals = forecast.layer_curves(s, q)
            last = steps[-1]
            u = steps / last
            for layer, depth in enumerate(depths):
                truth = vals[layer]
                samples = forecast.relative_samples(prior, float(depth), u)
                for frac in fractions:
                    k = forecast.observed_upto(steps, frac * last)
                    try:
                        fc = forecast.forecast_relative(steps, u, truth[:k], samples,
                                                        foreign)
                    except forecast.ForecastError:
                        continue
                    t = truth[-1]
                    rows.append({"model": name, "quantity": q, "layer": layer,
                                 "fraction": frac,
                                 "covered": fc.final[1] <= t <= fc.final[2],
                                 "err": abs(fc.final[0] - t) / t,
                                 "last_err": abs(truth[k - 1] - t) / t,
                                 "width": np.log(fc.final[2] / fc.final[1])})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> dict:
    out = {}
    for (frac, q), g in table.groupby(["fraction", "quantity"]):
        out[f"{int(round(100 * frac))}% {q}"] = {
            "n": len(g), "coverage": round(float(g["covered"].mean()), 3),
            "err_pct": round(100 * float(g["err"].median()), 1),
            "last_value_err_pct": round(100 * float(g["last_err"].median()), 1),
            "log_width": round(float(g["width"].median()), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", nargs="+")
    ap.add_argument("--heldout", nargs="+", required=True)
    ap.add_argument("--foreign", type=float, default=None)
    ap.add_argument("--leave-one-out", action="store_true")
    a = ap.parse_args()
    series = [pd.read_parquet(p) for p in a.heldout]
    if a.leave_one_out:
        table = pd.concat([prior_rows(s, QUANTITIES) for s in series], ignore_index=True)
    else:
        table, _, _ = load_prior(a.prior, None, "", QUANTITIES)  # None: the committed ones
    foreign = a.foreign if a.foreign is not None else (0.0 if a.leave_one_out else 1.0)
    for k, v in summarise(heldout(table, series, foreign, loo=a.leave_one_out)).items():
        print(f"{k:12} {json.dumps(v)}")


if __name__ == "__main__":
    main()
