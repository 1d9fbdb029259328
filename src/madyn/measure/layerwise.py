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
(:func:`madyn.measure.statistics.decoder_layers`), never by name. The empty model and
its loading are :mod:`madyn.measure.empty_model`, the shard reader
:mod:`madyn.measure.shard_reader`, the memory it takes :mod:`madyn.measure.memory_estimates`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.measure.empty_model import (
    checkpoint_names,
    load_outer,
    materialise,
    read_state,
    release,
    skeleton,
)
from madyn.measure.memory_estimates import layerwise_bytes
from madyn.measure.shard_reader import ShardReader, Slab


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
            load_outer(body, outer, reader, dev)
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
