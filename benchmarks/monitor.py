"""Cost of live monitoring (madyn.measure.monitor) as a fraction of training wall time, measured
side by side in one run.

Trains one embedded-suite model with the embedded recipe (params.yaml: suites.embedded,
model l4-w64-h4 by default: AdamW, batch 8 x 128 tokens, 2000 steps, warmup and cosine
decay, gradient clipping) twice in this process, in a hand-written loop: without the
monitor, then with a :class:`madyn.measure.monitor.Monitor` at its default schedule (0, 1, 2, 4, ...
64, then every 100 steps) on the embedded evaluation batch (10 x 128 held-out tokens).
Prints both wall times, the monitor's own time (the probes, summed) and the overhead both
ways: monitor time / training time, and the wall-time difference / the plain run's.

    python benchmarks/monitor.py [--model l4-w64-h4] [--steps 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def train(spec, tspec, corpus: Path, probe: np.ndarray | None, out: Path | None
          ) -> tuple[float, float, float, int]:
    """Wall seconds of training (checkpoints not saved), the monitor's seconds, of which
    drawing its figure, probes."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from madyn.measure.monitor import Monitor
    from madyn.train.training import FAMILIES, make_optimizer, model_config, update

    torch.manual_seed(tspec.seed)
    tok = AutoTokenizer.from_pretrained(str(corpus / "tokenizer"))
    data = np.load(corpus / "train.npy", mmap_mode="r")
    model = getattr(transformers, FAMILIES[spec.family])(
        model_config(spec, len(tok), tspec.seq_len, tok.eos_token_id))
    model.train()
    opt = make_optimizer(model, tspec)
    rng = np.random.default_rng(tspec.seed)
    mon = Monitor(model, probe, out, optimizer=opt, max_steps=tspec.steps) \
        if probe is not None else None
    t0 = time.perf_counter()
    for step in range(tspec.steps + 1):
        if mon is not None:
            mon(step)
        if step == tspec.steps:
            break
        starts = rng.integers(0, data.size - tspec.seq_len, size=tspec.batch_size)
        x = torch.from_numpy(np.stack([data[s:s + tspec.seq_len] for s in starts])
                             .astype(np.int64))
        update(model, opt, x, step, tspec)  # the trainer's own update step
    if mon is not None:
        mon.close()  # the last step (measured already when it is on the schedule)
    wall = time.perf_counter() - t0
    probes = len(list(out.glob("step*.parquet"))) if out is not None else 0
    return wall, (mon.seconds if mon else 0.0), (mon.figure_seconds if mon else 0.0), probes


def main() -> None:
    import dataclasses

    import torch

    from madyn.measure.monitor_inputs import EVERY, LOG_UNTIL
    from madyn.train.corpus import build_corpus, eval_windows
    from madyn.workflow import params_file, params_values

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="l4-w64-h4")
    ap.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    cfg = params_file.load(str(root / "params.yaml"))
    suite = cfg["suites"]["embedded"]
    spec = params_values.model_spec(suite, args.model)
    tspec = params_values.train_spec(suite, args.model)
    if args.steps:
        tspec = dataclasses.replace(tspec, steps=args.steps)
    ex = suite["extract"]
    with tempfile.TemporaryDirectory(prefix="madyn-bench-") as tmp:
        corpus = Path(tmp) / "corpus"
        build_corpus(corpus, max_mb=1.0, heldout_fraction=0.1,
                     vocab_size=suite["corpus"]["vocab_size"])
        probe = eval_windows(np.load(corpus / "heldout.npy"), ex["n_seqs"], ex["seq_len"],
                             ex["seed"])
        plain, _, _, _ = train(spec, tspec, corpus, None, None)
        watched, mon_s, fig_s, probes = train(spec, tspec, corpus, probe,
                                              Path(tmp) / "monitor")
    print(f"model {args.model}, {tspec.steps} steps of {tspec.batch_size} x {tspec.seq_len} "
          f"tokens, {args.threads} thread(s); monitor schedule 0, 1, 2, ... {LOG_UNTIL}, "
          f"then every {EVERY} ({probes} probes of {probe.shape[0]} x {probe.shape[1]})")
    print(f"  training without the monitor   {plain:8.1f} s")
    print(f"  training with the monitor      {watched:8.1f} s")
    print(f"  the monitor's own time         {mon_s:8.2f} s ({mon_s / probes * 1e3:.0f} ms "
          "per probe)")
    print(f"    of which drawing the figure  {fig_s:8.2f} s ({fig_s / probes * 1e3:.0f} ms "
          "per probe)")
    print(f"  overhead: monitor time / training time  {mon_s / (watched - mon_s):.2%}")
    print(f"  overhead: wall difference / plain run   {(watched - plain) / plain:+.2%} "
          "(includes run-to-run noise)")


if __name__ == "__main__":
    main()
