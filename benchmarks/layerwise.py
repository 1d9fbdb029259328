"""Measuring a checkpoint larger than memory, one decoder layer at a time, under a hard
memory limit: peak resident memory, time per layer and disk throughput against ``dd``.

Writes Llama-shaped checkpoints of random bfloat16 weights (sharded safetensors with an
index, as ``save_pretrained`` writes them) to a temporary folder (``--workdir``; deleted
afterwards unless ``--keep``; never inside the repository):

  7b  32 layers, width 4096, MLP 11008, 32 heads, vocabulary 32000, untied head
      (Llama-2-7B's shape: 6.74 B parameters, 13.5 GB);
  1b  22 layers, width 2048, MLP 5632, 32 heads, 4 key/value heads, vocabulary 32000,
      untied head (TinyLlama-1.1B's shape: 1.10 B parameters, 2.2 GB).

Values: normal, std 0.02; each tensor is a random window of one pool of 2^26 draws (drawing
6.7 B values afresh takes minutes on 2 cores; what is measured does not depend on it).

For each shape, in fresh subprocesses run at ``nice -n 19``, after dropping the page cache
(``/proc/sys/vm/drop_caches``, as root; without it the reads may come from the cache, and
the report says so):

  layers  ``madyn.measure.extract.measure_checkpoint`` with ``max_memory_gb`` set below
          the model's size (so it measures layer by layer), the process's address space
          capped by RLIMIT_AS (``ulimit -v``) at ``--limit-gb``: what ``ulimit -v`` and a
          plain ``resource.setrlimit`` give. RLIMIT_AS counts virtual memory, memory maps
          included: the layer-by-layer path reads tensors with ``pread`` (no map), so it
          fits; a whole-model load memory-maps every shard and cannot.
  whole   (1b only) the whole-model pass of the same function without a budget, no cap;
          and once more under the cap, to show that it fails there.

Reported: peak resident memory (``ru_maxrss``), wall minutes, per-layer seconds (reading,
in the thread that reads the next layer while one runs; computing), the GB/s of the layer
reads against ``dd iflag=direct`` of the largest shard (the disk's own figure) and against
the same reader reading every tensor with nothing else running (``reader_alone``), and
for 1b the largest relative difference of any statistic between the two passes and the
ratio of their peak memory. The weights' fingerprint (sha256 of every shard, a read of
its own) is left out of both: the benchmark passes one.

Run: nice -n 19 python benchmarks/layerwise.py [--shapes 7b 1b --limit-gb 4 --n-seqs 2
     --seq-len 128 --workdir /tmp --keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (layers, width, MLP, heads, key/value heads, vocabulary)
SHAPES = {"7b": (32, 4096, 11008, 32, 32, 32000), "1b": (22, 2048, 5632, 32, 4, 32000)}
SHARD_BYTES = 2 * 10**9
POOL = 2**26


def write_checkpoint(shape: str, out: Path) -> int:
    """A Llama checkpoint of ``shape`` in ``out`` (random bfloat16 weights, shards of about
    2 GB, an index); its bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from madyn.measure.empty_model import empty_parameters

    layers, width, ffn, heads, kv, vocab = SHAPES[shape]
    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=width, intermediate_size=ffn,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                      max_position_embeddings=2048, tie_word_embeddings=False,
                      dtype="bfloat16")
    with empty_parameters():
        model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True)
    cfg.save_pretrained(out)
    gen = torch.Generator().manual_seed(0)
    pool = (torch.randn(POOL, generator=gen) * 0.02).to(torch.bfloat16)
    names = list(model.state_dict(keep_vars=True).items())
    groups, group, size = [], [], 0
    for name, p in names:
        group.append((name, tuple(p.shape)))
        size += p.numel() * 2
        if size >= SHARD_BYTES:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    index, total = {}, 0
    for i, grp in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shp in grp:
            n = 1
            for d in shp:
                n *= d
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shp, dtype=torch.bfloat16)
                continue
            parts, left = [], n
            while left:
                take = min(left, POOL // 2)
                start = int(torch.randint(0, POOL - take + 1, (1,), generator=gen))
                parts.append(pool[start:start + take])
                left -= take
            tensors[name] = torch.cat(parts).reshape(shp)
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        index.update({k: fname for k in tensors})
        del tensors
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}))
    return total


def drop_caches() -> bool:
    """Empty the page cache (root only); whether it could."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def dd_gbps(path: Path) -> float:
    """GB/s of ``dd`` reading ``path`` with O_DIRECT (no page cache)."""
    p = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"],
                       capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) bytes.*copied, ([\d.]+) s", p.stderr)
    return int(m[1]) / float(m[2]) / 1e9


def reader_alone_gbps(folder: Path) -> float:
    """GB/s of :class:`madyn.measure.shard_reader.ShardReader` reading every tensor once, in
    file order, into one reused slab as the measuring pass does, nothing else running in
    this process (call after dropping the cache)."""
    from madyn.measure.checkpoints import weight_files
    from madyn.measure.shard_reader import ShardReader, Slab

    r = ShardReader(weight_files(str(folder)))
    try:
        names = sorted(r.tensors, key=lambda n: (str(r._files[n]), r.tensors[n]["begin"]))
        slab = Slab()
        t0 = time.monotonic()
        for n in names:
            slab.reset(r.span(n))
            r.read(n, slab)
        return r.bytes_read / 1e9 / (time.monotonic() - t0)
    finally:
        r.close()


_CHILD = r"""
import json, resource, sys, time
import numpy as np
from madyn.measure.extract import measure_checkpoint
from madyn.settings import ExtractSettings
folder, budget, n, t = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tokens = np.random.default_rng(0).integers(0, 32000, size=(n, t))
s = ExtractSettings(dtype="bfloat16", device="cpu", batch_size=n,
                    max_memory_gb=None if budget == "none" else float(budget))
t0 = time.monotonic()
try:
    df, meta = measure_checkpoint(folder, tokens, s, weights_fp={"sha256": "benchmark"})
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    sys.exit(0)
print(json.dumps({"ok": True, "wall": time.monotonic() - t0, "meta": meta,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "table": df.to_dict(orient="list")}))
"""


def run_child(folder: Path, budget: str, n: int, t: int, limit_gb: float | None) -> dict:
    """One measurement in a fresh ``nice -n 19`` process, its address space capped at
    ``limit_gb`` (None: no cap)."""
    def cap() -> None:
        if limit_gb is not None:
            b = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run(["nice", "-n", "19", sys.executable, "-c", _CHILD, str(folder), budget,
                        str(n), str(t)], capture_output=True, text=True, env=env,
                       preexec_fn=cap, timeout=3600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"ok": False, "error": f"exit {p.returncode}: {p.stderr.strip()[-400:]}",
                "maxrss_kb": None}
    return json.loads(lines[-1])


def summary(res: dict, size: int) -> dict:
    info = res["meta"].get("layerwise_info") or {}
    out = {"peak_rss_gb": round(res["maxrss_kb"] * 1024 / 1e9, 3),
           "minutes": round(res["wall"] / 60, 2), "layerwise": res["meta"]["layerwise"]}
    if info:
        n = info["layers"]
        out.update(read_gb=round(info["bytes_read"] / 1e9, 2),
                   read_gbps=round(info["bytes_read"] / 1e9 / max(info["read_seconds"], 1e-9),
                                   3),
                   s_per_layer=round(info["seconds"] / n, 2),
                   read_s_per_layer=round(info["read_seconds"] / n, 2),
                   compute_s_per_layer=round(info["compute_seconds"] / n, 2),
                   estimated_gb=round(info["estimated_bytes"] / 1e9, 2))
    out["checkpoint_gb"] = round(size / 1e9, 2)
    return out


def max_rel_diff(a: dict, b: dict) -> float:
    import numpy as np

    from madyn.measure.stats_table import STAT_COLUMNS

    worst = 0.0
    for k in STAT_COLUMNS:
        x, y = np.asarray(a[k], float), np.asarray(b[k], float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not (np.isnan(x) == np.isnan(y)).all():
            return float("inf")
        if ok.any():
            worst = max(worst, float(np.max(np.abs(x[ok] - y[ok])
                                            / np.maximum(np.abs(y[ok]), 1e-30))))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["7b", "1b"], choices=list(SHAPES))
    ap.add_argument("--limit-gb", type=float, default=4.0,
                    help="RLIMIT_AS cap of the layer-by-layer process, GiB")
    ap.add_argument("--n-seqs", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--workdir", default=None, help="where the checkpoints are written")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="madyn-layerwise-", dir=args.workdir))
    report: dict = {"limit_gib": args.limit_gb, "n_seqs": args.n_seqs,
                    "seq_len": args.seq_len, "cpus": os.cpu_count(),
                    "date": time.strftime("%Y-%m-%d")}
    try:
        for shape in args.shapes:
            folder = root / shape
            t0 = time.monotonic()
            size = write_checkpoint(shape, folder)
            r: dict = {"write_minutes": round((time.monotonic() - t0) / 60, 2)}
            biggest = max(folder.glob("*.safetensors"), key=lambda f: f.stat().st_size)
            r["dropped_caches"] = drop_caches()
            r["dd_gbps"] = round(dd_gbps(biggest), 3)
            drop_caches()
            r["reader_alone_gbps"] = round(reader_alone_gbps(folder), 3)
            budget = str(args.limit_gb / 2)  # weights + activations; the rest: python, torch
            drop_caches()
            lay = run_child(folder, budget, args.n_seqs, args.seq_len, args.limit_gb)
            if not lay["ok"]:
                r["layers"] = lay
                report[shape] = r
                print(json.dumps({shape: r}), flush=True)
                continue
            r["layers"] = summary(lay, size)
            r["layers"]["vs_dd"] = round(r["layers"]["read_gbps"] / r["dd_gbps"], 3)
            r["layers"]["layer_seconds"] = lay["meta"]["layerwise_info"].get("layer_seconds")
            if shape == "1b":
                drop_caches()
                whole = run_child(folder, "none", args.n_seqs, args.seq_len, None)
                if whole["ok"]:
                    r["whole"] = summary(whole, size)
                    r["max_rel_diff"] = max_rel_diff(lay["table"], whole["table"])
                    r["memory_ratio_whole_over_layers"] = round(
                        whole["maxrss_kb"] / lay["maxrss_kb"], 2)
                else:
                    r["whole"] = whole
                drop_caches()
                capped = run_child(folder, "none", args.n_seqs, args.seq_len, args.limit_gb)
                r["whole_under_limit"] = {"ok": capped["ok"],
                                          "error": capped.get("error", "")[:200]}
            report[shape] = r
            print(json.dumps({shape: {k: v for k, v in r.items()}}), flush=True)
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
