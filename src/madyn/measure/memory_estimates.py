"""Memory estimates of measuring a checkpoint, in bytes: whole (every parameter at the load
dtype plus one batch's activations, from config.json) or layer by layer
(:mod:`madyn.measure.layerwise`: the two largest decoder layers, everything outside the
layers, all N x T x d hidden states and one batch's activations, from the shards' tensor
table); and whether the whole model exceeds a budget (``max_memory_gb``, decimal gigabytes;
None: no budget). Nothing is built or read to compute them."""

from __future__ import annotations

import re

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
GB = 1e9  # max_memory_gb counts decimal gigabytes


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
