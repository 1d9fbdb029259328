"""Attention-sink mass from each layer's own fused attention, without a T x T matrix.

madyn registers a transformers attention function (:data:`ATTENTION`) that runs each
watched layer's attention through the fused kernel SDPA itself dispatches to, and reads
the attention that each query t puts on key 0 on the way, with O(T) extra memory:

- float32 on the CPU: query, key and value gain one channel (0, 0, and 1 at key 0), so
  the kernel's extra output channel is its own softmax weight on key 0 (a saturated
  softmax gives exactly 1, as eager attention does); the first D output channels are the
  layer's output, bit-identical under the pinned kernels (:mod:`madyn.kernels`; tested),
  within 4.4e-7 relative under MKL's AVX2 branch;
- half precision on the CPU: the kernel's log-sum-exp, p = exp(q_t . k_0 * scale - lse_t)
  in float32 (an extra channel would be rounded to the half type);
- elsewhere (CUDA): SDPA as usual, and lse with the key-0 score from one matrix product
  per chunk of queries (O(chunk x T) memory).

Queries and keys are the layer's own, after rotary, QK-norm, grouped-query sharing and
any sliding-window mask, so the mass equals eager attention's ``probs[:, :, t, 0]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

ATTENTION = "madyn_sdpa_sinks"  # the attn_implementation name madyn registers
FUSED_LSE_DEVICES = ("cpu",)  # devices whose SDPA kernel is called directly for its lse
LSE_CHUNK = 256  # queries per chunk where lse is computed apart from the kernel

# id(attention module) -> callback(B-length sink mass tensor), while a measurement runs
_RECORDERS: dict[int, Callable] = {}


def _additive(mask, dtype):
    """A boolean mask (True: may attend) as an additive one (0 or -inf); float: as is."""
    import torch

    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf"))


def _chunked_key0(query, key, mask, causal: bool, scale: float):
    """Each query's softmax weight on key 0, B x H x T (float32), from the scores of a
    chunk of :data:`LSE_CHUNK` queries at a time. query, key: B x H x T x D (key heads
    repeated)."""
    import torch

    t_q, t_k = query.shape[2], key.shape[2]
    kt = key.float().transpose(-1, -2)
    parts = []
    for s in range(0, t_q, LSE_CHUNK):
        sc = (query[:, :, s:s + LSE_CHUNK].float() @ kt) * scale
        if mask is not None:
            sc = sc + mask[:, :, s:s + LSE_CHUNK, :t_k].float()
        if causal:
            rows = torch.arange(s, s + sc.shape[2], device=sc.device)[:, None]
            sc = sc.masked_fill(torch.arange(t_k, device=sc.device)[None] > rows,
                                float("-inf"))
        parts.append(torch.exp(sc[..., 0] - torch.logsumexp(sc, dim=-1)))
    return torch.cat(parts, dim=-1)


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0,
               scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention, plus the sink mass of the layer when it is watched.

    query: B x H x T x D; key, value: B x Hkv x T x D. Returns (B x T x H x D, None)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    record = _RECORDERS.get(id(module))
    if record is None or dropout or kwargs.get("softcap") or kwargs.get("position_bias") \
            is not None:  # not watched, or what SDPA cannot do: no sink recorded
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, :key.shape[-2]]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal and attention_mask is None and query.shape[2] > 1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = _additive(attention_mask, query.dtype)
    flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if query.device.type in FUSED_LSE_DEVICES and query.dtype == torch.float32:
        zero = torch.zeros_like(query[..., :1])
        first = torch.zeros_like(value[..., :1])
        first[:, :, 0] = 1
        out = flash_cpu(torch.cat([query, zero], -1), torch.cat([key, zero], -1),
                        torch.cat([value, first], -1), 0.0, causal, attn_mask=mask,
                        scale=scale)[0]
        p0, out = out[..., -1], out[..., :-1]
    elif query.device.type in FUSED_LSE_DEVICES:
        out, lse = flash_cpu(query, key, value, 0.0, causal, attn_mask=mask, scale=scale)[:2]
        s0 = (query.float() * key[:, :, :1].float()).sum(-1) * scale  # B x H x T
        if mask is not None:
            s0 = s0 + mask[..., 0].float()
        p0 = torch.exp(s0 - lse.float())
    else:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, is_causal=causal, scale=scale)
        p0 = _chunked_key0(query, key, mask, causal, scale)
    # mean over heads and queries t >= 1 (query 0 can only attend to itself)
    record(p0[:, :, 1:].float().mean(dim=(1, 2)))
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`ATTENTION` a valid ``attn_implementation`` (idempotent): its attention
    function and SDPA's mask builder."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextmanager
def watching(model, layers: list, record: Callable[[int, object], None]) -> Iterator[None]:
    """Within the block, ``model`` runs :data:`ATTENTION` and every attention call inside
    decoder layer i calls ``record(i, sink)`` (sink: B-length float32 tensor). The model's
    attention implementation is restored afterwards."""
    register()
    was = getattr(model.config, "_attn_implementation", None)
    watched = {id(m): (lambda s, i=i: record(i, s))
               for i, layer in enumerate(layers) for m in layer.modules()}
    model.set_attn_implementation(ATTENTION)
    _RECORDERS.update(watched)
    try:
        yield
    finally:
        for k in watched:
            _RECORDERS.pop(k, None)
        if was is not None and was != ATTENTION:
            model.set_attn_implementation(was)
