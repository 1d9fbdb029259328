"""Recipe sweep: how much top1/median grows in one embedded model under recipe variants.

Trains MODEL once per variant (the suite's recipe from params.yaml with the variant's keys
replaced), measures the ratio of every decoder layer on the suite's evaluation batch at
step 0 and at the last step, and prints one line per variant, side by side: training
time, final loss, growth of the middle layers (relative depth in [0.25, 0.75]) and the
trajectory of the layer-mean ratio. This is how the embedded recipe was tuned (docs/results.md,
"Tuning the recipe"). Needs the suite's corpus (``snakemake --cores 2 suite_all`` builds it).

Run, e.g.: ``python benchmarks/recipe.py l6-w96-h6 '{"lr": 0.01}' '{"lr": 0.015,
"batch_size": 8, "steps": 2000, "warmup": 100}'`` (one variant per argument; ``{}`` is
the suite's own recipe; a model's own ``lr`` in params.yaml is its baseline).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from madyn.measure.checkpoints import load_model
from madyn.measure.series import middle_layers
from madyn.measure.statistics import measure
from madyn.train.training import TrainSpec, train_model
from madyn.workflow import params_file, params_values


def run_variant(model: str, suite: dict, results: Path, variant: dict, work: Path) -> str:
    """Train ``model`` with ``variant`` applied, in ``work``; one result line."""
    spec = params_values.model_spec(suite, model)
    base = params_values.train_spec(suite, model).__dict__
    unknown = set(variant) - set(base)
    if unknown:
        raise SystemExit(f"unknown recipe keys {sorted(unknown)}; known: {sorted(base)}")
    t = TrainSpec(**{**base, **variant, "log_until": 0,
                     "every": max(1, (variant.get("steps", base["steps"])) // 4)})
    m = train_model(spec, t, results / "corpus", work, threads=1)
    tokens = np.load(results / "eval" / "tokens_corpus.npy")
    ratio = {s: measure(load_model(str(work / f"step{s}")), tokens)
             .groupby("layer")["ratio"].mean().to_numpy() for s in m["steps"]}
    growth = ratio[m["steps"][-1]] / ratio[0]
    traj = " ".join(f"{s}:{ratio[s].mean():.1f}" for s in m["steps"])
    return (f"{json.dumps(variant):58s} {m['train_seconds']:6.0f} s  "
            f"loss {m['final_loss']:.3f}"
            f"  middle x{growth[middle_layers(spec.layers)].mean():.2f}"
            f"  per layer x{growth.min():.2f}-{growth.max():.2f}  ratio {traj}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model of the suite (its architecture)")
    ap.add_argument("variants", nargs="+", help="JSON objects of recipe keys to replace")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = params_file.load(args.params)
    suite = params_values.active(cfg)
    results = Path(params_values.results_dir(cfg))
    if args.model not in params_values.model_names(suite):
        raise SystemExit(f"no model {args.model!r} in suite {cfg['suite']!r}")
    print(f"{args.model}: {'variant':52s} train    final loss   growth of top1/median")
    with tempfile.TemporaryDirectory() as work:
        for i, v in enumerate(args.variants):
            print(run_variant(args.model, suite, results, json.loads(v), Path(work) / str(i)),
                  flush=True)


if __name__ == "__main__":
    main()
