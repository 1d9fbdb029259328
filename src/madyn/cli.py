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
    print(f"{args.params}: valid. suite={cfg['suite']} ({suite['source']}), "
          f"{len(suite['models'])} models, {len(config.steps(suite))} checkpoints each")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and not (args.model or args.spec_json):
        build_parser().error("train: give a MODEL name or --spec-json/--train-json")
    from madyn.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"madyn: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
