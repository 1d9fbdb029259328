"""Workflow steps of the suite phase (``madyn step ...``, called by Snakemake and DVC):
the corpus, training and the DVC stages' outs."""

from __future__ import annotations

import argparse
from pathlib import Path

from madyn.cli.common import add, positive_int, say


def _cmd_corpus(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    suite.corpus(args.out, args.max_mb, args.heldout_fraction, args.vocab_size, args.root)
    return 0


def _cmd_synthetic_corpus(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    suite.synthetic_corpus(args.out, args.spec_json)
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
    from madyn.workflow.dvc_stages import stale_trained_models

    for rel in stale_trained_models(Path.cwd(), args.params):
        say(f"madyn step retrain-stale: {rel} was trained with another recipe: removed, so "
             "that Snakemake retrains it")
    return 0


def _cmd_dvc_outs(args: argparse.Namespace) -> int:
    from madyn.workflow.dvc_stages import ensure_stage_outs

    for rel in ensure_stage_outs(Path.cwd(), args.stage, args.params):
        say(f"madyn step dvc-outs: made {rel}")
    return 0


def register(sub) -> None:
    """Add the suite steps to the ``madyn step`` group ``sub``."""
    c = add(sub, "corpus", _cmd_corpus, "build the offline corpus, its manifest and tokenizer",
             "Collect Python standard-library sources, train a byte-level BPE tokenizer, and "
             "write train/heldout token files (the values are a suite's `corpus` in "
             "params.yaml).")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--max-mb", type=float, required=True, help="corpus size in MB")
    c.add_argument("--heldout-fraction", type=float, required=True)
    c.add_argument("--vocab-size", type=int, required=True)
    c.add_argument("--root", default=None, help="source tree (default: this Python's stdlib)")

    c = add(sub, "synthetic-corpus", _cmd_synthetic_corpus,
             "write a synthetic corpus's manifest and word-level tokenizer",
             "Bigram-Backcopy or a plain bigram chain (madyn.train.synthetic): the parameters (a "
             "suite's `corpus` in params.yaml, as JSON) go into manifest.json; training "
             "batches and the evaluation batch are drawn from them.")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--spec-json", required=True, help="the synthetic corpus's parameters")

    c = add(sub, "heldout-manifest", _cmd_heldout_manifest,
             "the held-out corpus file list (hub suites)")
    c.add_argument("--out", required=True)
    c.add_argument("--max-mb", type=float, required=True)
    c.add_argument("--heldout-fraction", type=float, required=True)

    c = add(sub, "train", _cmd_train, "train one embedded model, saving HF checkpoints",
             "Train a GPT-NeoX model from scratch; checkpoints go to OUT/step{N}/ on a "
             "Pythia-like log-spaced schedule, then OUT/manifest.json is written.")
    c.add_argument("model", nargs="?", help="model name in the active suite of --params")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--spec-json", help="architecture as JSON (instead of model/--params)")
    c.add_argument("--train-json", help="training recipe as JSON (with --spec-json)")
    c.add_argument("--corpus", required=True, help="directory written by `madyn step corpus`")
    c.add_argument("--out", required=True, help="checkpoint directory")
    c.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    c.add_argument("--timing-out", help="also write the job's wall-clock timing (JSON) here")

    c = add(sub, "train-summary", _cmd_train_summary, "how long the suite's training took",
             "Reads the training jobs' timing files and writes (and prints) the training "
             "wall time: the time during which at least one training job ran, and the sum "
             "over jobs.")
    c.add_argument("timings", nargs="*", help="timing/<model>.json files (madyn step train "
                   "--timing-out); none for a suite that trains nothing")
    c.add_argument("--out", required=True)
    c.add_argument("--budget-min", type=float, default=None,
                   help="flag the wall time against this budget (minutes)")

    c = add(sub, "retrain-stale", _cmd_retrain_stale,
             "before the DVC suite stage: mark models trained with another recipe for "
             "retraining",
             "Remove the training manifest of every model of the active suite whose recorded "
             "recipe differs from params.yaml's, so that Snakemake retrains it even without "
             "its own metadata (a queued DVC experiment, a fresh clone).")
    c.add_argument("--params", default="params.yaml")

    c = add(sub, "dvc-outs", _cmd_dvc_outs, "make a DVC stage's outs exist for any source",
             "Run by the DVC suite and extract stages after their Snakemake target: makes "
             "every `outs` folder of the stage exist (empty when the active suite's source "
             "has nothing for it) and writes a released suite's results/<suite>/models/"
             "released_manifest.json. The DVC source stage: links results/<suite>/source to "
             "a released suite's folder (a dependency, never an output).")
    c.add_argument("stage", help="a stage of dvc.yaml (source, suite, extract)")
    c.add_argument("--params", default="params.yaml")
