"""Measure: ``madyn extract`` (one checkpoint's activation statistics) and ``madyn
make-reference`` (a local suite's statistics committed as a released-layout reference).
The options of how checkpoints are measured are shared with the extraction steps."""

from __future__ import annotations

import argparse

from madyn.cli.common import add, positive_float, positive_int, say

GROUP = "measure"


def extract_settings(args: argparse.Namespace):
    """ExtractSettings from --settings-json and the options given over it."""
    from madyn.stages import extract

    return extract.settings_from_args(
        args.settings_json, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
        extreme_tokens=args.extreme_tokens,
        delete_downloads=getattr(args, "delete_download", None),
        max_memory_gb=getattr(args, "max_memory_gb", None))


def _cmd_extract(args: argparse.Namespace) -> int:
    from madyn.stages import extract

    extract.measure_one(args.checkpoint, args.tokens, args.out, model=args.model,
                        step=args.step, settings=extract_settings(args),
                        revision=args.revision, marker=args.marker,
                        allow_pickle=args.allow_pickle)
    return 0


def _cmd_make_reference(args: argparse.Namespace) -> int:
    from madyn.workflow import params_file, params_values
    from madyn.workflow.reference import make_reference

    cfg = params_file.load(args.params)
    if args.suite not in cfg["suites"]:
        raise SystemExit(f"madyn make-reference: --suite: no suite {args.suite!r} in "
                         f"{args.params}")
    results = args.results or f"{params_values.results_dir({**cfg, 'suite': args.suite})}"
    try:
        m = make_reference(results, args.out, args.suite, cfg["suites"][args.suite],
                           remake=f"snakemake --cores 2 --config suite={args.suite}")
    except ValueError as e:
        raise SystemExit(f"madyn make-reference: {e}") from None
    say(f"reference {args.out}: {len(m['models'])} models, {m['size_bytes'] / 1e6:.2f} MB, "
        f"trained in {m['training']['wall_minutes']} min wall")
    return 0


def measure_args(c: argparse.ArgumentParser) -> None:
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
    c.add_argument("--batch-size", type=positive_int, default=None,
                   help="sequences per forward pass (>= 1); "
                   f"default: {schema_default('$defs.extract.batch_size')}")
    c.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    c.add_argument("--no-extreme-tokens", dest="extreme_tokens", action="store_false",
                   default=None,
                   help="skip the attention-sink metric (sink_mass NaN) and run the model's "
                   "default attention instead of eager")
    c.add_argument("--max-memory-gb", type=positive_float, default=None,
                   help="memory (GB) weights at --dtype and activations may take: a "
                   "checkpoint folder that would not fit whole is measured one decoder "
                   "layer at a time (the same statistics); default: no budget, always whole")


def register(sub) -> list[tuple[str, str]]:
    """Add ``extract`` and ``make-reference``; their (name, one-line help)."""
    c = add(sub, "extract", _cmd_extract, "measure one checkpoint's activation statistics",
            "Load CHECKPOINT (a local Hugging Face directory of a decoder-only causal LM, or "
            "a hub repo id with --revision, e.g. EleutherAI/pythia-160m --revision "
            "step1000; safetensors only, no remote code), run the evaluation tokens through "
            "it and write one row per (sequence, layer) with top1/top2/top3/median of |h|, "
            "kurtosis, max-median ratio, cosine similarity and MLP sparsity (Parquet, with "
            "metadata). A checkpoint whose weights miss a tensor is refused.",
            example="madyn extract runs/mine/checkpoint-500 --tokens tokens.npy "
            "--out stats/step500.parquet")
    c.add_argument("checkpoint", nargs="?")
    c.add_argument("--revision", default=None, help="hub revision, e.g. step1000")
    c.add_argument("--marker", help="a download marker (madyn step download) instead of "
                   "CHECKPOINT")
    c.add_argument("--out", required=True, help="output .parquet")
    c.add_argument("--step", type=int, default=None, help="training step recorded")
    c.add_argument("--delete-download", action="store_true", default=None,
                   help="remove this hub revision from the local cache once measured")
    c.add_argument("--allow-pickle", action="store_true",
                   help="a local checkpoint holding only PyTorch pickles is loaded with "
                   "torch.load(weights_only=True) (never a full unpickling)")
    measure_args(c)

    c = add(sub, "make-reference", _cmd_make_reference,
            "commit a local suite's statistics as a released-layout reference",
            "Copies results/<suite>/released (exp2 files, config.json, extremes.csv) to OUT "
            "with a manifest (recipe, corpus, versions, hardware, training minutes); a "
            "`released` suite over OUT reads it back without training.",
            example="madyn make-reference --suite firsttoken --out "
            "data/reference/firsttoken")
    c.add_argument("--suite", required=True, help="the local suite (a key of suites)")
    c.add_argument("--out", required=True, help="e.g. data/reference/<suite>")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--results", default=None, help="default: results/<suite>")
    return [("extract", "measure one checkpoint's activation statistics"),
            ("make-reference", "commit a local suite's statistics as a reference")]
