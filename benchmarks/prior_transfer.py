"""A committed prior on runs from another suite, through `madyn forecast`'s own code
(madyn.stages.forecast.forecast_run): every run of a trained suite is truncated at each
fraction of its last step and forecast to that step with the committed default priors (what
a fresh clone uses: the atlas design prior for a run inside its design space, else the
relative-time priors), with the relative-time priors alone and with each --prior given (e.g.
the atlas design prior, used whenever given);
prints, per fraction and quantity, the median final-value error of each and of the last
value carried forward, and the share of true final values inside the 90 % intervals.

    python benchmarks/prior_transfer.py --results results/interventions \
        --suite interventions --prior data/prior/atlas.parquet [--workers 2]
    python benchmarks/prior_transfer.py --results results/atlas-reference \
        --suite atlas-reference [--workers 2]

The suite's results must hold series/<model>.parquet and configs/<model>.json (`snakemake
--config suite=NAME` writes both); its recipes come from params.yaml (``--suite``)."""

from __future__ import annotations

import argparse
import math
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.parallel import map_ordered
from madyn.predict.forecast import FORECAST_QUANTITIES, layer_curves, observed_upto


def one_run(job: tuple[str, float], results: Path, recipes: dict, priors: dict,
            evaluation: dict | None = None) -> list[dict]:
    """Rows (model, fraction, prior, quantity, layer, err, covered) of one truncated run,
    forecast with every prior of ``priors`` (label -> list of prior files or None);
    ``evaluation``: the suite's evaluation batch (n_seqs, seq_len), told to the forecast."""
    from madyn.stages.forecast import DESIGN_RECIPE_KEYS, forecast_run

    model, frac = job
    series = pd.read_parquet(results / "series" / f"{model}.parquet")
    last = int(series["step"].max())
    steps = np.sort(series["step"].unique())
    k = observed_upto(steps.astype(float), frac * last)
    if k < 2 or k >= len(steps):
        return []
    truths = {q: layer_curves(series, q)[2] for q in FORECAST_QUANTITIES}  # L x S each
    rows = [{"model": model, "fraction": frac, "quantity": q, "layer": layer,
             "prior": "last value", "covered": math.nan,
             "err": abs(vals[layer, k - 1] - vals[layer, -1]) / vals[layer, -1]}
            for q, vals in truths.items() for layer in range(len(vals))]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run.parquet"
        series[series["step"] <= steps[k - 1]].to_parquet(run, index=False)
        folder = Path(tmp) / "folder"
        folder.mkdir()
        (folder / "config.json").write_text((results / "configs" / f"{model}.json").read_text())
        rec = {key: v for key, v in recipes.get(model, {}).items()
               if key in DESIGN_RECIPE_KEYS}
        if evaluation:
            rec["eval"] = evaluation
        for label, prior in priors.items():
            out = Path(tmp) / label
            layers = forecast_run(str(run), last, str(out), prior=prior,
                                  run_folder=str(folder), recipe=rec,
                                  record_refusal=True)["layers"]  # summary.json's
            for q, vals in truths.items():
                for layer, truth in enumerate(vals[:, -1]):
                    f = layers.get(q, {}).get(str(layer), {}).get("final")
                    rows.append({"model": model, "fraction": frac, "quantity": q,
                                 "layer": layer, "prior": label,
                                 "err": abs(f["value"] - truth) / truth if f else math.nan,
                                 "covered": float(f["lo"] <= truth <= f["hi"]) if f
                                 else math.nan})
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, type=Path)
    ap.add_argument("--suite", required=True, help="the suite's name in params.yaml")
    ap.add_argument("--prior", nargs="*", default=[], help="more prior files to compare")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.25, 0.5])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out-csv", help="every row, for a closer look")
    a = ap.parse_args(argv)
    from madyn.stages.design_lodo import suite_recipes
    from madyn.stages.forecast_prior import default_priors
    from madyn.workflow.params_file import load

    suites = load(a.params)["suites"]  # design spaces expanded to their models
    suite = suites[a.suite]
    ext = (suite.get("extract") or suites.get(suite.get("design_space_from"), {}).get("extract")
           or {})
    evaluation = {k: int(ext[k]) for k in ("n_seqs", "seq_len") if k in ext}
    models = sorted(p.stem for p in (a.results / "series").glob("*.parquet"))
    priors = {"default priors": None,  # what a fresh clone uses, the design prior included
              "relative-time priors": [str(p) for p in default_priors()],
              **{Path(p).stem: [p] for p in a.prior}}
    jobs = [(m, f) for m in models for f in a.fractions]
    fn = partial(one_run, results=a.results, recipes=suite_recipes(suite), priors=priors,
                 evaluation=evaluation)
    table = pd.DataFrame([r for part in map_ordered(fn, jobs, a.workers) for r in part])
    if a.out_csv:
        table.to_csv(a.out_csv, index=False)
    summary = (table.groupby(["fraction", "quantity", "prior"], sort=True)
               .agg(err_median_pct=("err", lambda e: round(100 * float(e.median()), 1)),
                    coverage=("covered", lambda c: round(float(c.mean()), 2)),
                    refused=("err", lambda e: int(e.isna().sum())), rows=("err", "size"))
               .reset_index())
    print(f"{len(models)} runs of {a.suite} ({a.results}), forecast from "
          f"{', '.join(f'{100 * f:g} %' for f in a.fractions)} of each schedule")
    print(summary.to_string(index=False))
    return summary


if __name__ == "__main__":
    main()
