"""The ``madyn`` command line: one subcommand per phase, each a thin call into the package.

The workflow (Snakefile) calls these; they are also usable by hand, e.g.
``madyn check params.yaml`` or ``madyn train l2-w32-h2 --params params.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _json_arg(text: str | None) -> dict:
    return json.loads(text) if text else {}


def _pick(args: argparse.Namespace, *names: str) -> dict:
    """The parsed options ``names`` as keyword arguments."""
    return {n: getattr(args, n) for n in names}


def _model_map(items: list[str], flag: str) -> dict[str, str]:
    """MODEL=VALUE items of option ``flag`` -> {model: value}; ValueError naming a malformed
    or repeated item."""
    out: dict[str, str] = {}
    for item in items:
        model, sep, value = item.partition("=")
        if not sep or not model or not value:
            raise ValueError(f"{flag} {item!r}: expected MODEL=VALUE")
        if model in out:
            raise ValueError(f"{flag}: model {model!r} given twice")
        out[model] = value
    return out


def _say(line: str) -> None:
    print(line, file=sys.stderr)


# ----------------------------------------------------------------------------- phase 1: suite

def _cmd_check(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    print(suite.check(args.params))
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    suite.corpus(args.out, args.max_mb, args.heldout_fraction, args.vocab_size, args.root)
    return 0


def _cmd_synthetic_corpus(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    suite.synthetic_corpus(args.out, args.spec_json)
    return 0


def _cmd_make_reference(args: argparse.Namespace) -> int:
    from madyn import params_file
    from madyn.reference import make_reference

    cfg = params_file.load(args.params)
    if args.suite not in cfg["suites"]:
        raise SystemExit(f"madyn make-reference: --suite: no suite {args.suite!r} in "
                         f"{args.params}")
    results = args.results or f"{params_file.results_dir({**cfg, 'suite': args.suite})}"
    try:
        m = make_reference(results, args.out, args.suite, cfg["suites"][args.suite],
                           remake=f"snakemake --cores 2 --config suite={args.suite}")
    except ValueError as e:
        raise SystemExit(f"madyn make-reference: {e}") from None
    _say(f"reference {args.out}: {len(m['models'])} models, {m['size_bytes'] / 1e6:.2f} MB, "
         f"trained in {m['training']['wall_minutes']} min wall")
    return 0


def _cmd_heldout_manifest(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    suite.heldout_manifest(args.out, args.max_mb, args.heldout_fraction)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    spec, train = suite.train_specs(args.model, args.params, args.spec_json, args.train_json)
    suite.train(spec, train, args.corpus, args.out, args.threads, args.timing_out)
    return 0


def _cmd_train_summary(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    suite.train_summary(args.timings, args.out, args.budget_min)
    return 0


def _cmd_retrain_stale(args: argparse.Namespace) -> int:
    from madyn.dvc_stages import stale_trained_models

    for rel in stale_trained_models(Path.cwd(), args.params):
        _say(f"madyn retrain-stale: {rel} was trained with another recipe: removed, so "
             "that Snakemake retrains it")
    return 0


def _cmd_dvc_outs(args: argparse.Namespace) -> int:
    from madyn.dvc_stages import ensure_stage_outs

    for rel in ensure_stage_outs(Path.cwd(), args.stage, args.params):
        _say(f"madyn dvc-outs: made {rel}")
    return 0


# ----------------------------------------------------------------------------- phase 2: extract

def _cmd_eval_tokens(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.eval_tokens(args.corpus_manifest, args.tokenizer, args.out, n_seqs=args.n_seqs,
                        seq_len=args.seq_len, seed=args.seed, revision=args.revision,
                        bos=args.bos)
    return 0


def _extract_settings(args: argparse.Namespace):
    """ExtractSettings from --settings-json and the options given over it."""
    from madyn.stages import extract

    return extract.settings_from_args(
        args.settings_json, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
        extreme_tokens=args.extreme_tokens,
        delete_downloads=getattr(args, "delete_download", None))


def _cmd_extract(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.measure_one(args.checkpoint, args.tokens, args.out, model=args.model,
                        step=args.step, settings=_extract_settings(args),
                        revision=args.revision, marker=args.marker,
                        allow_pickle=args.allow_pickle)
    return 0


def _cmd_extract_model(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    cks = extract.trained_checkpoints(args.model_dir, args.steps, args.outs)
    extract.measure(cks, args.tokens, args.model, _extract_settings(args))
    return 0


def _cmd_extract_run(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    cks = extract.run_checkpoints(args.checkpoints, args.steps, args.outs,
                                  args.allow_pickle, skip_bad=True)
    extract.measure(cks, args.tokens, args.model, _extract_settings(args), skip_bad=True)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.download(args.repo, args.revision, args.out)
    return 0


def _cmd_series(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.series(args.model, args.out, args.integrity, stats=args.stats,
                   released_dir=args.released, export_dir=args.export,
                   export_config_from=args.export_config,
                   skipped_json=args.skipped_json)
    return 0


def _cmd_growth(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.growth(args.series, args.out)
    return 0


def _cmd_plot_series(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.plot_series(args.series, args.out_series, args.out_first_last)
    return 0


# ----------------------------------------------------------------------------- phase 3: fit

def _cmd_fit(args: argparse.Namespace) -> int:
    from madyn.settings import FitSettings
    from madyn.stages import fit

    table = fit.run(args.series, args.params_dir, args.out,
                    FitSettings.from_dict(_json_arg(args.settings_json)))
    _say(f"fit table: {len(table)} rows -> {args.out}")
    return 0


def _cmd_plot_fit(args: argparse.Namespace) -> int:
    from madyn.stages import fit

    fit.plot(args.series, args.fits, args.out_examples, args.out_quality)
    return 0


def _cmd_fit_summary(args: argparse.Namespace) -> int:
    from madyn.stages import fit

    for line in fit.summary_lines(fit.summarise(args.fits, args.out_table, args.out)):
        _say(line)
    return 0


# ----------------------------------------------------------------------------- phase 4: features

def _cmd_config_json(args: argparse.Namespace) -> int:
    from madyn.stages import features

    arch = json.loads(args.arch_json) if args.arch_json else None
    features.config_json(args.out, args.source, args.revision, arch,
                         _json_arg(args.design_json))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from madyn.settings import PredictSettings
    from madyn.stages import features

    configs = _model_map(args.config, "--config")
    s = PredictSettings(parametrisation=args.parametrisation, quantity=args.quantity)
    t = features.run(args.fits, configs, args.out, args.out_csv, s)
    _say(f"feature table: {len(t)} rows ({int(t['usable'].sum())} usable) -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- phase 5: predict

def _cmd_evaluate(args: argparse.Namespace) -> int:
    from madyn.settings import PredictSettings
    from madyn.stages import predict

    m = predict.evaluate(args.features, args.series,
                         PredictSettings.from_dict(_json_arg(args.settings_json)), args.out,
                         args.out_dir, workers=args.threads)
    lomo = m.get("lomo", {}).get("mean_r2", {})
    _say("LOMO mean R^2 per model type: "
         + ", ".join(f"{k} {v:.3f}" for k, v in lomo.items() if v is not None))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from madyn.stages import predict

    try:
        q = predict.query(**_pick(args, "params", "settings_json", "features", "config",
                                  "layers", "width", "heads", "ff_mult", "rotary_pct",
                                  "vocab_size", "family", "sequential", "optimizer", "lr",
                                  "eps", "steps"))
    except predict.InputError as e:
        _say(f"madyn predict: {e}")
        return 2
    summary = predict.predict(q.features, q.config, q.steps, q.settings, args.out)
    if summary.get("warning"):
        _say(f"madyn predict: warning: {summary['warning']}")
    if note := predict.design_note(q, summary):
        _say(f"madyn predict: note: {note}")
    for line in predict.summary_lines(summary):
        _say(line)
    _say(f"-> {args.out}/curves.csv, summary.json, prediction.png")
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from madyn.settings import FitSettings, ForecastSettings
    from madyn.stages import forecast

    s = ForecastSettings.from_dict(_json_arg(args.settings_json))
    fit = FitSettings.from_dict(_json_arg(args.fit_settings_json))
    if args.run:
        if args.last_step is None or not args.out_dir:
            raise ValueError("--run needs --last-step and --out-dir")
        forecast.forecast_run(args.series, args.run, args.last_step, args.out_dir, s, fit)
        _say(f"madyn forecast: {args.run} to step {args.last_step} -> {args.out_dir}")
        return 0
    if not (args.out_json and args.out_csv and args.out_png):
        raise ValueError("a backtest needs --out-json, --out-csv and --out-png")
    summary = forecast.backtest(args.series, args.out_json, args.out_csv, args.out_png, s,
                                fit, workers=args.threads, skip=args.skip)
    for line in forecast.backtest_lines(summary, s.quantities):
        _say(line)
    return 0


# ----------------------------------------------------------------------------- phase 6: report

def _cmd_report_figures(args: argparse.Namespace) -> int:
    from madyn.stages import report

    configs = _model_map(args.config, "--config")
    layers = report.figures(args.series, configs, args.manifests, args.out_dir)
    _say(f"report: {layers['model'].nunique()} models -> {args.out_dir}")
    return 0


def _cmd_headline(args: argparse.Namespace) -> int:
    from madyn.headline import count
    from madyn.stages import report

    metrics = report.headline(**_pick(args, "growth", "fit", "predict", "forecast",
                                      "interventions", "out"))
    _say(f"headline: {count(metrics)} metrics -> {args.out}")
    return 0


def _cmd_curves(args: argparse.Namespace) -> int:
    from madyn.stages import report

    table = report.curves(args.series, args.out)
    _say(f"curves: {table['curve'].nunique()} layer curves -> {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import subprocess

    from madyn import params_file
    from madyn.dvc_stages import compare_drop

    suite = params_file.load(args.params)["suite"]
    flags = [f"--{f.replace('_', '-')}" for f in ("only_changed", "csv", "md")
             if getattr(args, f)]
    return subprocess.call([_tool("dvc"), "exp", "show", "--drop", compare_drop(suite),
                            *flags])


def _tool(name: str) -> str:
    """A console script installed beside this Python (``.venv/bin/dvc`` when madyn runs
    from an inactive venv), else ``name`` as found on PATH."""
    import shutil

    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


def _cmd_effects(args: argparse.Namespace) -> int:
    from madyn.stages import effects

    out = effects.run(args.series, args.fits, _model_map(args.design, "--design"), args.base,
                      args.out_json, args.out_csv, args.out_png, args.n_boot, args.seed)
    _say(effects.summary_line(out, args.out_json))
    return 0


# ----------------------------------------------------------------------------- parsers

def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _add(sub, name: str, func, help: str, description: str | None = None, **kw):
    """Subcommand ``name`` running ``func``."""
    c = sub.add_parser(name, help=help, description=description, **kw)
    c.set_defaults(func=func)
    return c


def _outs(c, *flags: str) -> None:
    """Required output options ``flags`` (no help text)."""
    for flag in flags:
        c.add_argument(flag, required=True)


def _suite_parsers(sub) -> None:
    """Phase 1: check, corpus, heldout-manifest, train, train-summary, dvc-outs."""
    c = _add(sub, "check", _cmd_check, "validate a params file and summarise the active suite")
    c.add_argument("params", nargs="?", default="params.yaml")

    c = _add(sub, "corpus", _cmd_corpus, "build the offline corpus, its manifest and tokenizer",
             "Collect Python standard-library sources, train a byte-level BPE tokenizer, and "
             "write train/heldout token files (the values are a suite's `corpus` in "
             "params.yaml).")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--max-mb", type=float, required=True, help="corpus size in MB")
    c.add_argument("--heldout-fraction", type=float, required=True)
    c.add_argument("--vocab-size", type=int, required=True)
    c.add_argument("--root", default=None, help="source tree (default: this Python's stdlib)")

    c = _add(sub, "synthetic-corpus", _cmd_synthetic_corpus,
             "write a synthetic corpus's manifest and word-level tokenizer",
             "Bigram-Backcopy or a plain bigram chain (madyn.synthetic): the parameters (a "
             "suite's `corpus` in params.yaml, as JSON) go into manifest.json; training "
             "batches and the evaluation batch are drawn from them.")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--spec-json", required=True, help="the synthetic corpus's parameters")

    c = _add(sub, "make-reference", _cmd_make_reference,
             "commit a local suite's statistics as a released-layout reference",
             "Copies results/<suite>/released (exp2 files, config.json, extremes.csv) to OUT "
             "with a manifest (recipe, corpus, versions, hardware, training minutes); a "
             "`released` suite over OUT reads it back without training.")
    c.add_argument("--suite", required=True, help="the local suite (a key of suites)")
    c.add_argument("--out", required=True, help="e.g. data/reference/<suite>")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--results", default=None, help="default: results/<suite>")

    c = _add(sub, "heldout-manifest", _cmd_heldout_manifest,
             "the held-out corpus file list (hub suites)")
    c.add_argument("--out", required=True)
    c.add_argument("--max-mb", type=float, required=True)
    c.add_argument("--heldout-fraction", type=float, required=True)

    c = _add(sub, "train", _cmd_train, "train one embedded model, saving HF checkpoints",
             "Train a GPT-NeoX model from scratch; checkpoints go to OUT/step{N}/ on a "
             "Pythia-like log-spaced schedule, then OUT/manifest.json is written.")
    c.add_argument("model", nargs="?", help="model name in the active suite of --params")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--spec-json", help="architecture as JSON (instead of model/--params)")
    c.add_argument("--train-json", help="training recipe as JSON (with --spec-json)")
    c.add_argument("--corpus", required=True, help="directory written by `madyn corpus`")
    c.add_argument("--out", required=True, help="checkpoint directory")
    c.add_argument("--threads", type=_positive_int, default=1, help="torch threads")
    c.add_argument("--timing-out", help="also write the job's wall-clock timing (JSON) here")

    c = _add(sub, "train-summary", _cmd_train_summary, "how long the suite's training took",
             "Reads the training jobs' timing files and writes (and prints) the training "
             "wall time: the time during which at least one training job ran, and the sum "
             "over jobs.")
    c.add_argument("timings", nargs="*", help="timing/<model>.json files (madyn train "
                   "--timing-out); none for a suite that trains nothing")
    c.add_argument("--out", required=True)
    c.add_argument("--budget-min", type=float, default=None,
                   help="flag the wall time against this budget (minutes)")

    c = _add(sub, "retrain-stale", _cmd_retrain_stale,
             "before the DVC suite stage: mark models trained with another recipe for "
             "retraining",
             "Remove the training manifest of every model of the active suite whose recorded "
             "recipe differs from params.yaml's, so that Snakemake retrains it even without "
             "its own metadata (a queued DVC experiment, a fresh clone).")
    c.add_argument("--params", default="params.yaml")

    c = _add(sub, "dvc-outs", _cmd_dvc_outs, "make a DVC stage's outs exist for any source",
             "Run by the DVC suite and extract stages after their Snakemake target: makes "
             "every `outs` folder of the stage exist (empty when the active suite's source "
             "has nothing for it) and writes a released suite's results/<suite>/models/"
             "released_manifest.json. The DVC source stage: links results/<suite>/source to "
             "a released suite's folder (a dependency, never an output).")
    c.add_argument("stage", help="a stage of dvc.yaml (source, suite, extract)")
    c.add_argument("--params", default="params.yaml")


def _measure_args(c) -> None:
    """How checkpoints are measured (a suite's `extract` in params.yaml)."""
    from madyn.settings import schema_default, schema_enum

    c.add_argument("--tokens", required=True, help=".npy file, N x T token ids")
    c.add_argument("--model", default=None, help="model name recorded in the metadata")
    c.add_argument("--settings-json",
                   help="ExtractSettings as JSON (params.yaml: a suite's extract, less the "
                   "evaluation batch); the options below override it, the params schema's "
                   "defaults fill in the rest")
    c.add_argument("--dtype", default=None, choices=schema_enum("$defs.extract.dtype"),
                   help=f"default: {schema_default('$defs.extract.dtype')}")
    c.add_argument("--device", default=None, help="auto (CUDA when present), cpu, cuda:0; "
                   f"default: {schema_default('$defs.extract.device')}")
    c.add_argument("--batch-size", type=_positive_int, default=None,
                   help="sequences per forward pass (>= 1); "
                   f"default: {schema_default('$defs.extract.batch_size')}")
    c.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    c.add_argument("--no-extreme-tokens", dest="extreme_tokens", action="store_false",
                   default=None,
                   help="skip the attention-sink metric (sink_mass NaN) and run the model's "
                   "default attention instead of eager")


def _extract_parsers(sub) -> None:
    """Phase 2: eval-tokens, extract, extract-model, download, series, growth, plot-series."""
    c = _add(sub, "eval-tokens", _cmd_eval_tokens,
             "write the fixed evaluation batch for a tokenizer",
             "Cut N sequences of T tokens from the held-out corpus text (seeded), tokenized "
             "with TOKENIZER; writes an N x T .npy.")
    c.add_argument("--corpus-manifest", required=True)
    c.add_argument("--tokenizer", required=True, help="local tokenizer dir or hub repo id")
    c.add_argument("--no-bos", dest="bos", action="store_false", default=None,
                   help="synthetic corpora: sequences without the BOS token")
    c.add_argument("--revision", default=None)
    c.add_argument("--n-seqs", type=_positive_int, required=True)
    c.add_argument("--seq-len", type=_positive_int, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--out", required=True)

    c = _add(sub, "extract", _cmd_extract, "measure one checkpoint's activation statistics",
             "Load CHECKPOINT (a local Hugging Face directory of a decoder-only causal LM, or "
             "a hub repo id with --revision, e.g. EleutherAI/pythia-160m --revision "
             "step1000; safetensors only, no remote code), run the evaluation tokens through "
             "it and write one row per (sequence, layer) with top1/top2/top3/median of |h|, "
             "kurtosis, max-median ratio, cosine similarity and MLP sparsity (Parquet, with "
             "metadata). A checkpoint whose weights miss a tensor is refused.")
    c.add_argument("checkpoint", nargs="?")
    c.add_argument("--revision", default=None, help="hub revision, e.g. step1000")
    c.add_argument("--marker", help="a download marker (madyn download) instead of CHECKPOINT")
    c.add_argument("--out", required=True, help="output .parquet")
    c.add_argument("--step", type=int, default=None, help="training step recorded")
    c.add_argument("--delete-download", action="store_true", default=None,
                   help="remove this hub revision from the local cache once measured")
    c.add_argument("--allow-pickle", action="store_true",
                   help="a local checkpoint holding only PyTorch pickles is loaded with "
                   "torch.load(weights_only=True) (never a full unpickling)")
    _measure_args(c)

    c = _add(sub, "extract-model", _cmd_extract_model,
             "measure many checkpoints of one trained model in one process",
             "Measure MODEL_DIR/step{N} for every --steps N into the matching --outs file, "
             "skipping tables already measured from the same weights and tokens; each weight "
             "file is checked against the sha256 of MODEL_DIR/manifest.json first.")
    c.add_argument("model_dir")
    c.add_argument("--steps", type=int, nargs="+", required=True)
    c.add_argument("--outs", nargs="+", required=True, help="one .parquet per step")
    _measure_args(c)

    c = _add(sub, "extract-run", _cmd_extract_run,
             "measure the checkpoints of a run folder (source: run) in one process",
             "Measure each --checkpoints folder (a Hugging Face checkpoint a trainer wrote) "
             "at the matching --steps into the matching --outs file, skipping tables already "
             "measured from the same weights and tokens; each folder is checked first "
             "(safetensors headers, shards, config; pickles only with --allow-pickle, loaded "
             "with torch.load(weights_only=True)).")
    c.add_argument("--checkpoints", nargs="+", required=True)
    c.add_argument("--steps", type=int, nargs="+", required=True)
    c.add_argument("--outs", nargs="+", required=True, help="one .parquet per checkpoint")
    c.add_argument("--allow-pickle", action="store_true",
                   help="load checkpoints holding only PyTorch pickles (weights_only)")
    _measure_args(c)

    c = _add(sub, "download", _cmd_download, "download one hub revision (weights, config)",
             "Download REPO at --revision into the hub cache (safetensors and JSON only) and "
             "write a marker with the snapshot folder and the weights' sha256.")
    c.add_argument("repo")
    c.add_argument("--revision", required=True)
    c.add_argument("--out", required=True, help="marker .json")

    c = _add(sub, "series", _cmd_series, "per-model series table and integrity report",
             "Combine a model's per-checkpoint tables (or a folder in the study's released "
             "layout) into a step x layer x statistic table with mean/std/sem over sequences; "
             "flag repeated weights. Released files that do not parse are skipped, named and "
             "recorded.")
    c.add_argument("--model", required=True)
    c.add_argument("--stats", nargs="*", default=[], help="per-checkpoint .parquet files")
    c.add_argument("--released", default=None, help="read {model}/stats/exp2_* from here")
    c.add_argument("--out", required=True, help="series .parquet")
    c.add_argument("--integrity", required=True, help="integrity report .json")
    c.add_argument("--export", default=None, help="also write the released layout here")
    c.add_argument("--export-config", default=None,
                   help="with --export: the checkpoint folder (or hub download marker) whose "
                   "config.json is exported as {export}/{model}/config.json")
    c.add_argument("--skipped-json", default=None,
                   help="JSON {entry: reason} of checkpoints the run source skipped, recorded "
                   "in the integrity report")

    c = _add(sub, "growth", _cmd_growth, "growth of top1/median per model and layer",
             "Ratio at the last checkpoint / at the first, per layer; writes JSON (a DVC "
             "metric) and prints a line per model.")
    c.add_argument("series", nargs="+", help="series .parquet files (one per model)")
    c.add_argument("--out", required=True)

    c = _add(sub, "plot-series", _cmd_plot_series, "figures of one model's series")
    _outs(c, "--series", "--out-series", "--out-first-last")


def _fit_parsers(sub) -> None:
    """Phase 3: fit, plot-fit, fit-summary."""
    c = _add(sub, "fit", _cmd_fit, "fit every hypothesis to one model's per-layer series",
             "Fit each layer's ratio/top1/median series with every hypothesis (trust-region "
             "least squares, grid starts), select by AICc. Writes the released layout "
             "params/layer_fit_params_{quantity}.json and a tidy table.")
    c.add_argument("--series", required=True, help="the model's series Parquet")
    c.add_argument("--params-dir", required=True, help="folder for layer_fit_params_*.json")
    c.add_argument("--out", required=True, help="tidy fit table (Parquet)")
    c.add_argument("--settings-json", help="FitSettings as JSON (params.yaml: fit)")

    c = _add(sub, "plot-fit", _cmd_plot_fit,
             "example fits and fit quality figures of one model")
    _outs(c, "--series", "--fits", "--out-examples", "--out-quality")

    c = _add(sub, "fit-summary", _cmd_fit_summary,
             "one tidy fit table over all models + metrics")
    c.add_argument("fits", nargs="+", help="per-model fit tables")
    c.add_argument("--out-table", required=True)
    c.add_argument("--out", required=True, help="metrics JSON")


def _features_parsers(sub) -> None:
    """Phase 4: config-json, features."""
    from madyn.settings import schema_default, schema_enum

    c = _add(sub, "config-json", _cmd_config_json,
             "a model's config.json (local checkpoint or hub)")
    c.add_argument("source", nargs="?", help="checkpoint folder or hub repo id")
    c.add_argument("--arch-json", help="or a GPT-NeoX architecture as JSON: name, layers, "
                   "width, heads, vocab_size[, ff_mult, rotary_pct]")
    c.add_argument("--revision", help="hub revision (default main)")
    c.add_argument("--design-json", help="the model's design label and known recipe as JSON "
                   "(label, optimizer, lr, eps), kept under madyn_design; a madyn checkpoint's "
                   "own record of its recipe takes precedence")
    c.add_argument("--out", required=True)

    c = _add(sub, "features", _cmd_features, "the consolidated (model, layer) feature table")
    c.add_argument("--fits", nargs="+", required=True, help="fit tables (Parquet)")
    c.add_argument("--config", nargs="+", required=True, metavar="MODEL=CONFIG_JSON")
    for key in ("parametrisation", "quantity"):
        c.add_argument(f"--{key}", default=schema_default(f"features.{key}"),
                       choices=schema_enum(f"features.{key}"))
    _outs(c, "--out", "--out-csv")


def _predict_parsers(sub) -> None:
    """Phase 5: evaluate, predict, forecast."""
    from madyn.architecture import MAX_LAYERS, MAX_WIDTH, MIN_WIDTH

    c = _add(sub, "evaluate", _cmd_evaluate, "train and evaluate the predictors (study "
             "protocol, leave-one-model-out, curve space)")
    c.add_argument("--features", required=True)
    c.add_argument("--series", nargs="*", default=[], help="observed series (curve space)")
    c.add_argument("--settings-json", help="PredictSettings as JSON (params.yaml: predict)")
    c.add_argument("--out", required=True, help="metrics JSON")
    c.add_argument("--out-dir", required=True, help="predictions, OLS summary, figures")
    c.add_argument("--threads", type=_positive_int, default=1,
                   help="processes the held-out models (and designs) are spread over")

    c = _add(
        sub, "predict", _cmd_predict,
        "predict an architecture's per-layer massive-activation curves",
        "Train the predictors on every fitted (model, layer) and predict the top1/median "
        "curve of each layer of a new architecture, with its peak step and final ratio and "
        "bootstrap intervals. Give a Hugging Face config.json of any decoder-only model, or "
        "--layers/--width/--heads for a Pythia-style one. Plausible shapes only: layers "
        f"1-{MAX_LAYERS}, width {MIN_WIDTH}-{MAX_WIDTH}, heads 1-width dividing width (bad "
        "input: a one-line error, exit code 2, nothing written).",
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
    d = c.add_argument_group("design (used where the training models vary in it)")
    d.add_argument("--family", choices=["neox", "llama", "qwen3", "olmo2"],
                   help="block layout with --layers/--width/--heads (default neox)")
    d.add_argument("--sequential", action="store_true",
                   help="neox: sequential residual (default parallel, as Pythia)")
    d.add_argument("--optimizer", choices=["adamw", "sgd"], help="the training optimiser")
    d.add_argument("--lr", type=float, help="peak learning rate, in (0, 10]")
    d.add_argument("--eps", type=float, help="Adam epsilon, in (0, 1]")
    c.add_argument("--params", default="params.yaml", help="settings (default params.yaml)")
    c.add_argument("--settings-json", help="PredictSettings as JSON (instead of --params)")
    c.add_argument("--features", help="feature table (default: the active suite's; "
                   "required with --settings-json)")
    c.add_argument("--steps", help="comma-separated steps (default: log-spaced to the "
                   "training data's last step)")
    c.add_argument("--out", default="prediction", help="output folder (default prediction/)")

    c = _add(sub, "forecast", _cmd_forecast,
             "forecast a run from its first steps (or backtest a complete suite)",
             "The suite's other models at the same relative depth are the prior (a Gaussian "
             "over log curves), conditioned on the run's points so far. With --run: forecast "
             "that series to --last-step (curves.csv, summary.json, forecast.png in "
             "--out-dir). Without: truncate every model of --series at each fraction and "
             "forecast the rest, against three baselines (last value, the best AICc fit on "
             "the early points, the prior alone).")
    c.add_argument("--series", nargs="+", required=True, help="series Parquets: the prior's "
                   "models (and, without --run, the models backtested)")
    c.add_argument("--run", help="series Parquet of a run still training")
    c.add_argument("--last-step", type=int, help="the run's planned last step")
    c.add_argument("--out-dir", help="with --run: where the forecast goes")
    c.add_argument("--out-json", help="backtest metrics (JSON)")
    c.add_argument("--out-csv", help="backtest table (CSV)")
    c.add_argument("--out-png", help="backtest figure")
    c.add_argument("--settings-json", help="params.yaml's forecast section, as JSON")
    c.add_argument("--fit-settings-json", help="params.yaml's fit section (early-fit "
                   "baseline, asymptotes), as JSON")
    c.add_argument("--threads", type=_positive_int, default=1,
                   help="processes the backtest's models are spread over")
    c.add_argument("--skip", metavar="REASON", help="record that this suite has no backtest, "
                   "and why (the outs say so; nothing is forecast)")


def _report_parsers(sub) -> None:
    """Phase 6: report-figures, effects."""
    c = _add(sub, "report-figures", _cmd_report_figures, "cross-model figures and tables")
    c.add_argument("--series", nargs="+", required=True)
    c.add_argument("--config", nargs="+", required=True, metavar="MODEL=CONFIG_JSON")
    c.add_argument("--manifests", nargs="*", default=[], help="training manifests (loss)")
    c.add_argument("--out-dir", required=True)

    c = _add(sub, "headline", _cmd_headline, "the headline metrics (about 30 numbers)",
             "Read the detailed summaries (metrics/growth.json, fit.json, predict.json, "
             "forecast.json, interventions.json) and write the few numbers compared between "
             "experiments (DVC's metrics): growth, fit R², curve-space prediction, forecast.")
    _outs(c, "--growth", "--fit", "--predict", "--forecast", "--interventions", "--out")

    c = _add(sub, "compare", _cmd_compare, "dvc exp show: headline metrics and the params "
             "a researcher changes",
             "Run `dvc exp show` without the dependency columns (code and data hashes) and "
             "without the params of the suites that are not active (DVC shows the whole "
             "params.yaml): the headline metrics and the active suite's and phases' params.")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--only-changed", action="store_true",
                   help="only the columns that differ between the rows (dvc's option)")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV (dvc's option)")
    fmt.add_argument("--md", action="store_true", help="Markdown table (dvc's option)")

    c = _add(sub, "curves", _cmd_curves, "the per-layer top1/median curves as a tidy CSV",
             "One row per (model, layer, step) of the measured top1/median (flagged "
             "checkpoints left out): the data `dvc plots` draws and `dvc plots diff` compares.")
    c.add_argument("--series", nargs="+", required=True, help="series .parquet files")
    c.add_argument("--out", required=True)

    c = _add(sub, "effects", _cmd_effects, "each design against the base design (bootstrap "
             "over seeds) and the kurtosis-cos_sim association",
             "Reduce every model to final_ratio, asymptote, peak_step (winning ratio fit) and "
             "final kurtosis, sink mass, cos_sim (series), each the median over layers; "
             "compare each design's seed mean with the base design's (difference and ratio, "
             "percentile bootstrap over seeds). Writes JSON, CSV and a forest figure. "
             "Without --base only the association is computed.")
    c.add_argument("--series", nargs="+", required=True, help="series .parquet (model = stem)")
    c.add_argument("--fits", nargs="*", default=[], help="fit tables .parquet (model = stem)")
    c.add_argument("--design", nargs="*", default=[], metavar="MODEL=LABEL",
                   help="design label of every model")
    c.add_argument("--base", default=None, help="label of the base design")
    _outs(c, "--out-json", "--out-csv")
    c.add_argument("--out-png", default=None)
    c.add_argument("--n-boot", type=_positive_int, default=10000)
    c.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """The ``madyn`` parser: one subcommand per workflow step, added phase by phase."""
    p = argparse.ArgumentParser(
        prog="madyn",
        description="Massive-activation dynamics: measure how massive activations emerge "
        "while a transformer trains, fit each layer's trajectory, predict it from the "
        "architecture. The full workflow runs with `snakemake --cores N`; these "
        "subcommands are its steps.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for phase in (_suite_parsers, _extract_parsers, _fit_parsers, _features_parsers,
                  _predict_parsers, _report_parsers):
        phase(sub)
    return p


# single-file outputs of each subcommand (argparse dests): an existing folder there is
# refused before any work (io.atomic_path refuses it again when writing)
FILE_OUTS = {
    "heldout-manifest": ("out",), "train": ("timing_out",), "train-summary": ("out",),
    "eval-tokens": ("out",), "extract": ("out",), "extract-model": ("outs",),
    "extract-run": ("outs",),
    "download": ("out",), "series": ("out", "integrity"), "growth": ("out",),
    "plot-series": ("out_series", "out_first_last"), "config-json": ("out",),
    "fit": ("out",), "plot-fit": ("out_examples", "out_quality"),
    "fit-summary": ("out_table", "out"), "features": ("out", "out_csv"),
    "evaluate": ("out",), "effects": ("out_json", "out_csv", "out_png"),
    "forecast": ("out_json", "out_csv", "out_png"),
}


def check_file_outs(args: argparse.Namespace) -> None:
    """Refuse a single-file output that is an existing folder, or one file given twice
    (OutputError naming the option and the path)."""
    from madyn.io import OutputError, refuse_folder

    seen: dict[Path, str] = {}
    for dest in FILE_OUTS.get(args.command, ()):
        flag = "--" + dest.replace("_", "-")
        value = getattr(args, dest, None)
        for path in value if isinstance(value, list) else [value] if value else []:
            try:
                refuse_folder(path)
            except OutputError as e:
                raise OutputError(f"{flag} {e}") from None
            key = Path(os.path.abspath(path))
            if key in seen:
                raise OutputError(f"{flag} {path}: given twice (also as {seen[key]}); "
                                  "each output needs its own file")
            seen[key] = flag


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and not (args.model or args.spec_json):
        build_parser().error("train: give a MODEL name or --spec-json/--train-json")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        check_file_outs(args)
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input: one line naming it, exit 2
        if os.environ.get("MADYN_DEBUG"):
            raise
        print(f"madyn {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
