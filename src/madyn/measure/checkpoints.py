"""Checkpoints madyn may measure: loading a causal LM, every check made before anything
is built from its files (safetensors headers, configured layers and size, the evaluation
tokens), and the weights' fingerprint."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import numpy as np

from madyn.architecture import ArchitectureError, check_decoder_only
from madyn.measure.gpus import visible_gpus
from madyn.settings import ExtractSettings, resolve_device

_DEFAULT = ExtractSettings()


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



def load_model(source: str, revision: str | None = None, dtype: str = _DEFAULT.dtype,
               device: str = _DEFAULT.device, attn_implementation: str | None = None):
    """Load a causal LM from a local HF directory or a hub repo id at ``revision``.

    Safetensors only, never remote code. ``dtype``: float32, float16 or bfloat16.
    ``attn_implementation``: e.g. ``eager`` (materialises attention probabilities, which
    ``sink_mass`` needs); None: transformers' default.
    A checkpoint whose weight files miss a tensor of the architecture, or hold one it does
    not have, is refused (transformers would initialise the missing one randomly).
    Returns the model in eval mode on the resolved device
    (:func:`madyn.settings.resolve_device`); defaults: :class:`ExtractSettings`'.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    _require_folder(source)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    check_before_building(source, model_config(source, revision))
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            source,
            revision=revision,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}),
        )
    except Exception as e:  # noqa: BLE001 (checked above; whatever is left, named)
        if not Path(source).is_dir():
            raise
        raise CheckpointError(f"{source}: transformers could not load it "
                              f"({type(e).__name__}: {_one_line(e)})") from None
    bad = {k: sorted(v) for k, v in info.items()
           if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        where = f"{source}@{revision}" if revision else source
        raise CheckpointError(f"{where}: weights do not match the architecture: "
                              + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in bad.items()))
    return model.to(resolve_device(device, visible_gpus())).eval()


def check_before_building(source: str, config: dict) -> None:
    """Every check made before a model is built from ``source`` (its ``config``): a
    decoder-only causal LM, no remote code; for a folder, the weight files' headers, its
    layers and its size (:func:`check_config_matches_weights`,
    :func:`check_parameter_count`); CheckpointError naming it otherwise."""
    try:
        check_decoder_only(config, source)
    except ArchitectureError as e:
        raise CheckpointError(str(e)) from None
    refuse_remote_code(config, source)
    if Path(source).is_dir():  # before building anything: headers, layers, size
        tensors = check_config_matches_weights(source, config, weight_files(source))
        check_parameter_count(source, tensors)
    else:
        config_layers(config, source)


def refuse_remote_code(config: dict, where: str) -> None:
    """CheckpointError when a config names ``auto_map`` (its own model code, which madyn
    never runs)."""
    if "auto_map" in config:
        raise CheckpointError(f"{where}: config.json names auto_map (custom model code); "
                              "madyn never runs a checkpoint's own code (trust_remote_code)")


def load_pickle_model(source: str, files: list[Path], dtype: str = _DEFAULT.dtype,
                      device: str = _DEFAULT.device):
    """A causal LM from ``source``'s config.json and weights read from PyTorch pickles
    ``files`` with ``torch.load(weights_only=True)`` only (a file that needs more is
    refused, never unpickled in full). A state dict under ``state_dict`` or ``model``
    (Lightning, nanoGPT) is accepted, ``_orig_mod.`` (torch.compile) and a common
    ``model.`` prefix stripped. The tensors are written to a temporary safetensors copy
    beside the config and loaded by :func:`load_model`, with every check it makes."""
    import shutil
    import tempfile

    import torch
    from safetensors.torch import save_file

    config = model_config(source)
    refuse_remote_code(config, source)
    state: dict = {}
    for f in files:
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (the restricted unpickler refuses in many ways)
            why = " ".join(str(e).split())[:160]
            raise CheckpointError(f"{f}: not loadable with torch.load(weights_only=True) "
                                  f"({why}); madyn never unpickles it in full") from None
        for key in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor)
                                                for v in obj.values()):
            raise CheckpointError(f"{f}: holds no state dict of tensors")
        state.update({k.removeprefix("_orig_mod."): v for k, v in obj.items()})
    if state and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    with tempfile.TemporaryDirectory(prefix="madyn-pickle-") as tmp:
        shutil.copy(Path(source) / "config.json", Path(tmp) / "config.json")
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()},
                  str(Path(tmp) / "model.safetensors"))
        try:
            return load_model(tmp, dtype=dtype, device=device)
        except CheckpointError as e:
            raise CheckpointError(str(e).replace(tmp, source)) from None


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

    _require_folder(source)
    local = Path(source)
    if local.is_dir():
        return check_weight_files(sorted(local.glob("*.safetensors")))

    def cached(name: str) -> Path | None:
        p = try_to_load_from_cache(source, name, revision=revision)
        return Path(p) if isinstance(p, str) else None

    idx = cached("model.safetensors.index.json")
    names = shard_names(idx) if idx else ["model.safetensors"]
    files = [cached(n) for n in names]
    if any(f is None for f in files):
        raise FileNotFoundError(f"{source}@{revision}: weights not in the hub cache")
    return check_weight_files(files)


# ------------------------------------------------------------ checks before building
SAFETENSORS_HEADER_LIMIT = 16 * 2**20  # bytes (the library allows 100 MB: 1.4 M empty
# tensors there cost 1.45 GB to parse); a real header takes about 100 bytes per tensor
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
               "F8_E5M2": 1}


def shard_names(index: Path) -> list[str]:
    """The shard file names a ``model.safetensors.index.json`` maps its tensors to (each a
    plain name in the index's folder); CheckpointError naming the index otherwise."""
    from madyn.io import read_json

    data = read_json(index)
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(
            isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
            for v in wmap.values()):
        raise CheckpointError(f"{index}: no weight_map of tensor -> shard file names")
    return sorted(set(wmap.values()))


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
    """The tensor table of a safetensors file (name -> shape, numel, dtype, data offsets and
    ``begin``: the tensor's first byte in the file), checked against the
    file before anything is built from it, as the safetensors library checks it when
    loading. CheckpointError naming the file when it is truncated, its header length field
    lies or points past the data, the header is larger than
    :data:`SAFETENSORS_HEADER_LIMIT` or not JSON, a tensor's dtype is not one of
    :data:`DTYPE_SIZES`, its bytes do not fit its shape or the file, or the tensors' bytes
    overlap or leave a gap (each must start where the one before ends, the last end the
    file)."""
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
        if item is None:
            raise bad(f"tensor {name!r} has dtype {t.get('dtype')!r}, not one madyn loads "
                      f"({', '.join(DTYPE_SIZES)})")
        numel = 1
        for d in shape:
            numel *= d
        if numel * item != offsets[1] - offsets[0]:
            raise bad(f"tensor {name!r}: {t['dtype']} {shape} takes {numel * item} bytes, "
                      f"its data offsets span {offsets[1] - offsets[0]}")
        tensors[name] = {"shape": shape, "numel": numel, "offsets": offsets,
                         "dtype": t["dtype"], "begin": 8 + n + offsets[0]}
    spans = sorted((t["offsets"], name) for name, t in tensors.items())
    for ((_, end), before), ((start, _), name) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise bad(f"tensor {name!r}'s bytes overlap tensor {before!r}'s (data_offsets)")
    end = 0
    for (start, stop), name in spans:
        if start > end:
            raise bad(f"the {start - end} bytes before tensor {name!r} belong to no tensor "
                      "(data_offsets)")
        end = stop
    if end != data_len:
        raise bad(f"the last {data_len - end} bytes of its data belong to no tensor "
                  "(data_offsets)")
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


MAX_SIZE = 2**24  # largest value of a size key other than layers (16,777,216: above any
# real model's width, vocabulary or context; a product of two stays far inside int64 bytes)
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
HEAD_KEYS = ("num_attention_heads", "n_head")
ACTIVATION_KEYS = ("hidden_act", "activation_function", "hidden_activation")
ROTARY_KEYS = ("partial_rotary_factor", "rotary_pct")
ROPE_DICTS = ("rope_parameters", "rope_scaling")


@functools.lru_cache(maxsize=1)
def known_activations() -> frozenset[str]:
    """The activation names transformers builds (``transformers.activations.ACT2CLS``'s
    keys), read from that module's source without importing it: importing it imports
    torch, seconds at every Snakemake start that plans a run folder. The import is the
    fallback when the source holds no literal ``ACT2CLS = {...}``."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if spec is not None and spec.origin is not None:
        source = Path(spec.origin).with_name("activations.py")
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            tree = None
        for node in ast.walk(tree) if tree is not None else ():
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(isinstance(t, ast.Name) and t.id == "ACT2CLS"
                            for t in node.targets)
                    and all(isinstance(k, ast.Constant) and isinstance(k.value, str)
                            for k in node.value.keys)):
                return frozenset(k.value for k in node.value.keys)
    from transformers.activations import ACT2FN

    return frozenset(ACT2FN)


def check_config_values(config: dict, where: str) -> None:
    """The values transformers builds a model from, checked before it does (it would raise
    a KeyError, a ZeroDivisionError or a storage overflow while building): each size key
    of :data:`SIZE_KEYS` a whole number >= 0, at most :data:`MAX_SIZE` (layers excepted:
    they are compared with the weights); attention heads >= 1, dividing the width unless
    ``head_dim`` is given; key/value heads >= 1, dividing the heads; an activation
    (:data:`ACTIVATION_KEYS`) that transformers knows; a rotary fraction
    (:data:`ROTARY_KEYS`, at the top level or in ``rope_parameters``/``rope_scaling``) in
    (0, 1]. CheckpointError naming ``where`` and the key otherwise."""
    import math

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{where}: {why}")

    for key in SIZE_KEYS:
        v = config.get(key)
        if v is not None and not (_whole(v) and v >= 0):
            raise bad(f"{key} must be a whole number, got {v!r}")
        if v is not None and key not in LAYER_KEYS and v > MAX_SIZE:
            raise bad(f"{key} is {v}, at most {MAX_SIZE:,} allowed (no model is that large)")
    width = next((config[k] for k in WIDTH_KEYS if config.get(k) is not None), None)
    for key in HEAD_KEYS:
        heads = config.get(key)
        if heads is None:
            continue
        if heads < 1:
            raise bad(f"{key} must be at least 1, got {heads}")
        if width is not None and config.get("head_dim") is None and width % heads:
            wkey = next(k for k in WIDTH_KEYS if config.get(k) is not None)
            raise bad(f"{key} {heads} does not divide {wkey} {width}")
        kv = config.get("num_key_value_heads")
        if kv is not None and (kv < 1 or heads % kv):
            raise bad(f"num_key_value_heads must be at least 1 and divide {key} {heads}, "
                      f"got {kv}")
    for key in ACTIVATION_KEYS:
        act = config.get(key)
        if act is None:
            continue
        if not (isinstance(act, str) and act in known_activations()):
            raise bad(f"{key} {act!r} is not an activation transformers knows")
    places = [("", config)] + [(f"{k}.", config[k]) for k in ROPE_DICTS
                                if isinstance(config.get(k), dict)]
    for prefix, d in places:
        for key in ROTARY_KEYS:
            v = d.get(key)
            if v is None:
                continue
            if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and 0 < v <= 1):
                raise bad(f"{prefix}{key} must be in (0, 1], got {v!r}")


def config_layers(config: dict, where: str) -> int:
    """The configured number of decoder layers; the config's values are checked first
    (:func:`check_config_values`), layers must be >= 1; CheckpointError naming ``where``
    and the key otherwise."""
    check_config_values(config, where)
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

    where = Path(source) / "config.json" if Path(source).is_dir() else source
    try:
        cfg = AutoConfig.from_pretrained(source, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 (a config transformers cannot build, any way)
        raise CheckpointError(f"{where}: transformers cannot build the model it describes "
                              f"({type(e).__name__}: {_one_line(e)})") from None
    wanted = sum(p.numel() for p in model.parameters())
    held = sum(t["numel"] for t in tensors.values())
    if wanted > 2 * held + PARAM_SLACK:
        raise CheckpointError(f"{where}: describes a model of {wanted:,} parameters, but "
                              f"the weight files hold {held:,} values")
    for name, p in model.named_parameters():
        t = tensors.get(name)
        if t is not None and list(p.shape) != t["shape"]:
            raise CheckpointError(f"{where}: makes {name} {list(p.shape)}, but the weight "
                                  f"files hold it as {t['shape']}")


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
