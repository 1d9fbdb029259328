"""Activation statistics of one checkpoint, measured inside forward hooks.

For every decoder layer l (found structurally, see :func:`decoder_layers`) and every
evaluation sequence b, the hook receives h_l (T tokens x D channels, the residual stream
after the layer) and reduces it at once, in float32, to a handful of numbers; no layer's
hidden states outlive its hook. Columns of the output table (one row per seq x layer):

- ``top1``, ``top2``, ``top3``: the three largest |h| over all T x D entries.
- ``median``: the lower median of |h| over T x D (``torch.median``: the element of rank
  floor((n-1)/2), as the study's reference code).
- ``ratio``: top1 / median.
- ``top1_token``, ``top1_channel``: where top1 sits (0-based token position, channel).
- ``kurtosis``: kurtosis of per-channel RMS, s_j = sqrt(mean_t h_tj^2),
  mean_j s_j^4 / (mean_j s_j^2)^2 (He et al.); 1 = no outlier channel, D = one channel.
- ``mmr``: max-median ratio, per token max_j |h_tj| / median_j |h_tj|, mean over tokens.
- ``cos_sim``: mean off-diagonal cosine similarity between tokens (signal propagation),
  from ||sum_t u_t||^2 with u_t = h_t / ||h_t||: no T x T matrix.
- ``mlp_active_token``: fraction of MLP hidden units > 0 per token, mean over tokens.
- ``mlp_active_seq``: fraction of MLP hidden units > 0 for at least one token.
- ``nonfinite``: number of non-finite entries of h (the other statistics ignore them).

Extreme-token metrics (position 0, where attention sinks and massive activations sit):

- ``sink_mass``: mean attention probability that queries t >= 1 put on position 0, mean
  over heads and those queries (read from the layer's own fused attention by
  :mod:`madyn.sinks`, no T x T matrix). NaN when ``extreme_tokens`` is off.
- ``first_norm_ratio``: ||h_0|| / lower median over t of ||h_t|| (residual-stream norms).
- ``first_peak_ratio``: max_j |h_0j| / ``median`` (position 0's largest entry against the
  median |h| of all T x D entries): large when a massive activation sits at the first
  token, not when a feature outlier is present at every token (see ``mmr``).
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from madyn import sinks

STAT_COLUMNS = ["top1", "top2", "top3", "median", "ratio", "top1_token", "top1_channel",
                "kurtosis", "mmr", "cos_sim", "mlp_active_token", "mlp_active_seq",
                "nonfinite", "sink_mass", "first_norm_ratio", "first_peak_ratio"]


# ----------------------------------------------------------------------------- loading
def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class CheckpointError(ValueError):
    """A checkpoint madyn must not measure; the message names it and says why."""


def _is_local(source: str) -> bool:
    """A path (not a hub repo id ``owner/name``): it exists, or it looks like a path."""
    p = Path(source)
    return (p.exists() or source.startswith((".", "/", "~")) or p.is_absolute()
            or source.count("/") != 1 or source.endswith(".json"))


def _require_folder(source: str) -> None:
    """A local checkpoint must exist (never look a path up on the hub)."""
    if _is_local(source) and not Path(source).is_dir():
        raise CheckpointError(f"{source}: no such checkpoint folder")


def check_decoder_only(config: dict, source: str) -> None:
    """Refuse encoder-only and encoder-decoder checkpoints (madyn measures decoders)."""
    archs = config.get("architectures") or []
    if config.get("is_encoder_decoder") or any(not a.endswith("ForCausalLM") for a in archs):
        kind = ", ".join(archs) or config.get("model_type", "?")
        raise CheckpointError(f"{source}: {kind} is not a decoder-only causal LM "
                              "(madyn measures the decoder layers of causal LMs)")


def load_model(source: str, revision: str | None = None, dtype: str = "float32",
               device: str = "auto", attn_implementation: str | None = None):
    """Load a causal LM from a local HF directory or a hub repo id at ``revision``.

    Safetensors only, never remote code. ``dtype``: float32, float16 or bfloat16.
    ``attn_implementation``: e.g. ``eager`` (materialises attention probabilities, which
    ``sink_mass`` needs); None: transformers' default.
    A checkpoint whose weight files miss a tensor of the architecture, or hold one it does
    not have, is refused (transformers would initialise the missing one randomly).
    Returns the model in eval mode on the resolved device.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    _require_folder(source)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    config = model_config(source, revision)
    check_decoder_only(config, source)
    if Path(source).is_dir():  # before building anything: headers, layers, size
        tensors = check_config_matches_weights(source, config, weight_files(source))
        check_parameter_count(source, tensors)
    else:
        config_layers(config, source)
    model, info = AutoModelForCausalLM.from_pretrained(
        source,
        revision=revision,
        dtype=getattr(torch, dtype),
        use_safetensors=True,
        trust_remote_code=False,
        output_loading_info=True,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}),
    )
    bad = {k: sorted(v) for k, v in info.items()
           if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        where = f"{source}@{revision}" if revision else source
        raise CheckpointError(f"{where}: weights do not match the architecture: "
                              + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in bad.items()))
    return model.to(resolve_device(device)).eval()


def check_tokens(tokens: np.ndarray, vocab_size: int, where: str) -> np.ndarray:
    """The evaluation batch as int64 N x T ids, or a ValueError naming ``where``."""
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"{where}: expected a non-empty N x T array of token ids, "
                         f"got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{where}: token ids must be integers, got {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{where}: token ids span [{lo}, {hi}], outside the model's "
                         f"vocabulary of {vocab_size}")
    return tokens.astype(np.int64, copy=False)


def model_config(source: str, revision: str | None = None) -> dict:
    """A checkpoint's ``config.json`` as a dict: a local HF directory, or a hub repo id at
    ``revision`` (a plain JSON download; no model code is loaded). Read safely
    (:func:`madyn.io.read_json`: a regular file of bounded size); ValueError naming it."""
    from madyn.io import read_json

    local = Path(source)
    if local.is_dir():
        path = local / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(source, "config.json", revision=revision))
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: must hold a JSON object (a config.json), got "
                              f"{type(cfg).__name__}")
    return cfg


def weight_files(source: str, revision: str | None = None) -> list[Path]:
    """The safetensors files of a checkpoint: a local dir, or a hub repo's revision as
    cached by the download that loading it just made. Each is a regular file (a FIFO or a
    device is refused naming it, see :func:`check_weight_files`)."""
    from huggingface_hub import try_to_load_from_cache

    from madyn.io import read_json

    _require_folder(source)
    local = Path(source)
    if local.is_dir():
        return check_weight_files(sorted(local.glob("*.safetensors")))

    def cached(name: str) -> Path | None:
        p = try_to_load_from_cache(source, name, revision=revision)
        return Path(p) if isinstance(p, str) else None

    idx = cached("model.safetensors.index.json")
    if idx:
        index = read_json(idx)
        wmap = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise CheckpointError(f"{idx}: no weight_map of tensor -> file names")
        names = sorted(set(wmap.values()))
    else:
        names = ["model.safetensors"]
    files = [cached(n) for n in names]
    if any(f is None for f in files):
        raise FileNotFoundError(f"{source}@{revision}: weights not in the hub cache")
    return check_weight_files(files)


# ------------------------------------------------------------ checks before building
SAFETENSORS_HEADER_LIMIT = 100 * 2**20  # bytes; the safetensors library's own bound
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
               "F8_E5M2": 1}


def check_weight_files(files: list[Path]) -> list[Path]:
    """The weight files, each refused (:class:`madyn.io.UnsafeFile`, naming it) unless a
    regular file (a symlink to one is followed): a FIFO or /dev/zero would block or read
    without end. Returns ``files``."""
    import os
    import stat

    from madyn.io import open_regular

    for f in files:
        if not stat.S_ISREG(os.stat(f).st_mode):
            open_regular(f)  # raises, naming what it is
    return files


def safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file (name -> dtype, shape, data_offsets),
    checked against the file before anything is built from it. CheckpointError naming the
    file when it is truncated, its header length field lies or points past the data, the
    header is not JSON, or a tensor's bytes do not fit its shape or the file."""
    import json
    import struct

    from madyn.io import open_regular

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a valid safetensors file: {why}")

    with open_regular(path) as f:
        import os

        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise bad(f"truncated ({size} bytes; the header length alone takes 8)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise bad(f"its header length field says {n} bytes, but only {size - 8} "
                      "follow it (truncated, or not a safetensors file)")
        if n > SAFETENSORS_HEADER_LIMIT:
            raise bad(f"a header of {n} bytes (at most {SAFETENSORS_HEADER_LIMIT} allowed)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad(f"its {n}-byte header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_len, tensors = size - 8 - n, {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        shape, offsets = (t.get("shape"), t.get("data_offsets")) if isinstance(t, dict) \
            else (None, None)
        if not (isinstance(shape, list) and all(_whole(d) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(_whole(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has no valid shape and data offsets")
        if offsets[1] > data_len:
            raise bad(f"tensor {name!r} ends at byte {offsets[1]} of the data, but the file "
                      f"holds {data_len} (truncated)")
        item = DTYPE_SIZES.get(t.get("dtype"))
        numel = 1
        for d in shape:
            numel *= d
        if item is not None and numel * item != offsets[1] - offsets[0]:
            raise bad(f"tensor {name!r}: {t['dtype']} {shape} takes {numel * item} bytes, "
                      f"its data offsets span {offsets[1] - offsets[0]}")
        tensors[name] = {"shape": shape, "numel": numel}
    return tensors


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# config.json keys that size the model: whole numbers when present (None: unset)
SIZE_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd",
             "d_model", "vocab_size", "intermediate_size", "n_inner", "ffn_dim",
             "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
             "max_position_embeddings", "n_positions", "num_local_experts", "num_experts")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_LAYER_INDEX = re.compile(r"^(.*?)\.(\d+)\.")


def config_layers(config: dict, where: str) -> int:
    """The configured number of decoder layers; every size key of :data:`SIZE_KEYS` must be
    a whole number >= 0 (layers >= 1), else CheckpointError naming ``where`` and the key."""
    for key in SIZE_KEYS:
        v = config.get(key)
        if v is not None and not (_whole(v) and v >= 0):
            raise CheckpointError(f"{where}: {key} must be a whole number, got {v!r}")
    key = next((k for k in LAYER_KEYS if config.get(k) is not None), None)
    if key is None or config[key] < 1:
        raise CheckpointError(f"{where}: no number of layers >= 1 "
                              f"({' / '.join(LAYER_KEYS)})")
    return config[key]


def weight_layers(tensors: dict) -> tuple[str, int]:
    """The decoder stack in tensor names: the ``prefix.N.`` with the most distinct N, and
    that number (("", 0) when no name has a numbered part)."""
    stacks: dict[str, set[int]] = {}
    for name in tensors:
        m = _LAYER_INDEX.match(name)
        if m:
            stacks.setdefault(m[1], set()).add(int(m[2]))
    if not stacks:
        return "", 0
    prefix = max(stacks, key=lambda k: len(stacks[k]))
    return prefix, len(stacks[prefix])


def check_config_matches_weights(source: str, config: dict, files: list[Path]) -> dict:
    """Before anything is built: the weight files' headers parse (:func:`safetensors_header`)
    and the config's number of layers equals the decoder layers the tensor names hold.
    Returns name -> {shape, numel} of every tensor. CheckpointError naming the file."""
    where = Path(source) / "config.json" if Path(source).is_dir() else source
    n_layers = config_layers(config, str(where))
    if not files:
        raise CheckpointError(f"{source}: no .safetensors weight files")
    tensors: dict = {}
    for f in files:
        tensors.update(safetensors_header(f))
    prefix, found = weight_layers(tensors)
    if found != n_layers:
        raise CheckpointError(f"{where}: says {n_layers} layers, but the weight files hold "
                              f"{found}{f' ({prefix}.N)' if prefix else ''}")
    return tensors


PARAM_SLACK = 2**20  # parameters a config may describe beyond twice the weights' values


def check_parameter_count(source: str, tensors: dict) -> None:
    """The architecture of the local checkpoint ``source``, built on the meta device (no
    memory), must not have far more parameters than its weight files hold (``tensors``):
    a config.json much larger than its weights is refused before transformers allocates
    it. A smaller difference (a tensor missing) is left to :func:`load_model`, which names
    the tensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(source, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    wanted = sum(p.numel() for p in model.parameters())
    held = sum(t["numel"] for t in tensors.values())
    if wanted > 2 * held + PARAM_SLACK:
        where = Path(source) / "config.json" if Path(source).is_dir() else source
        raise CheckpointError(f"{where}: describes a model of {wanted:,} parameters, but "
                              f"the weight files hold {held:,} values")


def fingerprint(files: list[Path]) -> dict:
    """sha256 of each weight file and of all of them together.

    Hub cache blobs are named by their sha256 already; that name is used without reading.
    """
    from madyn.io import sha256_file

    shards = {}
    for f in files:
        real = f.resolve()
        blob = real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name)
        shards[f.name] = real.name if blob else sha256_file(real)
    overall = hashlib.sha256("".join(shards[k] for k in sorted(shards)).encode()).hexdigest()
    return {"sha256": overall, "shards": shards}


# -------------------------------------------------------------------- structural lookup
def decoder_layers(model) -> list:
    """The decoder blocks of ``model``, found by structure, not by model name.

    The blocks are the one ``nn.ModuleList`` whose length equals the configured number of
    hidden layers and whose entries are all of one class (GPT-NeoX ``gpt_neox.layers``,
    Llama/Mistral ``model.layers``, GPT-2 ``transformer.h``, OPT ``model.decoder.layers``).
    Their outputs are the residual stream after each layer, before any final norm.
    """
    import torch

    n = model.config.num_hidden_layers
    found = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and n > 0
        and len({type(m) for m in mod}) == 1
        and sum(p.numel() for p in mod[0].parameters()) > 0
    ]
    if len(found) != 1:
        names = [nm for nm, _ in found]
        raise ValueError(f"expected exactly one stack of {n} decoder layers, found {names}; "
                         "is this a decoder-only transformer?")
    return list(found[0][1])


def _io_dims(mod) -> tuple[int, int] | None:
    """(in, out) features of a dense projection: ``nn.Linear``, or GPT-2's ``Conv1D``
    (weight in x out, ``nf`` = out); None for anything else."""
    import torch

    if isinstance(mod, torch.nn.Linear):
        return mod.in_features, mod.out_features
    w = getattr(mod, "weight", None)
    if isinstance(getattr(mod, "nf", None), int) and w is not None and w.ndim == 2:
        return int(w.shape[0]), int(mod.nf)
    return None


def mlp_activation(layer, hidden_size: int):
    """The MLP's nonlinearity inside one decoder layer, found by structure.

    The MLP is the module with an up-projection hidden_size -> F and a down-projection
    F -> hidden_size (F != hidden_size) among its direct children (GPT-NeoX ``mlp``, Llama
    ``mlp``, GPT-2 ``mlp``, OPT: the layer itself); its nonlinearity is its first
    parameter-free leaf child that is not dropout. None if there is no such module.
    """
    import torch

    skip = (torch.nn.Dropout, torch.nn.Identity)
    for _, parent in layer.named_modules():
        dims = [d for d in map(_io_dims, parent.children()) if d is not None]
        ups = {o for i, o in dims if i == hidden_size and o != hidden_size}
        if not any(i in ups and o == hidden_size for i, o in dims):
            continue
        for mod in parent.children():
            if (not list(mod.children()) and not list(mod.parameters(recurse=False))
                    and not isinstance(mod, skip)):
                return mod
    return None


# ------------------------------------------------------------------------- statistics
def layer_stats(h, to_numpy: bool = True) -> dict:
    """Statistics of one layer's output, reduced per sequence, in torch on h's device.

    h: B x T x D tensor (any float dtype; computed in float32). Returns a dict of
    length-B arrays keyed by the module docstring's column names: float64 numpy arrays,
    or (``to_numpy=False``) tensors left on the device, so a GPU never waits for the host
    between layers. The reference definition; the CPU runs :func:`_cpu_finish` instead.
    """
    import torch

    h = h.float()
    b, t, d = h.shape
    finite = torch.isfinite(h)
    nonfinite = (~finite).reshape(b, -1).sum(1)
    h = torch.where(finite, h, torch.zeros((), dtype=h.dtype, device=h.device))
    a = h.abs().reshape(b, t * d)
    top = torch.topk(a, 3, dim=1)
    median = a.median(dim=1).values
    idx = top.indices[:, 0]
    ms = h.pow(2).mean(dim=1)  # B x D: mean square per channel
    kurt = ms.pow(2).mean(1) / ms.mean(1).pow(2)
    at = a.view(b, t, d)
    mmr = (at.amax(2) / at.median(2).values).mean(1)
    norms = h.norm(dim=2)  # B x T token norms
    u = h / norms[:, :, None].clamp_min(1e-30)
    cos = (u.sum(1).pow(2).sum(1) - t) / max(t * (t - 1), 1)
    out = {
        "top1": top.values[:, 0], "top2": top.values[:, 1], "top3": top.values[:, 2],
        "median": median, "ratio": top.values[:, 0] / median,
        "top1_token": torch.div(idx, d, rounding_mode="floor"), "top1_channel": idx % d,
        "kurtosis": kurt, "mmr": mmr, "cos_sim": cos, "nonfinite": nonfinite,
        "first_norm_ratio": norms[:, 0] / norms.median(dim=1).values,
        "first_peak_ratio": a[:, :d].amax(1) / median,
    }
    if not to_numpy:
        return out
    return {k: v.double().cpu().numpy() for k, v in out.items()}


def attention_stats(probs, to_numpy: bool = True) -> dict:
    """The definition of ``sink_mass`` on materialised probabilities (the reference that
    :mod:`madyn.sinks` is tested against): probs, B x H x T x T attention probabilities
    (rows: queries, columns: keys); the mean over heads and queries t >= 1 of the
    probability on key 0 (length-B; NaN when T == 1). Query 0 is left out: it can only
    attend to itself."""
    sink = probs[:, :, 1:, 0].float().mean(dim=(1, 2))
    return {"sink_mass": sink.double().cpu().numpy() if to_numpy else sink}


def mlp_stats(act, batch_shape: tuple[int, int], to_numpy: bool = True) -> dict:
    """Activation sparsity of MLP hidden units (seed 003).

    act: B x T x F tensor (or (B*T) x F, as OPT flattens tokens); batch_shape: (B, T).
    """
    import torch

    act = act.reshape(*batch_shape, -1)
    b, t, f = act.shape
    n_pos = (act > 0).view(b, -1).view(torch.uint8).sum(dim=1, dtype=torch.int64)
    seq_active = (act.amax(dim=1) > 0).sum(dim=1)
    out = {"mlp_active_token": n_pos.double() / (t * f),
           "mlp_active_seq": seq_active.double() / f}
    return out if not to_numpy else {k: v.cpu().numpy() for k, v in out.items()}


# values drawn per row to bracket its median (the selection itself stays exact)
MEDIAN_SAMPLE = 65536


def _lower_medians(flat: np.ndarray) -> np.ndarray:
    """Exact lower median of each row of ``flat`` (B x n, no NaN), as ``torch.median``.

    A fixed random sample of each row brackets its median (5 standard deviations of the
    sample's rank either side), so only the ~2 % of values inside the bracket are
    partitioned; a row whose bracket misses the median (odds about 1 in 10^6) is
    partitioned whole. Rows of at most 4 samples' length are partitioned whole.
    """
    b, n = flat.shape
    k = (n - 1) // 2
    m = MEDIAN_SAMPLE
    if n <= 4 * m:
        return np.partition(flat, k, axis=1)[:, k]
    sample = np.sort(flat[:, np.random.default_rng(0).integers(0, n, m)], axis=1)
    centre, margin = k * m / n, 5 * np.sqrt(m) / 2
    j_lo, j_hi = max(int(centre - margin), 0), min(int(centre + margin) + 1, m - 1)
    out = np.empty(b, dtype=flat.dtype)
    for r in range(b):
        row, lo, hi = flat[r], sample[r, j_lo], sample[r, j_hi]
        below = np.count_nonzero(row < lo)  # ranks [below, below + len(inside)) lie in
        inside = row[(row >= lo) & (row <= hi)]  # the bracket, ties included
        if below <= k < below + inside.size:
            out[r] = np.partition(inside, k - below)[k - below]
        else:
            out[r] = np.partition(row, k)[k]
    return out


def _top3(flat: np.ndarray, token_max: np.ndarray) -> np.ndarray:
    """The 3 largest values of each row of ``flat`` (B x n), descending: B x 3.

    ``token_max``: each token's largest value (B x T). Three tokens reach their maxima, so
    the third-largest token maximum is a lower bound of the row's third-largest value,
    and only values at or above it are sorted.
    """
    if token_max.shape[1] < 3:
        return -np.sort(-np.partition(flat, flat.shape[1] - 3, axis=1)[:, -3:], axis=1)
    floor = np.partition(token_max, -3, axis=1)[:, -3]
    return np.stack([-np.sort(-row[row >= f])[:3] for row, f in zip(flat, floor,
                                                                    strict=True)])


def _cpu_finish(a: np.ndarray, usum_sq: np.ndarray, t: int, norms: np.ndarray) -> dict:
    """Second half of :func:`layer_stats` on the CPU, from |h| (B x T x D, float32, a
    private copy), ||sum_t u_t||^2 (B,) and the token norms ||h_t|| (B x T). numpy
    releases the GIL, so this overlaps with the forward pass of the next layers; exact
    selections (``np.partition``, :func:`_lower_medians`, :func:`_top3`) stand in for
    sorting."""
    b, _, d = a.shape
    flat = a.reshape(b, -1)
    nonfinite = np.zeros(b, dtype=np.int64)
    if not np.isfinite(flat.max(axis=1)).all():
        bad = ~np.isfinite(flat)
        nonfinite = bad.sum(axis=1)
        flat[bad] = 0.0  # a is private: zero the non-finite entries in place
    idx = np.argmax(flat, axis=1)
    first_peak = a[:, 0, :].max(axis=1)
    kt = (t - 1) // 2  # lower median of the token norms, as torch.median
    norm_median = np.partition(norms, kt, axis=1)[:, kt]
    ms = np.einsum("btd,btd->bd", a, a) / t  # B x D mean square per channel
    tok = np.partition(a, (d - 1) // 2, axis=2)  # per token: lower median, then the rest
    tok_upper = tok[:, :, (d - 1) // 2:]
    token_max = tok_upper.max(axis=2)
    mmr = (token_max / tok_upper[:, :, 0]).mean(axis=1)
    del tok, tok_upper
    median = _lower_medians(flat)
    top = _top3(flat, token_max)
    f64 = np.float64
    return {
        "top1": top[:, 0].astype(f64), "top2": top[:, 1].astype(f64),
        "top3": top[:, 2].astype(f64), "median": median.astype(f64),
        "ratio": top[:, 0].astype(f64) / median, "top1_token": (idx // d).astype(f64),
        "top1_channel": (idx % d).astype(f64),
        "kurtosis": (ms.astype(f64) ** 2).mean(1) / ms.astype(f64).mean(1) ** 2,
        "mmr": mmr.astype(f64), "cos_sim": (usum_sq - t) / max(t * (t - 1), 1),
        "nonfinite": nonfinite.astype(f64),
        "first_norm_ratio": norms[:, 0].astype(f64) / norm_median,
        "first_peak_ratio": first_peak.astype(f64) / median,
    }


def _cpu_mlp_finish(pos: np.ndarray) -> dict:
    """MLP sparsity from a private boolean array pos = act > 0, B x T x F."""
    b, t, f = pos.shape
    return {"mlp_active_token": np.count_nonzero(pos.reshape(b, -1), axis=1) / (t * f),
            "mlp_active_seq": np.count_nonzero(pos.any(axis=1), axis=1) / f}


@dataclass
class _Collector:
    """Accumulates per-layer statistics; on the CPU, finishes them on a worker thread.

    Hooks copy what they need into private tensors (|h|, act > 0) at once, so nothing
    depends on the model leaving its activations untouched; at most ``max_pending``
    layers wait for the worker, which bounds memory.
    """

    on_cpu: bool
    max_pending: int = 2
    rows: dict = field(default_factory=dict)  # (layer, key) -> list of arrays
    batch_shape: tuple[int, int] = (0, 0)  # (B, T) of the forward pass in flight
    pending: list = field(default_factory=list)  # (layer, future), in order

    def __post_init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1) if self.on_cpu else None

    def _store(self, layer: int, out: dict) -> None:
        for k, v in out.items():
            self.rows.setdefault((layer, k), []).append(v)

    def _submit(self, layer: int, fn: Callable, *args) -> None:
        self.pending.append((layer, self.pool.submit(fn, *args)))
        while len(self.pending) > self.max_pending:
            self._drain_one()

    def _drain_one(self) -> None:
        layer, fut = self.pending.pop(0)
        self._store(layer, fut.result())

    def drain(self) -> None:
        """Finish pending work; bring tensors to the host in one copy (one sync per batch,
        not one per layer and statistic)."""
        while self.pending:
            self._drain_one()
        on_device = [(key, i) for key, parts in self.rows.items()
                     for i, p in enumerate(parts) if hasattr(p, "cpu")]
        if not on_device:
            return
        import torch

        flat = torch.cat([self.rows[k][i].double().reshape(-1) for k, i in on_device])
        host = flat.cpu().numpy()
        at = 0
        for k, i in on_device:
            n = self.rows[k][i].numel()
            self.rows[k][i] = host[at:at + n]
            at += n

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def layer_hook(self, layer: int) -> Callable:
        def _hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            if not self.on_cpu:
                self._store(layer, layer_stats(h, to_numpy=False))
                return
            import torch

            h = h.float()
            norms = torch.linalg.vector_norm(h, dim=2)  # B x T
            if not bool(torch.isfinite(norms).all()):
                h = torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
                norms = torch.linalg.vector_norm(h, dim=2)
            usum = torch.bmm((1.0 / norms.clamp_min(1e-30))[:, None, :], h)[:, 0]
            usum_sq = usum.double().pow(2).sum(1).numpy()
            a = (out[0] if isinstance(out, tuple) else out).float().abs().numpy()
            self._submit(layer, _cpu_finish, a, usum_sq, h.shape[1], norms.numpy().copy())

        return _hook

    def sink(self, layer: int, mass) -> None:
        """Record a layer's sink mass (B-length tensor, from :mod:`madyn.sinks`)."""
        self._store(layer, {"sink_mass": mass if not self.on_cpu else mass.double().numpy()})

    def mlp_hook(self, layer: int) -> Callable:
        def _hook(_mod, _inp, out):
            if not self.on_cpu:
                self._store(layer, mlp_stats(out, self.batch_shape, to_numpy=False))
                return
            pos = (out.reshape(*self.batch_shape, -1) > 0).numpy()
            self._submit(layer, _cpu_mlp_finish, pos)

        return _hook


def _attn_implementation(model) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def measure(model, tokens: np.ndarray, batch_size: int = 10, progress: bool = False,
            extreme_tokens: bool = True) -> pd.DataFrame:
    """Statistics of every decoder layer for every sequence of ``tokens`` (N x T ids).

    Runs the model's body (``model.base_model``), not the LM head: logits are never
    needed, and for Pythia they are the largest tensor of the forward pass.
    ``extreme_tokens``: measure ``sink_mass`` too, from each layer's own fused attention
    (:mod:`madyn.sinks`: one widened SDPA call, no T x T matrix); off: ``sink_mass`` is
    NaN and the model runs as loaded.
    Returns a tidy table: columns ``seq``, ``layer`` and :data:`STAT_COLUMNS`;
    N x L rows. Layers are 0-based decoder-layer indices.
    """
    import torch

    layers = decoder_layers(model)
    device = next(model.parameters()).device
    coll = _Collector(on_cpu=device.type == "cpu")
    handles = []
    hidden = model.config.hidden_size
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(coll.layer_hook(i)))
        act = mlp_activation(layer, hidden)
        if act is not None:
            handles.append(act.register_forward_hook(coll.mlp_hook(i)))
    body = model.base_model  # the decoder stack without the LM head: no logits needed
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    starts = range(0, len(ids), batch_size)
    watch = (sinks.watching(model, layers, coll.sink) if extreme_tokens
             else contextlib.nullcontext())
    try:
        with watch, torch.inference_mode():
            for s in _maybe_tqdm(starts, progress):
                batch = ids[s:s + batch_size]
                coll.batch_shape = tuple(batch.shape)
                body(input_ids=batch.to(device), use_cache=False)
                coll.drain()
                if extreme_tokens and s == 0:
                    _check_sinks_found(coll, len(layers))
    finally:
        for hd in handles:
            hd.remove()
        coll.close()
    n = len(ids)
    frames = []
    for i in range(len(layers)):
        cols = {"seq": np.arange(n), "layer": np.full(n, i)}
        for k in STAT_COLUMNS:
            parts = coll.rows.get((i, k))
            cols[k] = np.concatenate(parts) if parts else np.full(n, np.nan)
        frames.append(pd.DataFrame(cols))
    df = pd.concat(frames, ignore_index=True)
    for k in ("top1_token", "top1_channel", "nonfinite"):
        df[k] = df[k].astype("int64")
    return df


def _check_sinks_found(coll: _Collector, n_layers: int) -> None:
    """Every layer's attention probabilities were seen (else name the first that was not)."""
    for i in range(n_layers):
        if (i, "sink_mass") not in coll.rows:
            raise ValueError(f"decoder layer {i}: its attention does not go through "
                             "transformers' attention functions, so its sink mass cannot "
                             "be read; measure with extreme_tokens=False")


def _maybe_tqdm(it, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc="batches", unit="batch")


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# --------------------------------------------------------------------- one checkpoint
def write_stats(df: pd.DataFrame, meta: dict, path: str | Path) -> None:
    """Write a per-checkpoint table as Parquet with ``meta`` (JSON) in its schema, atomically."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from madyn.io import atomic_path, jsonable

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"madyn": json.dumps(jsonable(meta)).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_stats(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a table written by :func:`write_stats`: (table, metadata)."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"madyn", b"{}"))
    return table.to_pandas(), meta


def measure_checkpoint(source: str, tokens: np.ndarray, *, revision: str | None = None,
                       dtype: str = "float32", device: str = "auto", batch_size: int = 10,
                       progress: bool = False, weights_fp: dict | None = None,
                       extreme_tokens: bool = True) -> tuple[pd.DataFrame, dict]:
    """Load one checkpoint and measure it on ``tokens`` (N x T ids).

    ``weights_fp``: the weights' :func:`fingerprint`, when the caller has it already.
    ``extreme_tokens``: see :func:`measure`.
    Returns the per-(seq, layer) table and its metadata (weights fingerprint, dtype,
    device, shapes, library versions, seconds taken). Raises :class:`CheckpointError`
    or ValueError (bad tokens) naming the checkpoint.
    """
    import time

    t0 = time.monotonic()
    model = load_model(source, revision, dtype, device)
    where = f"{source}@{revision}" if revision else source
    ids = check_tokens(tokens, model.config.vocab_size, f"tokens for {where}")
    fp = weights_fp or fingerprint(weight_files(source, revision))
    df = measure(model, ids, batch_size=batch_size, progress=progress,
                 extreme_tokens=extreme_tokens)
    meta = {
        "source": source, "revision": revision, "weights": fp, "dtype": dtype,
        "device": str(model.device), "n_seqs": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]), "n_layers": len(decoder_layers(model)),
        "median": "lower (torch.median)", "extreme_tokens": extreme_tokens,
        "attn_implementation": sinks.ATTENTION if extreme_tokens
        else _attn_implementation(model),
        "seconds": round(time.monotonic() - t0, 3),
        **versions(),
    }
    return df, meta


# weight files of a hub snapshot (what extract.delete_downloads removes)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def delete_cached_revision(snapshot: str | Path, fetched: dict | None) -> list[Path]:
    """Remove from the hub cache the weights madyn fetched for one revision: the weight
    links and blobs ``fetched`` names (``download_revision``'s record), each blob only when
    no other snapshot links to it. What was cached before madyn downloaded (a revision the
    user fetched) stays, and so do small files (config, tokenizer): identical files are one
    blob shared by every revision, and a download running beside this one may be about to
    link them. ``fetched`` None (a marker from before madyn kept the record): nothing is
    removed. Returns the blobs removed."""
    snap = Path(snapshot)
    if not fetched:
        return []
    links, blobs = set(fetched.get("links", [])), set(fetched.get("blobs", []))
    others = {p.resolve() for s in (snap.parent).iterdir() if s != snap
              for p in s.rglob("*") if p.is_symlink()}
    removed = []
    for link in sorted(snap.rglob("*")):
        if (link.is_symlink() and link.name.endswith(WEIGHT_SUFFIXES)
                and link.relative_to(snap).as_posix() in links):
            blob = link.resolve()
            link.unlink()
            if blob.name in blobs and blob not in others and blob.is_file():
                blob.unlink()
                removed.append(blob)
    return removed


def _cached_weights(repo_id: str) -> tuple[set[str], set[str]]:
    """What the hub cache holds of ``repo_id`` now: its weight links (``commit/file``)
    and the names of its blobs."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    links = {p.relative_to(root / "snapshots").as_posix()
             for p in (root / "snapshots").glob("*/**/*")
             if p.is_symlink() or p.is_file()}
    blobs = {b.name for b in (root / "blobs").glob("*")}
    return links, blobs


# Files a measurement needs from a hub revision: config, weights, tokenizer (no code).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


def download_revision(repo_id: str, revision: str) -> dict:
    """Download one hub revision's weights and config (safetensors only, no code).

    Returns what the measuring job needs: the snapshot folder, its commit, the weights
    fingerprint (hub blobs are named by their sha256, so nothing is read twice) and
    ``fetched``: the weight links and blobs this download added to the cache (what
    :func:`delete_cached_revision` may remove; a revision cached before stays).
    """
    from huggingface_hub import snapshot_download

    had_links, had_blobs = _cached_weights(repo_id)
    snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    files = sorted(snap.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{repo_id}@{revision}: no safetensors weights")
    fetched: dict[str, list[str]] = {"links": [], "blobs": []}
    for link in sorted(snap.rglob("*")):
        rel = link.relative_to(snap).as_posix()
        if link.name.endswith(WEIGHT_SUFFIXES) and f"{snap.name}/{rel}" not in had_links:
            fetched["links"].append(rel)
            if link.is_symlink() and link.resolve().name not in had_blobs:
                fetched["blobs"].append(link.resolve().name)
    return {"repo": repo_id, "revision": revision, "snapshot": str(snap),
            "commit": snap.name, "weights": fingerprint(check_weight_files(files)),
            "bytes": sum(f.resolve().stat().st_size for f in files), "fetched": fetched}
