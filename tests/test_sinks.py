"""Sink mass from the fused attention (madyn.measure.sinks) equals eager attention's
probabilities, for every family madyn trains or loads: GPT-NeoX, Llama (grouped-query),
Qwen3 (QK-norm, grouped-query, sliding-window layers), OLMo2, GPT-2 and OPT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from madyn.measure import sinks
from madyn.measure.statistics import attention_stats, measure

COMMON = {"vocab_size": 64, "max_position_embeddings": 32, "initializer_range": 0.3}


def _tiny(kind: str, attn: str):
    """A 3-layer model of ``kind`` with sharp random attention (large init)."""
    torch.manual_seed(0)
    if kind == "neox":
        cfg = tf.GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                               intermediate_size=64, rotary_pct=0.25, **COMMON)
        cls = tf.GPTNeoXForCausalLM
    elif kind == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, **COMMON)
        cls = tf.LlamaForCausalLM
    elif kind == "qwen3":
        cfg = tf.Qwen3Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=8, intermediate_size=64,
                             use_sliding_window=True, sliding_window=5, max_window_layers=1,
                             **COMMON)
        cls = tf.Qwen3ForCausalLM
    elif kind == "olmo2":
        cfg = tf.Olmo2Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                             intermediate_size=64, **COMMON)
        cls = tf.Olmo2ForCausalLM
    elif kind == "gpt2":
        cfg = tf.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=32, vocab_size=64,
                            initializer_range=0.3)
        cls = tf.GPT2LMHeadModel
    elif kind == "opt":
        cfg = tf.OPTConfig(num_hidden_layers=3, hidden_size=32, ffn_dim=64,
                           num_attention_heads=4, word_embed_proj_dim=32, vocab_size=64,
                           max_position_embeddings=32, init_std=0.3)
        cls = tf.OPTForCausalLM
    else:
        raise ValueError(kind)
    cfg._attn_implementation = attn
    return cls(cfg).eval()


@pytest.mark.parametrize("path", ["fused", "chunked"])
@pytest.mark.parametrize("kind", ["neox", "llama", "qwen3", "olmo2", "gpt2", "opt"])
def test_sink_mass_equals_eager_probabilities(kind, path, monkeypatch):
    """fused: the CPU kernel's own lse; chunked: lse computed beside SDPA (the path of
    other devices), run here on the CPU."""
    if path == "chunked":
        monkeypatch.setattr(sinks, "FUSED_LSE_DEVICES", ())
        monkeypatch.setattr(sinks, "LSE_CHUNK", 7)  # several chunks, the last one partial
    tokens = np.random.default_rng(1).integers(0, 64, size=(3, 24))
    eager = _tiny(kind, "eager")
    with torch.no_grad():
        probs = eager(input_ids=torch.as_tensor(tokens), output_attentions=True).attentions
    want = np.stack([attention_stats(p)["sink_mass"] for p in probs], axis=1)  # B x L
    if kind == "qwen3":  # the sliding-window layers really are windowed
        assert probs[-1][:, :, 10, :5].abs().max() == 0 < probs[0][:, :, 10, :5].abs().max()
    model = _tiny(kind, "sdpa")
    model.load_state_dict(eager.state_dict())
    table = measure(model, tokens, batch_size=2)  # two batches: 2 + 1 sequences
    got = table.pivot(index="seq", columns="layer", values="sink_mass").to_numpy()
    assert want.std() > 0.01  # sharp, varied attention: the comparison means something
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"  # restored afterwards
    # the layers' outputs are bit-identical to the model's own fused attention
    with torch.no_grad():
        hs = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    top1 = table.pivot(index="seq", columns="layer", values="top1").to_numpy()
    for layer in range(2):  # the last hidden state is after the final norm
        np.testing.assert_array_equal(top1[:, layer],
                                      hs[layer + 1].abs().flatten(1).amax(1).numpy())
