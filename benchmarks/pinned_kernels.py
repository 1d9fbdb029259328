"""What pinning the CPU kernel paths (madyn.kernels.PINNED) costs, side by side.

Trains one architecture of the embedded suite (its recipe: batch 8 x 128 tokens) for a few
steps and measures its last checkpoint (the suite's evaluation shape, 10 x 128 tokens), once
per kernel setting, each in a fresh process (torch reads ATEN_CPU_CAPABILITY once, at
import), one thread, the settings interleaved over ``--repeat`` rounds (the fastest
counts). Prints seconds per training step, seconds per measurement, the ratio to the
machine's own kernels and the final weights' sha256 prefix.

Run, e.g.: ``python benchmarks/pinned_kernels.py l6-w96-h6 l2-w32-h2 --steps 60``
(a corpus is built in a temporary folder unless ``--corpus`` names one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from madyn import kernels

NATIVE = {kernels.MODE: "native"}
SETTINGS: dict[str, dict[str, str]] = {
    "native": NATIVE,
    "pinned": {**kernels.PINNED, kernels.MODE: "pinned"},
    "aten default only": {**NATIVE, "ATEN_CPU_CAPABILITY": "default"},
    "mkl COMPATIBLE only": {**NATIVE, "MKL_CBWR": "COMPATIBLE"},
    "dnnl SSE41 only": {**NATIVE, "DNNL_MAX_CPU_ISA": "SSE41"},
    "pinned at avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE",
                       "DNNL_MAX_CPU_ISA": "AVX2"},
}


def worker(model: str, steps: int, corpus: str) -> dict:
    """Train and measure in this process (its environment already set); timings in s."""
    import time

    import numpy as np

    from madyn.measure.checkpoints import load_model
    from madyn.measure.statistics import measure
    from madyn.train.training import train_model
    from madyn.workflow import params_file, params_values

    suite = params_values.active(params_file.load("params.yaml"))
    spec = params_values.model_spec(suite, model)
    base = params_values.train_spec(suite, model)
    train = base.__class__(**{**base.__dict__, "steps": steps, "log_until": 0,
                              "every": steps, "warmup": min(base.warmup, steps // 2)})
    with tempfile.TemporaryDirectory() as out:
        man = train_model(spec, train, corpus, out, threads=1)
        model_ = load_model(str(Path(out) / f"step{steps}"), device="cpu")
        tokens = np.random.default_rng(0).integers(0, model_.config.vocab_size, (10, 128))
        measure(model_, tokens[:2])  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            measure(model_, tokens, batch_size=10)
        measure_s = (time.perf_counter() - t) / 3
    return {"step_s": man["train_seconds"] / steps, "measure_s": measure_s,
            "sha": man["weights_sha256"][str(steps)][:12], "kernels": man.get("kernels")}


def run(model: str, steps: int, corpus: str, env: dict[str, str]) -> dict:
    """:func:`worker` in a fresh process with ``env`` replacing the pinned variables."""
    base = {k: v for k, v in os.environ.items()
            if k not in kernels.PINNED and k != kernels.MODE}
    out = subprocess.run([sys.executable, __file__, "--worker", model, str(steps), corpus],
                         env={**base, **env, "OMP_NUM_THREADS": "1"}, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["l6-w96-h6"],
                    help="architectures of the active suite in params.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--corpus", help="a madyn step corpus folder (default: a small one, built)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--repeat", type=int, default=2,
                    help="rounds over the settings (interleaved); the fastest round counts")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.worker[2])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from madyn.train.corpus import build_corpus

            corpus = str(Path(tmp) / "corpus")
            build_corpus(corpus, max_mb=2, heldout_fraction=0.05, vocab_size=300)
        for model in args.models:
            rounds = [{name: run(model, args.steps, corpus, SETTINGS[name])
                       for name in args.settings} for _ in range(args.repeat)]
            rows = {name: {**rounds[0][name],
                           "step_s": min(r[name]["step_s"] for r in rounds),
                           "measure_s": min(r[name]["measure_s"] for r in rounds)}
                    for name in args.settings}
            ref = rows.get("native") or next(iter(rows.values()))
            print(f"{model}, {args.steps} steps, 1 thread, fastest of {args.repeat} rounds")
            print(f"  {'setting':22s} {'s/step':>8s} {'ratio':>6s} {'measure s':>10s} "
                  f"{'ratio':>6s}  weights")
            for name, r in rows.items():
                print(f"  {name:22s} {r['step_s']:8.4f} {r['step_s'] / ref['step_s']:6.2f} "
                      f"{r['measure_s']:10.4f} {r['measure_s'] / ref['measure_s']:6.2f}  "
                      f"{r['sha']}")


if __name__ == "__main__":
    main()
