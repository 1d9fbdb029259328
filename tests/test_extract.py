"""Extraction: statistics match an independent recomputation; layers found structurally."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madyn.io import read_json
from madyn.measure.checkpoints import load_model
from madyn.measure.statistics import (
    _Collector,
    attention_stats,
    decoder_layers,
    layer_stats,
    measure,
)
from madyn.measure.stats_table import read_stats


def _tokens(corpus_dir, n=3, t=32) -> np.ndarray:
    from madyn.train.corpus import eval_windows

    return eval_windows(np.load(corpus_dir / "heldout.npy"), n, t, seed=0)


def _raw_layer_outputs(model, tokens) -> list[np.ndarray]:
    """Decoder-layer outputs without hooks: hidden_states with the final norm removed."""
    final_norm = model.gpt_neox.final_layer_norm
    model.gpt_neox.final_layer_norm = torch.nn.Identity()
    try:
        with torch.no_grad():
            hs = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    finally:
        model.gpt_neox.final_layer_norm = final_norm
    return [h.double().numpy() for h in hs[1:]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_top_and_median_match_independent_recomputation(tiny_model_dir, corpus_dir, dtype):
    """float32 and bf16 weights (as Pythia is measured on a GPU): statistics in float32 of
    the layer outputs in the weights' dtype, exact for the order statistics."""
    step = read_json(tiny_model_dir / "manifest.json")["steps"][-1]
    model = load_model(str(tiny_model_dir / f"step{step}"), dtype=dtype, device="cpu")
    tokens = _tokens(corpus_dir)
    table = measure(model, tokens, batch_size=2)  # two batches: 2 + 1 sequences
    # the same batches and attention as measure's (in bf16 their rounding shows): the
    # model's own fused attention, which madyn.measure.sinks leaves unchanged
    model.set_attn_implementation("sdpa")
    raw = [np.concatenate(hs) for hs in zip(_raw_layer_outputs(model, tokens[:2]),
                                           _raw_layer_outputs(model, tokens[2:]), strict=True)]
    assert table["layer"].nunique() == len(raw) == model.config.num_hidden_layers
    rtol = 0 if dtype == "bfloat16" else 1e-5  # bf16 values are exact in float32
    for layer, h in enumerate(raw):
        rows = table[table["layer"] == layer].sort_values("seq")
        a = np.sort(np.abs(h).reshape(len(tokens), -1), axis=1)  # full sort, ascending
        n = a.shape[1]
        np.testing.assert_allclose(rows["top1"], a[:, -1], rtol=rtol)
        np.testing.assert_allclose(rows["top2"], a[:, -2], rtol=rtol)
        np.testing.assert_allclose(rows["top3"], a[:, -3], rtol=rtol)
        np.testing.assert_allclose(rows["median"], a[:, (n - 1) // 2], rtol=rtol)  # lower
        assert np.isfinite(rows[["kurtosis", "mmr", "cos_sim"]].to_numpy()).all()
        flat = np.abs(h).reshape(len(tokens), -1).argmax(1)
        d = h.shape[-1]
        assert (rows["top1_token"].to_numpy() == flat // d).all()
        assert (rows["top1_channel"].to_numpy() == flat % d).all()
    # the last layer's output is the residual stream, not the final-LayerNorm output
    with torch.no_grad():
        post_ln = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True
                        ).hidden_states[-1]
    last = table[table["layer"] == len(raw) - 1].sort_values("seq")["top1"].to_numpy()
    assert not np.allclose(last, post_ln.abs().flatten(1).amax(1).double().numpy(),
                           rtol=1e-3)


def test_outlier_metrics_match_definitions():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 16, 32, generator=g, dtype=torch.float64)
    h[1, :, 5] += 40.0  # an outlier channel in sequence 1
    s = layer_stats(h)
    for b in range(2):
        x = h[b].numpy()
        rms = np.sqrt((x**2).mean(0))
        assert s["kurtosis"][b] == pytest.approx((rms**4).mean() / (rms**2).mean() ** 2)
        a = np.abs(x)
        assert s["mmr"][b] == pytest.approx((a.max(1) / np.sort(a, 1)[:, 15]).mean())
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = u @ u.T
        assert s["cos_sim"][b] == pytest.approx(c[~np.eye(16, dtype=bool)].mean())
    assert s["kurtosis"][1] > 10 * s["kurtosis"][0]
    assert s["cos_sim"][1] > 0.9 > s["cos_sim"][0]


def test_nonfinite_values_are_counted_not_propagated():
    h = torch.ones(1, 4, 8)
    h[0, 0, 0] = float("nan")
    h[0, 1, 1] = float("inf")
    s = layer_stats(h)
    assert s["nonfinite"][0] == 2 and np.isfinite(s["top1"][0])


def _tiny(kind: str):
    import transformers as tf

    common = dict(vocab_size=64)
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=3, n_embd=32, n_head=2, **common))
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=3, hidden_size=32,
                                                  intermediate_size=64,
                                                  num_attention_heads=2,
                                                  num_key_value_heads=2, **common))
    if kind == "opt":
        return tf.OPTForCausalLM(tf.OPTConfig(num_hidden_layers=3, hidden_size=32,
                                              ffn_dim=64, num_attention_heads=2,
                                              word_embed_proj_dim=32, **common))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "opt"])
def test_layers_found_structurally_across_architectures(kind):
    model = _tiny(kind).eval()
    assert len(decoder_layers(model)) == 3
    tokens = np.arange(2 * 10).reshape(2, 10) % 64
    table = measure(model, tokens)
    assert len(table) == 6 and table["top1"].gt(0).all()
    assert table["mlp_active_token"].between(0, 1).all()  # the MLP nonlinearity was found
    # hooked outputs equal hidden_states entries before the final norm
    with torch.no_grad():
        hs = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    top1_l0 = hs[1].abs().flatten(1).amax(1).numpy()
    np.testing.assert_allclose(table[table.layer == 0].sort_values("seq")["top1"], top1_l0,
                               rtol=1e-5)


def test_extract_cli_writes_table_with_metadata(tiny_model_dir, corpus_dir, tmp_path):
    from madyn.cli.main import main

    tok = tmp_path / "tokens.npy"
    np.save(tok, _tokens(corpus_dir))
    out = tmp_path / "stats.parquet"
    assert main(["extract", str(tiny_model_dir / "step0"), "--tokens", str(tok), "--out",
                 str(out), "--model", "tiny", "--step", "0", "--device", "cpu"]) == 0
    df, meta = read_stats(out)
    assert list(df.columns[:2]) == ["seq", "layer"] and len(df) == 3 * 2
    assert meta["model"] == "tiny" and meta["step"] == 0
    expected = read_json(tiny_model_dir / "manifest.json")["weights_sha256"]["0"]
    assert meta["weights"]["shards"]["model.safetensors"] == expected
    assert meta["median"].startswith("lower") and "torch" in meta


@pytest.mark.parametrize("on_cpu", [True, False])
@pytest.mark.parametrize("with_nonfinite", [False, True])
def test_collector_paths_equal_reference_statistics(with_nonfinite, on_cpu):
    """measure() on the CPU finishes statistics in numpy on a worker thread; on a GPU
    they stay tensors until one copy per batch (run here on CPU tensors). Both must agree
    with layer_stats / mlp_stats."""
    from madyn.measure.statistics import mlp_stats

    g = torch.Generator().manual_seed(1)
    coll = _Collector(on_cpu=on_cpu)
    coll.batch_shape = (3, 20)
    want: dict = {}
    for batch in range(2):  # two batches of two layers: drained after each batch
        for layer in range(2):
            h = torch.randn(3, 20, 16, generator=g)
            h[:, :, 3] *= 25 * (layer + 1)
            if with_nonfinite and batch == 0:
                h[1, 2, 5] = float("nan")
                h[2, 0, 0] = float("-inf")
            act = torch.nn.functional.gelu(torch.randn(3, 20, 64, generator=g))
            probs = torch.softmax(torch.randn(3, 2, 20, 20, generator=g), dim=-1)
            ref = {**layer_stats(h.clone()), **mlp_stats(act, (3, 20)),
                   **attention_stats(probs)}
            for key, v in ref.items():
                want.setdefault((layer, key), []).append(v)
            coll.layer_hook(layer)(None, None, (h.clone(),))
            coll.mlp_hook(layer)(None, None, act)
            coll.sink(layer, probs[:, :, 1:, 0].mean(dim=(1, 2)))  # as madyn.measure.sinks gives it
        coll.drain()
    coll.close()
    assert {"sink_mass", "first_norm_ratio", "first_peak_ratio"} <= {k for _, k in want}
    assert set(coll.rows) == set(want)
    for key, parts in want.items():
        got = coll.rows[key]
        assert all(isinstance(p, np.ndarray) for p in got)
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(parts), rtol=1e-5,
                                   err_msg=str(key))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_path_matches_cpu(dtype, tmp_path):
    """On a GPU the statistics run in torch on the device; they must match the CPU's."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=512, hidden_size=128, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=512, rotary_pct=0.25)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 512, size=(4, 64))
    cpu = measure(load_model(str(tmp_path), dtype=dtype, device="cpu"), tokens)
    gpu = measure(load_model(str(tmp_path), dtype=dtype, device="auto"), tokens)
    tol = 1e-4 if dtype == "float32" else 2e-2
    for col in ["top1", "top2", "top3", "median", "kurtosis", "mmr", "cos_sim",
                "mlp_active_token"]:
        np.testing.assert_allclose(gpu[col], cpu[col], rtol=tol, err_msg=col)


# ------------------------------------------------------------------ extreme-token metrics
def _first_token_cases() -> torch.Tensor:
    """Hand-made hidden states, 3 sequences x 4 tokens x 3 channels (ones elsewhere):
    0: a massive activation (10) at token 0 only; 1: a feature outlier (10 in channel 1)
    at every token; 2: a massive activation at token 2 only."""
    h = torch.ones(3, 4, 3)
    h[0, 0, 1] = 10.0
    h[1, :, 1] = 10.0
    h[2, 2, 1] = 10.0
    return h


def _cpu_stats(h: torch.Tensor) -> dict:
    coll = _Collector(on_cpu=True)
    coll.batch_shape = tuple(h.shape[:2])
    coll.layer_hook(0)(None, None, (h.clone(),))
    coll.drain()
    coll.close()
    return {k: np.concatenate(v) for (_, k), v in coll.rows.items()}


@pytest.mark.parametrize("path", ["reference", "cpu"])
def test_first_token_ratios_on_hand_made_hidden_states(path):
    h = _first_token_cases()
    st = layer_stats(h) if path == "reference" else _cpu_stats(h)
    # 0: norms sqrt(102) vs sqrt(3) (lower median of 4 tokens); |h|: 11 ones and a 10
    np.testing.assert_allclose(st["first_norm_ratio"][0], np.sqrt(102 / 3), rtol=1e-6)
    np.testing.assert_allclose(st["first_peak_ratio"][0], 10.0, rtol=1e-6)
    # 1: every token alike (norm ratio 1) though position 0 holds the peak (10 / median 1)
    np.testing.assert_allclose(st["first_norm_ratio"][1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(st["first_peak_ratio"][1], 10.0, rtol=1e-6)
    # 2: the peak sits at token 2: position 0 is ordinary on both counts
    np.testing.assert_allclose(st["first_norm_ratio"][2], 1.0, rtol=1e-6)
    np.testing.assert_allclose(st["first_peak_ratio"][2], 1.0, rtol=1e-6)
    np.testing.assert_allclose(st["ratio"], [10.0, 10.0, 10.0], rtol=1e-6)


def _forced_llama(mode: str, t: int):
    """A 2-layer Llama (width 32, 2 heads) whose attention is set by hand: ``uniform``
    (q = 0: every query spreads evenly over keys 0..t) or ``first`` (only token 0 has a
    key, along the slowest rotary pair, and every query matches it strongly). Attention
    and MLP outputs are zeroed, so both layers see the embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      head_dim=16, max_position_embeddings=t)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.fill_(0.1)  # other channels: small, so medians are not 0
        emb[:, 0] = 1.0  # a constant channel: every token's query reads it
        emb[:, 1] = 0.0
        emb[0, 1] = 1.0  # token 0 alone has channel 1: its key
        for layer in model.model.layers:
            att = layer.self_attn
            for w in (att.q_proj, att.k_proj, att.o_proj, layer.mlp.down_proj):
                w.weight.zero_()
            if mode == "first":
                for head in range(2):
                    att.q_proj.weight[head * 16 + 7, 0] = 3.0  # dims 7, 15: slowest pair
                    att.k_proj.weight[head * 16 + 7, 1] = 3.0
    return model


@pytest.mark.parametrize("mode", ["uniform", "first"])
def test_sink_mass_on_forced_attention(mode):
    t = 16
    tokens = np.r_[0, np.arange(1, t)][None].repeat(2, axis=0)  # token 0 at position 0
    df = measure(_forced_llama(mode, t), tokens)
    want = np.mean(1.0 / np.arange(2, t + 1)) if mode == "uniform" else 1.0
    np.testing.assert_allclose(df["sink_mass"], want, rtol=1e-5, atol=1e-6)


def test_extreme_tokens_off_leaves_sink_nan_and_model_as_loaded(tiny_model_dir, corpus_dir):
    step = read_json(tiny_model_dir / "manifest.json")["steps"][-1]
    model = load_model(str(tiny_model_dir / f"step{step}"), device="cpu")
    was = model.config._attn_implementation
    tokens = _tokens(corpus_dir, n=2, t=16)
    on = measure(model, tokens)
    assert model.config._attn_implementation == was  # restored after the eager pass
    assert ((on["sink_mass"] > 0) & (on["sink_mass"] <= 1)).all()
    off = measure(model, tokens, extreme_tokens=False)
    assert off["sink_mass"].isna().all()
    np.testing.assert_allclose(off["first_norm_ratio"], on["first_norm_ratio"], rtol=1e-4)
    np.testing.assert_allclose(off["ratio"], on["ratio"], rtol=1e-4)


# ------------------------------------------------------- exact selections on the CPU path
def _rows_cases(n: int) -> np.ndarray:
    """Rows of length n: Gaussian |h|, heavy-tailed, few distinct values (ties at the
    median), constant, and one whose sampled positions hold its largest values (the sample
    brackets the wrong place; the exact fallback must answer)."""
    from madyn.measure.statistics import MEDIAN_SAMPLE

    rng = np.random.default_rng(3)
    gauss = np.abs(rng.standard_normal(n))
    heavy = np.abs(rng.standard_cauchy(n))
    ties = rng.integers(0, 4, n).astype(float)
    const = np.full(n, 0.5)
    fooled = rng.random(n)
    fooled[np.random.default_rng(0).integers(0, n, MEDIAN_SAMPLE)] = 1e3 + rng.random(MEDIAN_SAMPLE)
    return np.stack([gauss, heavy, ties, const, fooled]).astype(np.float32)


@pytest.mark.parametrize("n", [101, 300_001, 1_048_576])
def test_lower_medians_are_exact(n):
    from madyn.measure.statistics import _lower_medians

    rows = _rows_cases(n)
    want = np.sort(rows, axis=1)[:, (n - 1) // 2]
    got = _lower_medians(rows.copy())
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32


@pytest.mark.parametrize(("t", "d"), [(2, 8), (64, 32), (2048, 512)])
def test_top3_is_exact(t, d):
    from madyn.measure.statistics import _top3

    rows = _rows_cases(t * d)
    rows[0, 5:8] = 50.0  # the top 3 in one token, tied
    a = rows.reshape(len(rows), t, d)
    want = -np.sort(-rows, axis=1)[:, :3]
    np.testing.assert_array_equal(_top3(rows, a.max(axis=2)), want)
