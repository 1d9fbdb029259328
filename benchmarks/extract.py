"""Cost of the statistics pass against a bare forward pass and against the naive way.

Model: Pythia-70m-shaped GPT-NeoX (6 layers, width 512, 8 heads, d_ff 2048, vocab 50304),
random weights; input: 10 sequences x 2048 tokens (default). Three variants, timed side by
side in one process (interleaved rounds, median), and each run once more in a fresh
subprocess for its peak memory:

  bare   the model body's forward pass (decoder stack, no LM head), no hooks: the floor;
  model  the plain forward pass as usually called, model(input_ids), logits included;
  stats  madyn.extract.measure, extreme_tokens off: hooks reduce each layer's output in
         place (the model's default attention);
  stats+sinks  the same with extreme_tokens on (default): eager attention, each layer's
         B x H x T x T probabilities reduced to the sink mass in a hook;
  naive  the full LM forward with output_hidden_states=True, then a full sort of each
         layer's |h| (and, note, its last entry is the post-final-LayerNorm state).

Run: python benchmarks/extract.py [--seq-len 2048 --n-seqs 10 --repeats 3 --device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch


def build_model(device: str):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6,
                        num_attention_heads=8, intermediate_size=2048, rotary_pct=0.25,
                        max_position_embeddings=2048, use_parallel_residual=True)
    return GPTNeoXForCausalLM(cfg).to(device).eval()


def bare(model, ids):
    with torch.inference_mode():
        model.base_model(input_ids=ids, use_cache=False)


def full(model, ids):
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)


def stats(model, ids):
    from madyn.extract import measure

    measure(model, ids.cpu().numpy(), batch_size=len(ids), extreme_tokens=False)


def stats_sinks(model, ids):
    from madyn.extract import measure

    measure(model, ids.cpu().numpy(), batch_size=len(ids), extreme_tokens=True)


def naive(model, ids):
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for h in hs[1:]:
            a = torch.sort(h.float().abs().flatten(1), dim=1).values
            n = a.shape[1]
            _ = a[:, -3:], a[:, (n - 1) // 2]


VARIANTS = {"bare": bare, "model": full, "stats": stats, "stats+sinks": stats_sinks,
            "naive": naive}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_peak_during(fn) -> float:
    """Peak resident memory (MB) above the starting level while ``fn`` runs (2 ms polls)."""
    import threading

    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=poll)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    return (max(peak[0], proc.memory_info().rss) - base) / 2**20


def peak_memory_child(variant: str, args) -> None:
    """Run one variant once and print its peak memory (MB) above the loaded model."""
    model = build_model(args.device)
    ids = torch.randint(0, 50304, (args.n_seqs, args.seq_len), generator=None).to(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        VARIANTS[variant](model, ids)
        _sync(args.device)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _rss_peak_during(lambda: VARIANTS[variant](model, ids))
    print(json.dumps({"variant": variant, "peak_mb": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--n-seqs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args)
        return

    model = build_model(args.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50304, (args.n_seqs, args.seq_len), generator=g).to(args.device)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, "
          f"{args.n_seqs} x {args.seq_len} tokens, Pythia-70m shape")
    bare(model, ids[:1, :64])  # warm up
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for r in range(args.repeats):
        for name, fn in VARIANTS.items():
            _sync(args.device)
            t0 = time.perf_counter()
            fn(model, ids)
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {}
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--memory-child", name, "--seq-len",
                              str(args.seq_len), "--n-seqs", str(args.n_seqs), "--device",
                              args.device], capture_output=True, text=True, check=True)
        mem[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    print(f"\n{'variant':12} {'time s':>8} {'x bare':>8} {'peak MB':>9} {'x bare':>8}")
    for name in VARIANTS:
        print(f"{name:12} {med[name]:8.2f} {med[name] / med['bare']:8.3f} {mem[name]:9.0f} "
              f"{mem[name] / max(mem['bare'], 1e-9):8.2f}")
    print("\ntarget: statistics pass (extreme tokens off) <= 1.10 x a bare forward pass")
    print(f"statistics pass / bare body forward (no LM head, the strict floor): "
          f"{med['stats'] / med['bare']:.3f}")
    print(f"statistics pass / plain model forward (model(input_ids), logits):   "
          f"{med['stats'] / med['model']:.3f}")
    print(f"cost of the extreme-token metrics (stats+sinks / stats):          "
          f"{med['stats+sinks'] / med['stats']:.3f} time, "
          f"{mem['stats+sinks'] / max(mem['stats'], 1e-9):.2f}x the memory")
    print(f"naive / statistics pass:        {med['naive'] / med['stats']:.2f}x slower, "
          f"{mem['naive'] / max(mem['stats'], 1e-9):.1f}x the memory")
    np.testing.assert_array_less(0, med["bare"])


if __name__ == "__main__":
    main()
