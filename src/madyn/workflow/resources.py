"""What a measuring job needs, estimated before it runs, from a model's ``config.json``.

Snakemake schedules jobs by these: ``mem_mb`` (host memory), ``gpu`` (1 on CUDA, so that
``--resources gpu=1`` never puts two models on one GPU), ``gpu_mem_mb``, ``runtime``
(minutes) and, for hub downloads, the revision's size on disk (GB) that
a suite's ``extract.disk_budget_gb`` bounds. Cheap: no torch, no transformers, no network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from madyn.settings import ExtractSettings, resolve_device

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
STORED_BYTES = 2  # bytes per parameter when config.json names no dtype (Pythia: fp16)
BASE_MEM_MB = 1500  # python + torch + transformers, measured on the CPU wheel
CPU_FLOPS = 2e10  # sustained float32 FLOP/s of one CPU core (conservative)
GPU_FLOPS = 1e14  # sustained bf16/fp16 FLOP/s of one data-centre GPU (conservative)
LOAD_BYTES_PER_S = 2e8  # reading weights from disk into memory
UNKNOWN_PARAMS = 12_000_000_000  # no config at planning time: assume the largest Pythia


def model_config_dict(spec, vocab_size: int, seq_len: int = 2048) -> dict:
    """The config.json of a madyn-trained model of any family (as ``suite.model_config``
    builds it), without importing transformers: what :func:`n_params` and the feature
    table read. ``seq_len``: the training context (the size of gpt2's learned position
    table; the rotary families hold no parameters for it)."""
    from madyn.train.training import FAMILIES, config_kwargs

    return {"architectures": [FAMILIES[spec.family]],
            **config_kwargs(spec, vocab_size, seq_len, 0)}


def cached_hub_config(repo: str) -> dict | None:
    """A hub repo's config.json if the local hub cache holds it (never the network), read
    safely (:func:`madyn.io.read_json`: a FIFO or device there is refused naming it)."""
    from huggingface_hub import try_to_load_from_cache

    from madyn.io import read_json

    path = try_to_load_from_cache(repo, "config.json")
    return read_json(path) if isinstance(path, str) else None


def n_params(config: dict | None) -> int:
    """Parameter count of a decoder from its config
    (:func:`madyn.architecture.architecture`)."""
    if config is None:
        return UNKNOWN_PARAMS
    from madyn.architecture import architecture

    return int(architecture(config)["n_params"])


def stored_bytes(config: dict | None) -> int:
    """Bytes per parameter of a checkpoint's weights files: the dtype its config.json names
    (``torch_dtype``; ``dtype`` from transformers 5), else :data:`STORED_BYTES`."""
    dtype = (config or {}).get("torch_dtype") or (config or {}).get("dtype")
    return DTYPE_BYTES.get(dtype, STORED_BYTES)


def planned_gpus() -> int:
    """Whether this machine shows a job an NVIDIA GPU, without torch (planning time):
    1 when ``/dev/nvidia0`` exists and ``CUDA_VISIBLE_DEVICES`` does not hide every GPU,
    else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return int(visible not in ("", "-1") and Path("/dev/nvidia0").exists())


def uses_cuda(device: str) -> bool:
    """Will ``device`` measure on a GPU? (:func:`madyn.settings.resolve_device`, with the
    GPUs :func:`planned_gpus` sees.)"""
    return resolve_device(device, planned_gpus()).startswith("cuda")


def extract_plan(config: dict | None, extract: dict) -> dict:
    """Resources of one measuring job (``extract``: the suite's section; what it leaves out,
    :class:`madyn.settings.ExtractSettings`' defaults): weights in ``dtype``, the evaluation batch
    (``batch_size`` x ``seq_len`` tokens at a time, ``n_seqs`` in all) and the hidden
    states the statistics hold (about 4 float32 copies of one layer's B x T x D); with
    ``extreme_tokens`` (default on), one layer's eager attention scores and probabilities
    (B x H x T x T: in the model's dtype, and softmaxed in float32). With
    ``max_memory_gb``, a model that would not fit is measured layer by layer
    (:mod:`madyn.measure.layerwise`): host and GPU memory are capped at the budget (plus
    the interpreter's :data:`BASE_MEM_MB` on the host, 1 GB of CUDA context on a GPU)."""
    settings = ExtractSettings.from_section(extract)
    n = n_params(config)
    width = (config or {}).get("hidden_size", 5120)
    heads = (config or {}).get("num_attention_heads", 40)
    dtype_bytes = DTYPE_BYTES[settings.dtype]
    weights_mb = n * dtype_bytes / 2**20
    batch, seq = settings.batch_size, extract.get("seq_len", 2048)
    acts_mb = 8 * batch * seq * max(width * 4, 1) * 4 / 2**20  # MLP width 4D, float32
    if settings.extreme_tokens:
        acts_mb += batch * heads * seq * seq * (2 * dtype_bytes + 4) / 2**20
    cuda = uses_cuda(settings.device)
    flops = 2 * n * extract.get("n_seqs", 1) * seq
    stored = n * stored_bytes(config)  # bytes of the weights files
    seconds = 30 + stored / LOAD_BYTES_PER_S + flops / (GPU_FLOPS if cuda else CPU_FLOPS)
    mem_mb = BASE_MEM_MB + (weights_mb if not cuda else 0.3 * weights_mb) \
        + (acts_mb if not cuda else 0) + weights_mb  # load copy on host
    gpu_mem_mb = 1024 + weights_mb + acts_mb if cuda else 0
    if settings.max_memory_gb is not None:
        budget_mb = settings.max_memory_gb * 1e9 / 2**20
        mem_mb = min(mem_mb, BASE_MEM_MB + budget_mb)
        gpu_mem_mb = min(gpu_mem_mb, 1024 + budget_mb) if cuda else 0
    return {
        "mem_mb": int(mem_mb),
        "gpu": 1 if cuda else 0,
        "gpu_mem_mb": int(gpu_mem_mb),
        "runtime": max(1, math.ceil(1.5 * seconds / 60)),
        "threads": settings.threads,
        "download_gb": stored / 1e9,  # unrounded: a small revision still counts
    }


def download_windows(sizes_gb: list[float], budget_gb: float | None) -> list[int]:
    """For each download i (in order), the last earlier item j that must be measured (and
    its revision deleted) before i starts: the largest j whose later items j+1..i fit in
    ``budget_gb`` together; -1 when none need wait. No budget: -1 everywhere."""
    out, j, total = [], -1, 0.0
    for i, size in enumerate(sizes_gb):
        total += size
        while budget_gb is not None and total > budget_gb and j < i - 1:
            j += 1
            total -= sizes_gb[j]
        out.append(j)
    return out


def download_gate(order: list[tuple[str, int]], windows: list[int] | None,
                  item: tuple[str, int], stats_path: Callable[[str, int], str],
                  marker_path: Callable[[str, int], str]) -> list[str]:
    """The inputs that make download ``item`` wait: the previous download's marker (one
    download after another, in ``order``) and the statistics of every item that must be
    measured first. ``windows``: :func:`download_windows` of ``order`` (None: no disk
    budget, no waiting)."""
    if windows is None:
        return []
    i = order.index(item)
    lo = windows[i - 1] if i else -1
    previous = [marker_path(*order[i - 1])] if i else []
    return previous + [stats_path(*order[k]) for k in range(lo + 1, windows[i] + 1)]


def peak_disk_gb(sizes_gb: list[float], windows: list[int]) -> float:
    """The most disk the planned downloads can hold at once: while download i runs, every
    item up to windows[i] is measured and deleted, so at most items windows[i]+1..i are
    on disk."""
    return max((sum(sizes_gb[w + 1:i + 1]) for i, w in enumerate(windows)), default=0.0)
