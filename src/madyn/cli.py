"""The ``madyn`` command line: one subcommand per phase, each a thin call into the package.

The workflow (Snakefile) calls these; they are also usable by hand, e.g.
``madyn check params.yaml`` or ``madyn train l2-w32-h2 --params params.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _cmd_check(args: argparse.Namespace) -> int:
    from madyn import config

    cfg = config.load(args.params)
    suite = config.active(cfg)
    n = "?" if suite["source"] == "released" else len(config.steps(suite))
    print(f"{args.params}: valid. suite={cfg['suite']} ({suite['source']}), "
          f"{len(suite['models'])} models, {n} checkpoints each")
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    from madyn.corpus import build_corpus

    t0 = time.monotonic()
    m = build_corpus(args.out, args.max_mb, args.heldout_fraction, args.vocab_size, args.root)
    print(f"corpus: {m['n_files']} files, {m['bytes'] / 1e6:.1f} MB, tokens {m['tokens']}, "
          f"sha256 {m['sha256'][:12]} ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from madyn import config
    from madyn.io import write_json
    from madyn.suite import ModelSpec, TrainSpec, train_model

    if args.spec_json:
        spec = ModelSpec(**json.loads(args.spec_json))
        train = TrainSpec(**json.loads(args.train_json))
    else:
        cfg = config.load(args.params)
        suite = config.active(cfg)
        if suite["source"] != "local":
            raise SystemExit(f"madyn train: suite {cfg['suite']!r} is not trained locally")
        if args.model not in config.model_names(suite):
            raise SystemExit(f"madyn train: no model {args.model!r} in suite {cfg['suite']!r}")
        spec, train = config.model_spec(suite, args.model), config.train_spec(suite, args.model)
    m = train_model(spec, train, args.corpus, args.out, threads=args.threads)
    if args.timing_out:
        write_json(args.timing_out, {k: m[k] for k in ("model", "threads", "started_unix",
                                                         "train_seconds")})
    print(f"[{spec.name}] trained {train.steps} steps in {m['train_seconds']:.0f}s, "
          f"{len(m['steps'])} checkpoints, final loss {m['final_loss']:.3f}", file=sys.stderr)
    return 0


def _cmd_eval_tokens(args: argparse.Namespace) -> int:
    import numpy as np

    from madyn.corpus import encode_with, eval_windows, heldout_texts
    from madyn.io import atomic_path, read_json

    manifest = read_json(args.corpus_manifest)
    ids = encode_with(args.tokenizer, heldout_texts(manifest), args.revision)
    tokens = eval_windows(ids, args.n_seqs, args.seq_len, args.seed)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.save(f, tokens)
    print(f"eval tokens: {tokens.shape[0]} x {tokens.shape[1]} from {len(ids)} held-out "
          f"tokens -> {args.out}", file=sys.stderr)
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    import numpy as np

    from madyn.extract import extract_checkpoint

    tokens = np.load(args.tokens)
    if tokens.ndim != 2:
        raise SystemExit(f"madyn extract: {args.tokens} must hold an N x T array of ids")
    df = extract_checkpoint(
        args.checkpoint, tokens, args.out, revision=args.revision, model_name=args.model,
        step=args.step, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
        progress=args.progress, delete_download=args.delete_download,
    )
    last = df[df["layer"] == df["layer"].max()]
    print(f"{args.checkpoint}@{args.revision or 'local'}: {df['layer'].nunique()} layers, "
          f"last-layer top1/median {last['ratio'].mean():.1f} -> {args.out}", file=sys.stderr)
    return 0


def _cmd_series(args: argparse.Namespace) -> int:
    from pathlib import Path

    from madyn import released
    from madyn.extract import read_stats
    from madyn.io import atomic_path, write_json
    from madyn.series import build_series

    tables, metas = {}, {}
    if args.released:
        files = released.scan(args.released).get(args.model)
        if not files:
            raise SystemExit(f"madyn series: no exp2_{args.model}_step* files under "
                             f"{args.released}/{args.model}/stats")
        tables = released.read_model(files)
        metas = {s: {} for s in tables}
    else:
        for f in args.stats:
            df, meta = read_stats(f)
            tables[int(meta["step"])], metas[int(meta["step"])] = df, meta
    series, report = build_series(tables, metas, args.model)
    with atomic_path(args.out) as tmp:
        series.to_parquet(tmp, index=False)
    write_json(args.integrity, report)
    if args.export:
        for step, df in tables.items():
            released.write_exp2(df, released.exp2_path(args.export, args.model, step))
    n_flag = len(report["flagged"])
    print(f"[{args.model}] series of {len(tables)} checkpoints, {n_flag} flagged "
          f"-> {Path(args.out).name}", file=sys.stderr)
    return 0


def _cmd_growth(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from madyn.io import write_json
    from madyn.series import growth_summary

    series = {Path(f).stem: pd.read_parquet(f) for f in args.series}
    summary = growth_summary(series)
    write_json(args.out, summary)
    for m, g in summary.items():
        per = " ".join(f"{x:.1f}" for x in g["growth_per_layer"])
        print(f"{m:14s} top1/median x{g['growth_middle_mean']:.2f} (middle layers); "
              f"per layer {per}", file=sys.stderr)
    return 0


def _cmd_train_summary(args: argparse.Namespace) -> int:
    from pathlib import Path

    from madyn.io import read_json, write_json
    from madyn.suite import training_summary

    timings = {Path(f).stem: read_json(f) for f in args.timings}
    budget = args.budget_min * 60 if args.budget_min else None
    s = training_summary(timings, budget)
    write_json(args.out, s)
    if "wall_s" in s:
        w = s["wall_s"]
        verdict = ""
        if budget:
            verdict = (f", within the {args.budget_min:g}-minute budget" if s["within_budget"]
                       else f", OVER the {args.budget_min:g}-minute budget")
        print(f"suite trained: {len(s['models'])} models in {int(w // 60)} min {w % 60:.0f} s "
              f"wall ({s['sum_s']:.0f} s summed over jobs){verdict}", file=sys.stderr)
    if s["untimed"]:
        print(f"not timed: {', '.join(s['untimed'])}", file=sys.stderr)
    return 0


def _cmd_plot_series(args: argparse.Namespace) -> int:
    import pandas as pd

    from madyn.plots import plot_first_last, plot_series

    series = pd.read_parquet(args.series)
    plot_series(series, args.out_series)
    plot_first_last(series, args.out_first_last)
    return 0


def _json_arg(text: str | None) -> dict:
    return json.loads(text) if text else {}


def _cmd_config_json(args: argparse.Namespace) -> int:
    from madyn.extract import model_config
    from madyn.io import write_json

    write_json(args.out, model_config(args.source, args.revision))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from madyn.settings import FitSettings
    from madyn.stages import fit

    table = fit.run(args.series, args.params_dir, args.out,
                    FitSettings.from_dict(_json_arg(args.settings_json)))
    print(f"fit table: {len(table)} rows -> {args.out}", file=sys.stderr)
    return 0


def _cmd_plot_fit(args: argparse.Namespace) -> int:
    from madyn.stages import fit

    fit.plot(args.series, args.fits, args.out_examples, args.out_quality)
    return 0


def _cmd_fit_summary(args: argparse.Namespace) -> int:
    from madyn.stages import fit

    summary = fit.summarise(args.fits, args.out_table, args.out)
    for m, q in summary["per_model"].items():
        r = q.get("ratio", {})
        print(f"{m:14s} ratio: mean best R^2 {r.get('best_emlog_r2_mean', float('nan')):.4f}, "
              f"winners {r.get('winners', {})}", file=sys.stderr)
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from madyn.settings import PredictSettings
    from madyn.stages import features

    configs = dict(c.split("=", 1) for c in args.config)
    s = PredictSettings(parametrisation=args.parametrisation, quantity=args.quantity)
    t = features.run(args.fits, configs, args.out, args.out_csv, s)
    print(f"feature table: {len(t)} rows ({int(t['usable'].sum())} usable) -> {args.out}",
          file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from madyn.settings import PredictSettings
    from madyn.stages import predict

    m = predict.evaluate(args.features, args.series,
                         PredictSettings.from_dict(_json_arg(args.settings_json)), args.out,
                         args.out_dir)
    lomo = m.get("lomo", {}).get("mean_r2", {})
    print("LOMO mean R^2 per model type: "
          + ", ".join(f"{k} {v:.3f}" for k, v in lomo.items() if v is not None),
          file=sys.stderr)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from madyn import config
    from madyn.settings import PredictSettings
    from madyn.stages import predict
    from madyn.stages.features import table_path

    try:
        if args.settings_json:
            if not args.features:
                raise predict.InputError("--features is required with --settings-json")
            try:
                settings = PredictSettings.from_dict(json.loads(args.settings_json))
            except (TypeError, ValueError) as e:
                raise predict.InputError(f"--settings-json: {e}") from None
            features = args.features
        else:
            cfg = config.load(args.params)
            settings = PredictSettings.from_dict(config.predict_settings(cfg))
            features = args.features or table_path(f"results/{cfg['suite']}",
                                                   settings.parametrisation)
        shape = (args.layers, args.width, args.heads)
        if args.config:
            arch = predict.load_config(args.config)
        elif any(v is not None for v in shape):
            if any(v is None for v in shape):
                raise predict.InputError("give all of --layers, --width and --heads")
            arch = predict.config_from_shape(*shape, args.ff_mult, args.rotary_pct,
                                             args.vocab_size)
        else:
            raise predict.InputError("give --config config.json, or --layers, --width and "
                                     "--heads")
        steps = predict.parse_steps(args.steps) if args.steps else None
        if not Path(features).exists():
            raise predict.InputError(f"no feature table at {features}: run the workflow "
                                     "first (snakemake --cores N), or pass --features")
    except predict.InputError as e:
        print(f"madyn predict: {e}", file=sys.stderr)
        return 2
    summary = predict.forecast(features, arch, steps, settings, args.out)
    for line in predict.summary_lines(summary):
        print(line, file=sys.stderr)
    print(f"-> {args.out}/curves.csv, summary.json, prediction.png", file=sys.stderr)
    return 0


def _cmd_report_figures(args: argparse.Namespace) -> int:
    from madyn.stages import report

    configs = dict(x.split("=", 1) for x in args.config)
    layers = report.figures(args.series, configs, args.manifests, args.out_dir)
    print(f"report: {layers['model'].nunique()} models -> {args.out_dir}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from madyn.features import MAX_LAYERS, MAX_WIDTH, MIN_WIDTH
    from madyn.settings import schema_default, schema_enum

    p = argparse.ArgumentParser(
        prog="madyn",
        description="Massive-activation dynamics: measure how massive activations emerge "
        "while a transformer trains, fit each layer's trajectory, predict it from the "
        "architecture. The full workflow runs with `snakemake --cores N`; these "
        "subcommands are its steps.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate a params file and summarise the active suite")
    c.add_argument("params", nargs="?", default="params.yaml")
    c.set_defaults(func=_cmd_check)

    c = sub.add_parser("corpus", help="build the offline corpus, its manifest and tokenizer",
                       description="Collect Python standard-library sources, train a "
                       "byte-level BPE tokenizer, and write train/heldout token files.")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--max-mb", type=float, default=12.0, help="corpus size in MB")
    c.add_argument("--heldout-fraction", type=float, default=0.05)
    c.add_argument("--vocab-size", type=int, default=512)
    c.add_argument("--root", default=None, help="source tree (default: this Python's stdlib)")
    c.set_defaults(func=_cmd_corpus)

    c = sub.add_parser("train", help="train one embedded model, saving HF checkpoints",
                       description="Train a GPT-NeoX model from scratch; checkpoints go to "
                       "OUT/step{N}/ on a Pythia-like log-spaced schedule, then "
                       "OUT/manifest.json is written.")
    c.add_argument("model", nargs="?", help="model name in the active suite of --params")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--spec-json", help="architecture as JSON (instead of model/--params)")
    c.add_argument("--train-json", help="training recipe as JSON (with --spec-json)")
    c.add_argument("--corpus", required=True, help="directory written by `madyn corpus`")
    c.add_argument("--out", required=True, help="checkpoint directory")
    c.add_argument("--threads", type=int, default=1, help="torch threads")
    c.add_argument("--timing-out", help="also write the job's wall-clock timing (JSON) here")
    c.set_defaults(func=_cmd_train)

    c = sub.add_parser("eval-tokens", help="write the fixed evaluation batch for a tokenizer",
                       description="Cut N sequences of T tokens from the held-out corpus "
                       "text (seeded), tokenized with TOKENIZER; writes an N x T .npy.")
    c.add_argument("--corpus-manifest", required=True)
    c.add_argument("--tokenizer", required=True, help="local tokenizer dir or hub repo id")
    c.add_argument("--revision", default=None)
    c.add_argument("--n-seqs", type=int, default=10)
    c.add_argument("--seq-len", type=int, default=128)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True)
    c.set_defaults(func=_cmd_eval_tokens)

    c = sub.add_parser("extract", help="measure one checkpoint's activation statistics",
                       description="Load CHECKPOINT (a local Hugging Face directory, or a "
                       "hub repo id with --revision, e.g. EleutherAI/pythia-160m --revision "
                       "step1000; safetensors only, no remote code), run the evaluation "
                       "tokens through it and write one row per (sequence, layer) with "
                       "top1/top2/top3/median of |h|, kurtosis, max-median ratio, cosine "
                       "similarity and MLP sparsity (Parquet, with metadata).")
    c.add_argument("checkpoint")
    c.add_argument("--revision", default=None, help="hub revision, e.g. step1000")
    c.add_argument("--tokens", required=True, help=".npy file, N x T token ids")
    c.add_argument("--out", required=True, help="output .parquet")
    c.add_argument("--model", default=None, help="model name recorded in the metadata")
    c.add_argument("--step", type=int, default=None, help="training step recorded")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    c.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:0")
    c.add_argument("--batch-size", type=int, default=10, help="sequences per forward pass")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    c.add_argument("--progress", action="store_true", help="show a progress bar")
    c.add_argument("--delete-download", action="store_true",
                   help="remove this hub revision from the local cache once measured")
    c.set_defaults(func=_cmd_extract)

    c = sub.add_parser("series", help="per-model series table and integrity report",
                       description="Combine a model's per-checkpoint tables (or a folder in "
                       "the study's released layout) into a step x layer x statistic table "
                       "with mean/std/sem over sequences; flag repeated weights.")
    c.add_argument("--model", required=True)
    c.add_argument("--stats", nargs="*", default=[], help="per-checkpoint .parquet files")
    c.add_argument("--released", default=None, help="read {model}/stats/exp2_* from here")
    c.add_argument("--out", required=True, help="series .parquet")
    c.add_argument("--integrity", required=True, help="integrity report .json")
    c.add_argument("--export", default=None, help="also write the released layout here")
    c.set_defaults(func=_cmd_series)

    c = sub.add_parser("train-summary", help="how long the suite's training took",
                       description="Reads the training jobs' timing files and writes (and prints) "
                       "the training wall time: the time during which at least one "
                       "training job ran, and the sum over jobs.")
    c.add_argument("timings", nargs="+",
                   help="timing/<model>.json files (madyn train --timing-out)")
    c.add_argument("--out", required=True)
    c.add_argument("--budget-min", type=float, default=None,
                   help="flag the wall time against this budget (minutes)")
    c.set_defaults(func=_cmd_train_summary)

    c = sub.add_parser("growth", help="growth of top1/median per model and layer",
                       description="Ratio at the last checkpoint / at the first, per layer; "
                       "writes JSON (a DVC metric) and prints a line per model.")
    c.add_argument("series", nargs="+", help="series .parquet files (one per model)")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_cmd_growth)

    c = sub.add_parser("plot-series", help="figures of one model's series")
    c.add_argument("--series", required=True)
    c.add_argument("--out-series", required=True)
    c.add_argument("--out-first-last", required=True)
    c.set_defaults(func=_cmd_plot_series)

    c = sub.add_parser("report-figures", help="cross-model figures and tables")
    c.add_argument("--series", nargs="+", required=True)
    c.add_argument("--config", nargs="+", required=True, metavar="MODEL=CONFIG_JSON")
    c.add_argument("--manifests", nargs="*", default=[], help="training manifests (loss)")
    c.add_argument("--out-dir", required=True)
    c.set_defaults(func=_cmd_report_figures)

    c = sub.add_parser("config-json", help="a model's config.json (local checkpoint or hub)")
    c.add_argument("source", help="checkpoint folder or hub repo id")
    c.add_argument("--revision", help="hub revision (default main)")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_cmd_config_json)

    c = sub.add_parser("fit", help="fit every hypothesis to one model's per-layer series",
                       description="Fit each layer's ratio/top1/median series with every "
                       "hypothesis (trust-region least squares, grid starts), select by AICc. "
                       "Writes the released layout params/layer_fit_params_{quantity}.json "
                       "and a tidy table.")
    c.add_argument("--series", required=True, help="the model's series Parquet")
    c.add_argument("--params-dir", required=True, help="folder for layer_fit_params_*.json")
    c.add_argument("--out", required=True, help="tidy fit table (Parquet)")
    c.add_argument("--settings-json", help="FitSettings as JSON (params.yaml: fit)")
    c.set_defaults(func=_cmd_fit)

    c = sub.add_parser("plot-fit", help="example fits and fit quality figures of one model")
    c.add_argument("--series", required=True)
    c.add_argument("--fits", required=True)
    c.add_argument("--out-examples", required=True)
    c.add_argument("--out-quality", required=True)
    c.set_defaults(func=_cmd_plot_fit)

    c = sub.add_parser("fit-summary", help="one tidy fit table over all models + metrics")
    c.add_argument("fits", nargs="+", help="per-model fit tables")
    c.add_argument("--out-table", required=True)
    c.add_argument("--out", required=True, help="metrics JSON")
    c.set_defaults(func=_cmd_fit_summary)

    c = sub.add_parser("features", help="the consolidated (model, layer) feature table")
    c.add_argument("--fits", nargs="+", required=True, help="fit tables (Parquet)")
    c.add_argument("--config", nargs="+", required=True, metavar="MODEL=CONFIG_JSON")
    c.add_argument("--parametrisation", default=schema_default("features.parametrisation"),
                   choices=schema_enum("features.parametrisation"))
    c.add_argument("--quantity", default=schema_default("features.quantity"),
                   choices=schema_enum("features.quantity"))
    c.add_argument("--out", required=True)
    c.add_argument("--out-csv", required=True)
    c.set_defaults(func=_cmd_features)

    c = sub.add_parser("evaluate", help="train and evaluate the predictors (study protocol, "
                       "leave-one-model-out, curve space)")
    c.add_argument("--features", required=True)
    c.add_argument("--series", nargs="*", default=[], help="observed series (curve space)")
    c.add_argument("--settings-json", help="PredictSettings as JSON (params.yaml: predict)")
    c.add_argument("--out", required=True, help="metrics JSON")
    c.add_argument("--out-dir", required=True, help="predictions, OLS summary, figures")
    c.set_defaults(func=_cmd_evaluate)

    c = sub.add_parser(
        "predict", help="predict an architecture's per-layer massive-activation curves",
        description="Train the predictors on every fitted (model, layer) and predict the "
        "top1/median curve of each layer of a new architecture, with its peak step and final "
        "ratio and bootstrap intervals. Give a Hugging Face config.json of any decoder-only "
        "model, or --layers/--width/--heads for a Pythia-style one. Plausible shapes only: "
        f"layers 1-{MAX_LAYERS}, width {MIN_WIDTH}-{MAX_WIDTH}, heads 1-width dividing width "
        "(bad input: a one-line error, exit code 2, nothing written).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: madyn predict --config path/to/config.json --out results/mine")
    c.add_argument("--config", help="a Hugging Face config.json (its shape within the "
                   "bounds below)")
    c.add_argument("--layers", type=int, help=f"1-{MAX_LAYERS}")
    c.add_argument("--width", type=int, help=f"{MIN_WIDTH}-{MAX_WIDTH}, divisible by heads")
    c.add_argument("--heads", type=int, help="1-width, dividing width")
    c.add_argument("--ff-mult", type=int, help="1-64 (default 4)")
    c.add_argument("--rotary-pct", type=float, help="(0, 1] (default 0.25)")
    c.add_argument("--vocab-size", type=int, default=512)
    c.add_argument("--params", default="params.yaml", help="settings (default params.yaml)")
    c.add_argument("--settings-json", help="PredictSettings as JSON (instead of --params)")
    c.add_argument("--features", help="feature table (default: the active suite's; "
                   "required with --settings-json)")
    c.add_argument("--steps", help="comma-separated steps (default: log-spaced to the "
                   "training data's last step)")
    c.add_argument("--out", default="prediction", help="output folder (default prediction/)")
    c.set_defaults(func=_cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and not (args.model or args.spec_json):
        build_parser().error("train: give a MODEL name or --spec-json/--train-json")
    from madyn.config import ConfigError

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"madyn: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
