"""Measuring a checkpoint layer by layer, within a memory budget.

The model is built as a skeleton whose parameters live on the ``meta`` device (no memory;
buffers such as rotary frequencies are real, computed by the model's own constructor).
What runs before the first decoder layer (embeddings, positions, projections) is loaded
from the safetensors shards and run once per batch, with every decoder layer replaced by
a stub that records its inputs (the hidden states and the per-layer arguments the model
passes: masks, rotary embeddings, positions). Then one decoder layer at a time is read
from the shards (only its own tensors, with ``pread``: nothing is memory-mapped, so the
process's address space stays small under ``ulimit -v``), run on every batch's hidden
states, measured by the same hooks as the whole-model pass
(:mod:`madyn.measure.statistics`, :mod:`madyn.measure.sinks`) and freed. What stays in
memory: the hidden states (N x T x d, in the load dtype), the parts before the first
layer, one layer, and the statistics. Layers and their modules are found by structure
(:func:`madyn.measure.statistics.decoder_layers`), never by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.safetensors_files import safetensors_header

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
GB = 1e9  # max_memory_gb counts decimal gigabytes


# ------------------------------------------------------------------------ estimates
def activation_bytes(hidden: int, ffn: int, batch: int, seq: int) -> int:
    """Bytes of one forward pass's activations inside a decoder layer and of the
    statistics' float32 copies, for ``batch`` x ``seq`` tokens: about 8 float32 copies of
    the B x T x d hidden states and 3 of the B x T x F MLP hidden units (an upper bound
    measured on the CPU; the fused attention holds no T x T matrix)."""
    return batch * seq * (8 * hidden + 3 * ffn) * 4


def whole_model_bytes(config: dict, dtype: str, batch: int, seq: int) -> int:
    """Bytes a whole-model measurement takes: every parameter at ``dtype`` (from
    :func:`madyn.architecture.architecture`'s count) plus :func:`activation_bytes`."""
    from madyn.architecture import architecture

    a = architecture(config)
    return (a["n_params"] * DTYPE_BYTES[dtype]
            + activation_bytes(a["hidden_size"], a["intermediate_size"], batch, seq))


def layerwise_bytes(tensors: dict, layer_prefix: str, dtype: str, hidden: int, ffn: int,
                    n_seqs: int, batch: int, seq: int) -> int:
    """Bytes a layer-by-layer measurement takes: the two largest decoder layers (one runs,
    the next is read) and everything outside the layers (``tensors``: the shards' table,
    names under ``layer_prefix.N.`` are layers), at ``dtype``; all N x T x d hidden
    states; one batch's activations."""
    per_layer: dict[str, int] = {}
    rest = 0
    pat = re.compile(re.escape(layer_prefix) + r"\.(\d+)\.")
    for name, t in tensors.items():
        m = pat.match(name) if layer_prefix else None
        if m:
            per_layer[m[1]] = per_layer.get(m[1], 0) + t["numel"]
        else:
            rest += t["numel"]
    b = DTYPE_BYTES[dtype]
    two = sum(sorted(per_layer.values())[-2:])
    return ((two + rest) * b + n_seqs * seq * hidden * b
            + activation_bytes(hidden, ffn, batch, seq))


def needs_layerwise(config: dict, dtype: str, batch: int, seq: int,
                    max_memory_gb: float | None) -> bool:
    """Whether a whole-model measurement would exceed ``max_memory_gb`` (None: never)."""
    if max_memory_gb is None:
        return False
    return whole_model_bytes(config, dtype, batch, seq) > max_memory_gb * GB


# ------------------------------------------------------------------- reading shards
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                 "U8": "uint8", "BOOL": "bool"}


DIRECT_ALIGN = 4096  # bytes: O_DIRECT reads start, end and land on multiples of this


def _aligned_empty(nbytes: int):
    """Fresh uint8 CPU memory of ``nbytes`` starting at a multiple of DIRECT_ALIGN."""
    import torch

    buf = torch.empty(nbytes + DIRECT_ALIGN, dtype=torch.uint8)
    off = (-buf.data_ptr()) % DIRECT_ALIGN
    return buf[off:off + nbytes]


class Slab:
    """Memory for one decoder layer's tensors, reused by every layer read into it (the
    layers take turns over two slabs: one runs while the next is read)."""

    def __init__(self) -> None:
        self.buf = None
        self.at = 0

    def reset(self, nbytes: int) -> None:
        """Make room for ``nbytes`` (grown when too small) and start from the top."""
        if self.buf is None or self.buf.numel() < nbytes:
            self.buf = _aligned_empty(nbytes)
        self.at = 0

    def take(self, nbytes: int):
        """The next ``nbytes`` of the slab (aligned), as a uint8 tensor."""
        if self.buf is None or self.at + nbytes > self.buf.numel():
            raise MemoryError("slab too small for the layer's tensors")
        view = self.buf[self.at:self.at + nbytes]
        self.at += -(-nbytes // DIRECT_ALIGN) * DIRECT_ALIGN
        return view


class ShardReader:
    """The tensors of a checkpoint's safetensors files, read one at a time with ``pread``
    (no memory map: the address space grows by the tensor read, not by the shard). The
    headers are checked first (:func:`madyn.measure.safetensors_files.safetensors_header`).
    ``direct``: read with ``O_DIRECT`` where the file system allows it (the disk writes
    into the tensor's memory; no copy through the page cache, which costs CPU that the
    forward pass running beside the reads wants), else buffered. ``bytes_read`` and
    ``seconds`` count what was read and how long it took."""

    def __init__(self, files: list[Path], direct: bool = True) -> None:
        self.tensors: dict[str, dict] = {}
        self._files: dict[str, Path] = {}
        for f in files:
            for name, t in safetensors_header(Path(f)).items():
                self.tensors[name] = t
                self._files[name] = Path(f)
        self._fds: dict[Path, tuple[int, int | None]] = {}  # buffered fd, O_DIRECT fd
        self.direct = direct and hasattr(os, "O_DIRECT")
        self.bytes_read = 0
        self.seconds = 0.0

    def _open(self, path: Path) -> tuple[int, int | None]:
        if path not in self._fds:
            from madyn.io import open_regular

            with open_regular(path) as f:  # refuses a FIFO or a device, naming it
                fd = os.dup(f.fileno())
            dfd = None
            if self.direct:
                try:
                    dfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                    if not os.path.samestat(os.fstat(fd), os.fstat(dfd)):
                        os.close(dfd)  # replaced between the two opens: do not trust it
                        dfd = None
                except OSError:
                    dfd = None
            self._fds[path] = (fd, dfd)
        return self._fds[path]

    def read(self, name: str, slab: Slab | None = None):
        """Tensor ``name`` as a CPU tensor of its stored dtype and shape: in fresh memory,
        or in ``slab`` (memory reused from layer to layer: the first touch of fresh
        memory, a page fault per 4 KB, costs more than the disk read itself)."""
        import torch

        t = self.tensors[name]
        dtype = _TORCH_DTYPES.get(t["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self._files[name]}: tensor {name!r} has dtype "
                                  f"{t['dtype']}, which madyn does not read layer by layer")
        t0 = time.monotonic()
        path = self._files[name]
        fd, dfd = self._open(path)
        n, begin = t["offsets"][1] - t["offsets"][0], t["begin"]
        alloc = slab.take if slab is not None else _aligned_empty
        raw = None
        if dfd is not None and n >= DIRECT_ALIGN:
            a0 = begin // DIRECT_ALIGN * DIRECT_ALIGN
            a1 = -(-(begin + n) // DIRECT_ALIGN) * DIRECT_ALIGN
            region = alloc(a1 - a0)
            try:
                got = self._pread(dfd, memoryview(region.numpy()), a0, a1 - a0)
            except OSError:  # a file system that takes O_DIRECT opens but not reads
                self._fds[path] = (fd, None)
                os.close(dfd)
            else:
                if got < begin + n - a0:
                    raise CheckpointError(f"{path}: truncated while reading tensor {name!r}")
                raw = region[begin - a0:begin - a0 + n]
        if raw is None:
            raw = alloc(n)
            if self._pread(fd, memoryview(raw.numpy()), begin, n) < n:
                raise CheckpointError(f"{path}: truncated while reading tensor {name!r}")
        self.bytes_read += n
        self.seconds += time.monotonic() - t0
        try:
            return raw.view(getattr(torch, dtype)).reshape(t["shape"])
        except RuntimeError:  # an offset the dtype cannot view at: copy
            return raw.clone().view(getattr(torch, dtype)).reshape(t["shape"])

    def span(self, name: str) -> int:
        """The most bytes :meth:`read` takes from a :class:`Slab` for tensor ``name``."""
        t = self.tensors[name]
        return t["offsets"][1] - t["offsets"][0] + 3 * DIRECT_ALIGN

    @staticmethod
    def _pread(fd: int, view: memoryview, at: int, n: int) -> int:
        """Read ``n`` bytes at ``at`` into ``view`` (fewer only at the end of the file)."""
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:n]], at + got)
            if k <= 0:
                break
            got += k
        return got

    def close(self) -> None:
        for fd, dfd in self._fds.values():
            os.close(fd)
            if dfd is not None:
                os.close(dfd)
        self._fds.clear()


# ------------------------------------------------------------------------- skeleton
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


# -------------------------------------------------------------------- layer inputs
class _Captured(Exception):
    """Raised by the last layer's stub: the rest of the model's forward is not needed."""


def capture_inputs(body, layers: list, ids) -> tuple[object, list[tuple[tuple, dict]]]:
    """Run ``body`` on ``ids`` with every decoder layer replaced by a stub: the hidden
    states entering layer 0 (B x T x d) and, for each layer, the other arguments the
    model passes it (positional after the hidden states, and keywords: masks, rotary
    embeddings, positions). Masks and positions do not depend on the layers' outputs, so
    a stub passes its input on unchanged."""
    calls: list = [None] * len(layers)
    first: list = []

    def stub(i: int) -> Callable:
        def forward(*args, **kwargs):
            if args:
                hidden, rest = args[0], args[1:]
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
                kwargs["_hidden_as_keyword"] = True
            if i == 0:
                first.append(hidden)
            calls[i] = (rest, kwargs)
            if i == len(layers) - 1:
                raise _Captured
            return hidden

        return forward

    for i, layer in enumerate(layers):
        layer.forward = stub(i)
    try:
        body(input_ids=ids, use_cache=False)
    except _Captured:
        pass
    finally:
        for layer in layers:
            del layer.forward
    if not first or any(c is None for c in calls):
        raise ValueError("the model's forward pass did not call every decoder layer; it "
                         "cannot be measured layer by layer")
    return first[0], calls


def run_layer(layer, hidden, call: tuple[tuple, dict]):
    """``layer`` on ``hidden`` with the arguments :func:`capture_inputs` recorded; the
    hidden states it outputs."""
    rest, kwargs = call
    kwargs = dict(kwargs)
    if kwargs.pop("_hidden_as_keyword", False):
        out = layer(*rest, hidden_states=hidden, **kwargs)
    else:
        out = layer(hidden, *rest, **kwargs)
    return out[0] if isinstance(out, tuple) else out


# ------------------------------------------------------------------------- measuring
def measure_layerwise(source: str, tokens: np.ndarray, files: list[Path], *,
                      dtype: str = "float32", device: str = "cpu", batch_size: int = 10,
                      extreme_tokens: bool = True, prefetch: bool = True,
                      progress: Callable[[str], None] | None = None
                      ) -> tuple[pd.DataFrame, dict]:
    """The statistics of :func:`madyn.measure.statistics.measure` for the checkpoint
    folder ``source`` (weights: the safetensors ``files``), one decoder layer in memory at
    a time (two with ``prefetch``: the next one is read while this one runs). tokens:
    N x T ids (checked by the caller). Returns the table (N x L rows) and what it took:
    layers, bytes read, seconds reading (in the reading thread) / computing, wall seconds
    per layer, the estimated bytes held (:func:`layerwise_bytes`)."""
    import torch

    from madyn.measure import sinks
    from madyn.measure.statistics import (
        _Collector,
        attach_hooks,
        check_sinks_found,
        config_value,
        decoder_layers,
        stats_frame,
    )

    t_start = time.monotonic()
    reader = ShardReader(files)
    try:
        model = skeleton(source, dtype)
        layers = decoder_layers(model)
        body = model.base_model
        names = checkpoint_names(model, body, reader.tensors, source)
        owner = {id(m): n for n, m in body.named_modules()}
        layer_names = [owner[id(layer)] for layer in layers]
        stack = layer_names[0].rpartition(".")[0]
        inside = tuple(f"{n}." for n in layer_names)
        dev = torch.device(device)
        # everything of the body outside the decoder layers (embeddings, norms, ...)
        outer = {k: v for k, v in names.items() if not k.startswith(inside)}
        with torch.no_grad():
            _load_outer(body, outer, reader, dev)
        hidden_size = config_value(model, ("hidden_size", "n_embd", "d_model"))
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        starts = range(0, len(ids), batch_size)
        coll = _Collector(on_cpu=dev.type == "cpu")
        watch = (sinks.watching(model, layers, coll.sink) if extreme_tokens
                 else contextlib.nullcontext())
        per_layer, t_compute = [], 0.0
        with watch:
            with torch.inference_mode():
                captured = [capture_inputs(body, layers, ids[s:s + batch_size].to(dev))
                            for s in starts]
            hiddens = [h for h, _ in captured]
            handles = attach_hooks(coll, layers, hidden_size)

            slabs = (Slab(), Slab())  # layer i is read into slabs[i % 2]

            def fetch(i: int):
                pre = f"{layer_names[i]}."
                return read_state(layers[i], {k[len(pre):]: v for k, v in names.items()
                                              if k.startswith(pre)}, reader, dev,
                                  slabs[i % 2])

            # the next layer is read while this one runs (one reading thread: pread
            # releases the GIL), so a layer costs max(read, compute), not their sum
            pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
            nxt = pool.submit(fetch, 0) if pool else None
            try:
                for i, layer in enumerate(layers):
                    t0, r0 = time.monotonic(), reader.seconds
                    sd = nxt.result() if pool else fetch(i)
                    materialise(layer, sd)
                    del sd
                    if pool and i + 1 < len(layers):
                        nxt = pool.submit(fetch, i + 1)
                    c0 = time.monotonic()
                    with torch.inference_mode():
                        for b, (_, calls) in enumerate(captured):
                            coll.batch_shape = tuple(hiddens[b].shape[:2])
                            hiddens[b] = run_layer(layer, hiddens[b], calls[i])
                    coll.drain()
                    release(layer)
                    t_compute += time.monotonic() - c0
                    per_layer.append(round(time.monotonic() - t0, 4))
                    if progress:
                        progress(f"layer {i + 1}/{len(layers)}: "
                                 f"{reader.seconds - r0:.2f}s reading, "
                                 f"{time.monotonic() - c0:.2f}s computing")
                if extreme_tokens:
                    check_sinks_found(coll, len(layers))
            finally:
                if pool:
                    pool.shutdown(wait=True, cancel_futures=True)
                for hd in handles:
                    hd.remove()
                coll.close()
        arch_ffn = _ffn(model.config, hidden_size)
        info = {"layers": len(layers), "stack": stack, "bytes_read": reader.bytes_read,
                "read_seconds": round(reader.seconds, 3),
                "compute_seconds": round(t_compute, 3), "layer_seconds": per_layer,
                "seconds": round(time.monotonic() - t_start, 3),
                "estimated_bytes": layerwise_bytes(
                    reader.tensors, _prefix_in_shards(names, layer_names[0]), dtype,
                    hidden_size, arch_ffn, len(ids), min(batch_size, len(ids)),
                    int(ids.shape[1]))}
        return stats_frame(coll, len(ids), len(layers)), info
    finally:
        reader.close()


def _load_outer(body, outer: dict[str, str], reader: ShardReader, device) -> None:
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


def _ffn(config, hidden: int) -> int:
    for k in ("intermediate_size", "n_inner", "ffn_dim"):
        v = getattr(config, k, None)
        if isinstance(v, int):
            return v
    return 4 * hidden


def _prefix_in_shards(names: dict[str, str], first_layer: str) -> str:
    """The name prefix of the decoder stack in the shards (``model.layers``), from the
    shard name of a tensor of the first layer."""
    pre = f"{first_layer}."
    for k, v in names.items():
        if k.startswith(pre):
            return v[: len(v) - len(k) + len(first_layer)].rpartition(".")[0]
    return ""
