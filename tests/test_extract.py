"""Extraction: statistics match an independent recomputation; layers found structurally."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madyn.extract import decoder_layers, layer_stats, load_model, measure, read_stats
from madyn.io import read_json


def _tokens(corpus_dir, n=3, t=32) -> np.ndarray:
    from madyn.corpus import eval_windows

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
    return [h.numpy().astype(np.float64) for h in hs[1:]]


def test_top_and_median_match_independent_recomputation(tiny_model_dir, corpus_dir):
    step = read_json(tiny_model_dir / "manifest.json")["steps"][-1]
    model = load_model(str(tiny_model_dir / f"step{step}"), device="cpu")
    tokens = _tokens(corpus_dir)
    table = measure(model, tokens, batch_size=2)  # two batches: 2 + 1 sequences
    raw = _raw_layer_outputs(model, tokens)
    assert table["layer"].nunique() == len(raw) == model.config.num_hidden_layers
    for layer, h in enumerate(raw):
        rows = table[table["layer"] == layer].sort_values("seq")
        a = np.sort(np.abs(h).reshape(len(tokens), -1), axis=1)  # full sort, ascending
        n = a.shape[1]
        np.testing.assert_allclose(rows["top1"], a[:, -1], rtol=1e-5)
        np.testing.assert_allclose(rows["top2"], a[:, -2], rtol=1e-5)
        np.testing.assert_allclose(rows["top3"], a[:, -3], rtol=1e-5)
        np.testing.assert_allclose(rows["median"], a[:, (n - 1) // 2], rtol=1e-5)  # lower
        flat = np.abs(h).reshape(len(tokens), -1).argmax(1)
        d = h.shape[-1]
        assert (rows["top1_token"].to_numpy() == flat // d).all()
        assert (rows["top1_channel"].to_numpy() == flat % d).all()
    # the last layer's output is the residual stream, not the final-LayerNorm output
    with torch.no_grad():
        post_ln = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True
                        ).hidden_states[-1]
    last = table[table["layer"] == len(raw) - 1].sort_values("seq")["top1"].to_numpy()
    assert not np.allclose(last, post_ln.abs().flatten(1).amax(1).numpy(), rtol=1e-3)


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
    from madyn.cli import main

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


@pytest.mark.parametrize("with_nonfinite", [False, True])
def test_cpu_worker_path_equals_reference_statistics(with_nonfinite):
    """measure() on the CPU finishes statistics in numpy on a worker thread; it must
    agree with layer_stats / mlp_stats (the torch path used on GPUs)."""
    from madyn.extract import _Collector, mlp_stats

    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 20, 16, generator=g)
    h[:, :, 3] *= 25
    if with_nonfinite:
        h[1, 2, 5] = float("nan")
        h[2, 0, 0] = float("-inf")
    act = torch.nn.functional.gelu(torch.randn(3, 20, 64, generator=g))
    ref = {**layer_stats(h.clone()), **mlp_stats(act, (3, 20))}
    coll = _Collector(on_cpu=True)
    coll.batch_shape = (3, 20)
    coll.layer_hook(0)(None, None, (h.clone(),))
    coll.mlp_hook(0)(None, None, act)
    coll.drain()
    coll.close()
    for key, want in ref.items():
        got = np.concatenate(coll.rows[(0, key)])
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
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
