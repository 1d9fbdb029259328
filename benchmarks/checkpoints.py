"""Per-checkpoint cost of measuring a trained model's checkpoints, three ways, side by side.

  bare        load each checkpoint and run the body's forward pass, no statistics: the floor;
  in-process  madyn's way for local suites (`madyn step extract-model`): one process measures
              every checkpoint (load, weights check, statistics, atomic Parquet write);
  per-process the way before: one `madyn extract` process per checkpoint (Python, torch
              and transformers start-up paid each time).

Run after a suite exists, e.g. `snakemake --cores 2 --config suite=smoke`:
    python benchmarks/checkpoints.py results/smoke/models/s3-w48-h4 --tokens \
        results/smoke/eval/tokens_corpus.npy [--per-process 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def bare(model_dir: Path, steps: list[int], tokens: np.ndarray) -> float:
    import torch

    from madyn.measure.checkpoints import load_model

    t0 = time.perf_counter()
    for s in steps:
        model = load_model(str(model_dir / f"step{s}"), device="cpu")
        with torch.inference_mode():
            model.base_model(input_ids=torch.as_tensor(tokens), use_cache=False)
    return time.perf_counter() - t0


def in_process(model_dir: Path, steps: list[int], tokens_path: Path, out: Path) -> float:
    from madyn.stages.extract import measure, trained_checkpoints

    cks = trained_checkpoints(str(model_dir), steps, [str(out / f"s{s}.parquet")
                                                      for s in steps])
    t0 = time.perf_counter()
    measure(cks, str(tokens_path), model_dir.name, {"device": "cpu"}, progress=lambda _: None)
    return time.perf_counter() - t0


def per_process(model_dir: Path, steps: list[int], tokens_path: Path, out: Path) -> float:
    t0 = time.perf_counter()
    for s in steps:
        subprocess.run([sys.executable, "-m", "madyn.cli", "extract", str(model_dir / f"step{s}"),
                        "--tokens", str(tokens_path), "--out", str(out / f"p{s}.parquet"),
                        "--device", "cpu", "--threads", "1"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--per-process", type=int, default=4,
                   help="checkpoints timed one process each (slow: a few suffice)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from madyn.io import read_json

    steps = read_json(args.model_dir / "manifest.json")["steps"]
    tokens = np.load(args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        bare(args.model_dir, steps[:1], tokens)  # warm the imports and the file cache
        t_bare = bare(args.model_dir, steps, tokens) / len(steps)
        t_in = in_process(args.model_dir, steps, args.tokens, out) / len(steps)
        sub = steps[: args.per_process]
        t_per = per_process(args.model_dir, sub, args.tokens, out) / len(sub)
    print(f"{args.model_dir.name}: {len(steps)} checkpoints, tokens {tokens.shape}, 1 thread")
    print(f"  bare load + forward       {1000 * t_bare:8.1f} ms per checkpoint  (1.00x)")
    print(f"  in-process (extract-model){1000 * t_in:8.1f} ms per checkpoint  "
          f"({t_in / t_bare:.2f}x bare)")
    print(f"  one process per checkpoint{1000 * t_per:8.1f} ms per checkpoint  "
          f"({t_per / t_bare:.2f}x bare, {t_per / t_in:.1f}x in-process)")


if __name__ == "__main__":
    main()
