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
        spec, train = config.model_spec(suite, args.model), config.train_spec(suite)
    t0 = time.monotonic()
    m = train_model(spec, train, args.corpus, args.out, threads=args.threads)
    print(f"[{spec.name}] trained {train.steps} steps in {time.monotonic() - t0:.0f}s, "
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


def _cmd_plot_series(args: argparse.Namespace) -> int:
    import pandas as pd

    from madyn.plots import plot_first_last, plot_series

    series = pd.read_parquet(args.series)
    plot_series(series, args.out_series)
    plot_first_last(series, args.out_first_last)
    return 0


def build_parser() -> argparse.ArgumentParser:
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
