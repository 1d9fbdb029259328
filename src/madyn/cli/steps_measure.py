"""Workflow steps of the extract phase (``madyn step ...``, called by Snakemake): the
evaluation batch, measuring many checkpoints, hub downloads, series and growth."""

from __future__ import annotations

import argparse

from madyn.cli.common import add, outs, positive_int
from madyn.cli.measure import extract_settings, measure_args


def _cmd_eval_tokens(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.eval_tokens(args.corpus_manifest, args.tokenizer, args.out, n_seqs=args.n_seqs,
                        seq_len=args.seq_len, seed=args.seed, revision=args.revision,
                        bos=args.bos)
    return 0


def _cmd_extract_model(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    cks = extract.trained_checkpoints(args.model_dir, args.steps, args.outs)
    extract.measure(cks, args.tokens, args.model, extract_settings(args))
    return 0


def _cmd_extract_run(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    cks = extract.run_checkpoints(args.checkpoints, args.steps, args.outs,
                                  args.allow_pickle, skip_bad=True)
    extract.measure(cks, args.tokens, args.model, extract_settings(args), skip_bad=True)
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


def register(sub) -> None:
    """Add the extract steps to the ``madyn step`` group ``sub``."""
    c = add(sub, "eval-tokens", _cmd_eval_tokens,
             "write the fixed evaluation batch for a tokenizer",
             "Cut N sequences of T tokens from the held-out corpus text (seeded), tokenized "
             "with TOKENIZER; writes an N x T .npy.")
    c.add_argument("--corpus-manifest", required=True)
    c.add_argument("--tokenizer", required=True, help="local tokenizer dir or hub repo id")
    c.add_argument("--no-bos", dest="bos", action="store_false", default=None,
                   help="synthetic corpora: sequences without the BOS token")
    c.add_argument("--bos", dest="bos", action="store_true",
                   help="text corpora: position 0 of each sequence is the end-of-text token")
    c.add_argument("--revision", default=None)
    c.add_argument("--n-seqs", type=positive_int, required=True)
    c.add_argument("--seq-len", type=positive_int, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--out", required=True)

    c = add(sub, "extract-model", _cmd_extract_model,
             "measure many checkpoints of one trained model in one process",
             "Measure MODEL_DIR/step{N} for every --steps N into the matching --outs file, "
             "skipping tables already measured from the same weights and tokens; each weight "
             "file is checked against the sha256 of MODEL_DIR/manifest.json first.")
    c.add_argument("model_dir")
    c.add_argument("--steps", type=int, nargs="+", required=True)
    c.add_argument("--outs", nargs="+", required=True, help="one .parquet per step")
    measure_args(c)

    c = add(sub, "extract-run", _cmd_extract_run,
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
    measure_args(c)

    c = add(sub, "download", _cmd_download, "download one hub revision (weights, config)",
             "Download REPO at --revision into the hub cache (safetensors and JSON only) and "
             "write a marker with the snapshot folder and the weights' sha256.")
    c.add_argument("repo")
    c.add_argument("--revision", required=True)
    c.add_argument("--out", required=True, help="marker .json")

    c = add(sub, "series", _cmd_series, "per-model series table and integrity report",
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

    c = add(sub, "growth", _cmd_growth, "growth of top1/median per model and layer",
             "Ratio at the last checkpoint / at the first, per layer; writes JSON (a DVC "
             "metric) and prints a line per model.")
    c.add_argument("series", nargs="+", help="series .parquet files (one per model)")
    c.add_argument("--out", required=True)

    c = add(sub, "plot-series", _cmd_plot_series, "figures of one model's series")
    outs(c, "--series", "--out-series", "--out-first-last")
