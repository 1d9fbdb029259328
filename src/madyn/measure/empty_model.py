"""The model of a checkpoint folder built empty and filled from its shards part by part, for
the layer-by-layer measurement (:mod:`madyn.measure.layerwise`). Its parameters live on the
``meta`` device (no memory; buffers such as rotary frequencies are computed by its own
constructor); each parameter and persistent buffer is matched to the shard tensor that
holds it (missing or unexpected tensors refused, as transformers' loading refuses them);
a module's tensors are read (:class:`madyn.measure.shard_reader.ShardReader`), cast to the
skeleton's dtype and assigned in place, and freed afterwards, the freed memory handed back
to the system."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.shard_reader import ShardReader, Slab


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Within the block, every parameter a module registers is moved to the ``meta``
    device (no memory), while buffers stay where the constructor made them (rotary
    frequencies, masks: computed, not loaded). torch only (as ``accelerate``'s
    ``init_empty_weights(include_buffers=False)``). ``torch.empty`` without a device,
    what ``nn.Linear`` and ``nn.Embedding`` make their weights from, gives meta tensors
    at once: a 7B model's weights are never allocated, not even for a moment (under
    ``ulimit -v`` such passing allocations failed now and then)."""
    import torch
    from torch.overrides import TorchFunctionMode

    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=False)

    class EmptyOnMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.empty and kwargs.get("device") in (None, "cpu"):
                kwargs = {**kwargs, "device": "meta"}
            return func(*args, **kwargs)

    torch.nn.Module.register_parameter = register
    try:
        with EmptyOnMeta():
            yield
    finally:
        torch.nn.Module.register_parameter = original


def skeleton(source: str, dtype: str):
    """The causal LM of the checkpoint folder ``source`` with its parameters on the meta
    device, in eval mode (built from its config.json; never remote code)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(source, trust_remote_code=False)
    with empty_parameters():
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False,
                                                 dtype=getattr(torch, dtype))
    return model.eval()


def _ignored(model, kind: str) -> list[re.Pattern]:
    """The patterns of checkpoint keys transformers' loading ignores when ``kind``
    (``missing`` / ``unexpected``): the model's own, and, as transformers adds them, the
    per-layer ``rotary_emb.inv_freq`` and the ``position_ids`` buffers old checkpoints
    hold (Pythia's)."""
    pats = set(getattr(model, f"_keys_to_ignore_on_load_{kind}", None) or [])
    if kind == "unexpected":
        bufs = [n for n, _ in model.named_buffers()]
        if any(n.endswith("rotary_emb.inv_freq") for n in bufs):
            pats.add(r"rotary_emb\.inv_freq")
        if any(n.endswith("position_ids") for n in bufs):
            pats.add(r"(^|\.)position_ids$")
    return [re.compile(p) for p in sorted(pats)]


def checkpoint_names(model, body, tensors: dict, where: str) -> dict[str, str]:
    """For each parameter and persistent buffer of ``body`` (the model's decoder stack, no
    LM head), by its name in ``body``: the tensor of the shards that holds it (the model's
    own name, or the same without the base-model prefix). CheckpointError naming
    ``where`` when a tensor is missing, or the shards hold one under the body's prefix
    that the model does not have (those transformers itself ignores excepted), as the
    whole-model load refuses. Tensors outside the body (the LM head, under whatever name
    the checkpoint gives it) are never read."""
    prefix = next(n for n, m in model.named_modules() if m is body)
    pre = f"{prefix}." if prefix else ""
    names: dict[str, str] = {}
    missing = []
    for name in body.state_dict(keep_vars=True):
        for cand in (pre + name, name):
            if cand in tensors:
                names[name] = cand
                break
        else:
            if not any(p.search(pre + name) for p in _ignored(model, "missing")):
                missing.append(pre + name)
    used = set(names.values())
    prefixed = any(n.startswith(pre) for n in tensors)  # else: a base model's shards
    unexpected = [n for n in tensors if n not in used and (n.startswith(pre) or not prefixed)
                  and not any(p.search(n) for p in _ignored(model, "unexpected"))]
    if missing or unexpected:
        parts = ([f"missing keys {sorted(missing)}"] if missing else []) + \
            ([f"unexpected keys {sorted(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{where}: weights do not match the architecture: "
                              + "; ".join(parts))
    return names


def read_state(module, names: dict[str, str], reader: ShardReader, device,
               slab: Slab | None = None) -> dict:
    """``module``'s parameters and persistent buffers (``names``: their names within
    ``module`` -> shard tensor names) read from the shards onto ``device`` (into ``slab``
    when given: the tensors stay views of it), each cast to the dtype the skeleton gives
    it; CheckpointError naming a tensor whose shape differs."""
    state = module.state_dict(keep_vars=True)
    if slab is not None:
        slab.reset(sum(reader.span(names[k]) for k in state))
    sd = {}
    for k, v in state.items():
        t = reader.read(names[k], slab)
        if list(t.shape) != list(v.shape):
            raise CheckpointError(f"{names[k]}: the shards hold {list(t.shape)}, the "
                                  f"architecture makes {list(v.shape)}")
        sd[k] = t.to(device=device, dtype=v.dtype)
    return sd


def materialise(module, sd: dict) -> None:
    """Give ``module`` the tensors ``sd`` (:func:`read_state`) in place of its empty
    parameters and buffers (``load_state_dict(assign=True)``: no copy; buffers the
    checkpoint does not hold, such as rotary frequencies, stay as built)."""
    import torch

    with torch.no_grad():
        module.load_state_dict(sd, strict=True, assign=True)
    for p in module.parameters():
        p.requires_grad_(False)


def release(module) -> None:
    """Free ``module``'s parameters and buffers (back to the meta device), and hand the
    freed memory back to the system (glibc keeps freed blocks below its 32 MB mmap
    threshold in its heap, where the next layer's tensors, allocated between
    activations, do not always fit: resident memory would grow by about one layer per
    layer)."""
    module.to_empty(device="meta")
    _trim()


def _trim() -> None:
    """``malloc_trim(0)`` where the C library has it (glibc); nothing elsewhere."""
    import ctypes
    import ctypes.util

    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _LIBC = False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)


_LIBC = None


def load_outer(body, outer: dict[str, str], reader: ShardReader, device) -> None:
    """Load the tensors ``outer`` names (``body``'s parameters and buffers outside the
    decoder layers: name in ``body`` -> shard tensor), module by module."""
    owners: dict[str, dict[str, str]] = {}
    for k, v in outer.items():
        mod, _, leaf = k.rpartition(".")
        owners.setdefault(mod, {})[leaf] = v
    for mod_name, leaves in owners.items():
        mod = body.get_submodule(mod_name) if mod_name else body
        _load_direct(mod, leaves, reader, device)


def _load_direct(module, leaves: dict[str, str], reader: ShardReader, device) -> None:
    """Replace ``module``'s own (not its children's) parameters and buffers ``leaves``
    (name -> shard tensor) with the shards' tensors on ``device``."""
    import torch

    for leaf, src in leaves.items():
        cur = getattr(module, leaf)
        t = reader.read(src)
        if list(t.shape) != list(cur.shape):
            raise CheckpointError(f"{src}: the shards hold {list(t.shape)}, the "
                                  f"architecture makes {list(cur.shape)}")
        t = t.to(device=device, dtype=cur.dtype)
        if leaf in module._parameters:
            module._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
        else:
            module._buffers[leaf] = t
