"""Cost of the statistics pass against a bare forward pass and against the naive way.

Model: a Pythia-shaped GPT-NeoX with random weights (``--shape``: pythia-70m, 6 layers,
width 512, the CPU default; pythia-1b, 16 layers, width 2048, the GPU default), weights in
``--dtype`` (float32 on the CPU, bfloat16 on CUDA by default; statistics are always float32);
input: 10 sequences x 2048 tokens (default). The variants are timed side by side in one
process (interleaved rounds, median), and each is run once more in a fresh subprocess for
its peak memory:

  bare   the model body's forward pass (decoder stack, no LM head), no hooks: the floor;
  model  the plain forward pass as usually called, model(input_ids), logits included;
  default     madyn.measure.statistics.measure as every user runs it (extreme_tokens on): hooks
         reduce each layer's output in place, and each layer's sink mass comes from its own
         fused attention (madyn.measure.sinks: the SDPA kernel's log-sum-exp, no T x T matrix);
  stats-only  the same with extreme_tokens off (sink_mass NaN);
  naive  the full LM forward with output_hidden_states=True, then a full sort of each
         layer's |h| (and, note, its last entry is the post-final-LayerNorm state).

Targets: the default pass / bare body forward <= 1.25 in time and <= 1.5 in peak memory on
the CPU (Pythia-70m shape, float32; the stats-only pass <= 1.10), and <= 1.20 in time on CUDA
(Pythia-1b shape, bf16 weights). ``--breakdown`` also times each part of
the device-side statistics (:func:`madyn.measure.statistics.layer_stats`) on one layer's
output, B x T x D at the shape's width, against one layer's share of the bare forward:
where a GPU pass spends.

Run: python benchmarks/extract.py [--device cpu|cuda --shape pythia-70m|pythia-1b
     --dtype float32|bfloat16|float16 --seq-len 2048 --n-seqs 10 --repeats 3 --breakdown]
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

# (layers, width, heads, d_ff) of EleutherAI/pythia-70m and -1b (their config.json files)
SHAPES = {"pythia-70m": (6, 512, 8, 2048), "pythia-1b": (16, 2048, 8, 8192)}


def build_model(shape: str, dtype: str, device: str):
    """Random-weight GPT-NeoX of the named Pythia shape, built on ``device`` in ``dtype``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    n_layers, width, heads, d_ff = SHAPES[shape]
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=width, num_hidden_layers=n_layers,
                        num_attention_heads=heads, intermediate_size=d_ff, rotary_pct=0.25,
                        max_position_embeddings=2048, use_parallel_residual=True)
    with torch.device(device):
        model = GPTNeoXForCausalLM(cfg)
    return model.to(getattr(torch, dtype)).eval()


def bare(model, ids):
    with torch.inference_mode():
        model.base_model(input_ids=ids, use_cache=False)


def full(model, ids):
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)


def stats(model, ids):
    from madyn.measure.statistics import measure

    measure(model, ids.cpu().numpy(), batch_size=len(ids), extreme_tokens=False)


def stats_sinks(model, ids):
    from madyn.measure.statistics import measure

    measure(model, ids.cpu().numpy(), batch_size=len(ids), extreme_tokens=True)


def naive(model, ids):
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for h in hs[1:]:
            a = torch.sort(h.float().abs().flatten(1), dim=1).values
            n = a.shape[1]
            _ = a[:, -3:], a[:, (n - 1) // 2]


VARIANTS = {"bare": bare, "model": full, "default": stats_sinks, "stats-only": stats,
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
    model = build_model(args.shape, args.dtype, args.device)
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


def _timed(fn, device: str) -> float:
    """Wall time (s) of one ``fn()``, the device synchronised before and after."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def breakdown(args, per_layer_forward: float) -> None:
    """Time each part of :func:`madyn.measure.statistics.layer_stats` on one layer's output.

    h: n_seqs x seq_len x width in the weights' dtype, with one massive channel at token 0.
    Prints each part's seconds and its share of one layer's bare forward (the body forward
    divided by the number of layers).
    """
    from madyn.measure.statistics import layer_stats

    _, width, _, _ = SHAPES[args.shape]
    g = torch.Generator().manual_seed(1)
    h32 = torch.randn(args.n_seqs, args.seq_len, width, generator=g)
    h32[:, 0, 7] = 400.0
    h = h32.to(device=args.device, dtype=getattr(torch, args.dtype))
    b, t, d = h.shape
    f = h.float()
    a = f.abs().reshape(b, t * d)
    at = a.view(b, t, d)
    norms = f.norm(dim=2)
    parts = {
        "float32 copy, finite mask": lambda: torch.where(torch.isfinite(f32 := h.float()),
                                                         f32, 0.0),
        "|h|, top 3 over T*D": lambda: torch.topk(f.abs().reshape(b, -1), 3, dim=1),
        "median over T*D": lambda: a.median(dim=1),
        "per-token max and median (mmr)": lambda: (at.amax(2), at.median(2)),
        "channel mean squares (kurtosis)": lambda: f.pow(2).mean(dim=1),
        "token norms and cos_sim": lambda: (f / f.norm(dim=2)[:, :, None]).sum(1),
        "first-token ratios": lambda: (norms.median(dim=1), a[:, :d].amax(1)),
        "layer_stats, all of it": lambda: layer_stats(h, to_numpy=False),
    }
    with torch.inference_mode():
        for fn in parts.values():  # warm up
            fn()
        times = {k: statistics.median(_timed(fn, args.device) for _ in range(args.repeats))
                 for k, fn in parts.items()}
    print(f"\nbreakdown of the device-side statistics, one layer ({b} x {t} x {d}, "
          f"{args.dtype}); one layer's bare forward: {per_layer_forward * 1e3:.2f} ms")
    print(f"{'part':34} {'ms':>9} {'x layer fwd':>12}")
    for k, v in times.items():
        print(f"{k:34} {v * 1e3:9.3f} {v / per_layer_forward:12.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="model shape (default: pythia-1b on CUDA, pythia-70m on the CPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights' dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--n-seqs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--breakdown", action="store_true",
                   help="also time each part of the device-side statistics on one layer")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    on_gpu = args.device.startswith("cuda")
    args.shape = args.shape or ("pythia-1b" if on_gpu else "pythia-70m")
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    if args.memory_child:
        peak_memory_child(args.memory_child, args)
        return

    model = build_model(args.shape, args.dtype, args.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50304, (args.n_seqs, args.seq_len), generator=g).to(args.device)
    name = torch.cuda.get_device_name() if on_gpu else f"{torch.get_num_threads()} threads"
    print(f"device {args.device} ({name}), {args.n_seqs} x {args.seq_len} tokens, "
          f"{args.shape} shape, {args.dtype} weights, float32 statistics", flush=True)
    bare(model, ids[:1, :64])  # warm up
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for r in range(args.repeats):
        for name, fn in VARIANTS.items():
            times[name].append(_timed(lambda fn=fn: fn(model, ids), args.device))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {}
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--memory-child", name, "--seq-len",
                              str(args.seq_len), "--n-seqs", str(args.n_seqs), "--device",
                              args.device, "--shape", args.shape, "--dtype", args.dtype],
                             capture_output=True, text=True, check=True)
        mem[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    print(f"\n{'variant':12} {'time s':>8} {'x bare':>8} {'peak MB':>9} {'x bare':>8}")
    for name in VARIANTS:
        print(f"{name:12} {med[name]:8.3f} {med[name] / med['bare']:8.3f} {mem[name]:9.0f} "
              f"{mem[name] / max(mem['bare'], 1e-9):8.2f}")
    bare_mb = max(mem["bare"], 1e-9)
    if on_gpu:
        print("\ntarget (CUDA): the default pass <= 1.20 x a bare forward pass in time")
    else:
        print("\ntarget (CPU): the default pass <= 1.25 x a bare forward pass in time and "
              "<= 1.5 x in peak memory; stats-only <= 1.10 in time")
    print(f"default pass / bare body forward (no LM head, the strict floor): "
          f"{med['default'] / med['bare']:.3f} time, {mem['default'] / bare_mb:.2f} memory")
    print(f"stats-only pass / bare body forward:                            "
          f"{med['stats-only'] / med['bare']:.3f} time, {mem['stats-only'] / bare_mb:.2f} "
          "memory")
    print(f"default pass / plain model forward (model(input_ids), logits):  "
          f"{med['default'] / med['model']:.3f}")
    print(f"naive / default pass:           {med['naive'] / med['default']:.2f}x slower, "
          f"{mem['naive'] / max(mem['default'], 1e-9):.1f}x the memory")
    np.testing.assert_array_less(0, med["bare"])
    if args.breakdown:
        breakdown(args, med["bare"] / SHAPES[args.shape][0])


if __name__ == "__main__":
    main()
