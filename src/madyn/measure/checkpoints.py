"""Loading a checkpoint madyn may measure: its ``config.json`` and safetensors files (a
local folder, or a hub revision as cached), every check made before a model is built from
them (:mod:`madyn.measure.config_values`, :mod:`madyn.measure.safetensors_files`,
:mod:`madyn.measure.config_vs_weights`), the causal LM loaded from safetensors (or from
PyTorch pickles read with ``weights_only``), the evaluation tokens checked against its
vocabulary, and the weights' fingerprint (sha256 per file and overall)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from madyn.architecture import ArchitectureError, check_decoder_only
from madyn.measure.checkpoint_error import CheckpointError, one_line
from madyn.measure.config_values import config_layers
from madyn.measure.config_vs_weights import check_config_matches_weights, check_parameter_count
from madyn.measure.gpus import visible_gpus
from madyn.measure.safetensors_files import check_weight_files, shard_names
from madyn.settings import ExtractSettings, resolve_device

_DEFAULT = ExtractSettings()


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
                              f"({type(e).__name__}: {one_line(e)})") from None
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
    layers and its size
    (:func:`madyn.measure.config_vs_weights.check_config_matches_weights`,
    :func:`madyn.measure.config_vs_weights.check_parameter_count`); CheckpointError naming
    it otherwise."""
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
    device is refused naming it, see
    :func:`madyn.measure.safetensors_files.check_weight_files`)."""
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
