"""Measuring one decoder layer at a time (madyn.measure.layerwise) gives the whole-model
pass's statistics, sink mass included, for every family madyn trains or loads, from
sharded safetensors; and it measures a checkpoint under an address-space limit that the
whole-model pass exceeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.checkpoints import load_model, weight_files
from madyn.measure.empty_model import empty_parameters
from madyn.measure.extract import measure_checkpoint
from madyn.measure.layerwise import measure_layerwise
from madyn.measure.memory_estimates import needs_layerwise, whole_model_bytes
from madyn.measure.shard_reader import ShardReader
from madyn.measure.statistics import measure
from madyn.measure.stats_table import STAT_COLUMNS
from madyn.settings import ExtractSettings

COMMON = {"vocab_size": 64, "max_position_embeddings": 32, "initializer_range": 0.3}
FAMILIES = ["neox", "llama", "qwen3", "olmo2", "gpt2", "opt"]


def _tiny(kind: str):
    """A 3-layer model of ``kind`` with sharp random attention (large init)."""
    torch.manual_seed(0)
    if kind == "neox":
        cfg = tf.GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                               intermediate_size=64, rotary_pct=0.25, **COMMON)
        return tf.GPTNeoXForCausalLM(cfg)
    if kind == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, **COMMON)
        return tf.LlamaForCausalLM(cfg)
    if kind == "qwen3":
        cfg = tf.Qwen3Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=8, intermediate_size=64,
                             use_sliding_window=True, sliding_window=5, max_window_layers=1,
                             **COMMON)
        return tf.Qwen3ForCausalLM(cfg)
    if kind == "olmo2":
        cfg = tf.Olmo2Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                             intermediate_size=64, **COMMON)
        return tf.Olmo2ForCausalLM(cfg)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=32, vocab_size=64,
                            initializer_range=0.3)
        return tf.GPT2LMHeadModel(cfg)
    if kind == "opt":
        cfg = tf.OPTConfig(num_hidden_layers=3, hidden_size=32, ffn_dim=64,
                           num_attention_heads=4, word_embed_proj_dim=32, vocab_size=64,
                           max_position_embeddings=32, init_std=0.3)
        return tf.OPTForCausalLM(cfg)
    raise ValueError(kind)


def _saved(kind: str, out: Path, dtype=torch.float32) -> Path:
    """The tiny model of ``kind`` saved as several safetensors shards with an index."""
    model = _tiny(kind).to(dtype)
    model.save_pretrained(out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("*.safetensors"))) > 2  # the layers are spread over shards
    return out


def _tokens(n: int = 5, t: int = 24) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 64, size=(n, t))


def _assert_same(got, want, rtol: float = 1e-5) -> None:
    assert list(got["seq"]) == list(want["seq"]) and list(got["layer"]) == list(want["layer"])
    for k in STAT_COLUMNS:
        np.testing.assert_allclose(got[k].to_numpy(float), want[k].to_numpy(float),
                                   rtol=rtol, atol=1e-7, equal_nan=True, err_msg=k)


@pytest.mark.parametrize("kind", FAMILIES)
def test_layer_by_layer_equals_whole_model(kind, tmp_path):
    """Every statistic, sink mass and MLP sparsity included, over two batches (2 + 2 + 1
    sequences), read from a sharded checkpoint one layer at a time."""
    folder = _saved(kind, tmp_path / kind)
    tokens = _tokens()
    whole = measure(load_model(str(folder), dtype="float32", device="cpu"), tokens,
                    batch_size=2)
    got, info = measure_layerwise(str(folder), tokens, weight_files(str(folder)),
                                  batch_size=2)
    assert whole["sink_mass"].notna().all() and whole["sink_mass"].std() > 0.01
    assert whole["mlp_active_token"].notna().all()
    _assert_same(got, whole)
    assert info["layers"] == 3 and info["bytes_read"] > 0
    assert len(info["layer_seconds"]) == 3


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_layer_by_layer_in_bfloat16_equals_whole_model(kind, tmp_path):
    """A bfloat16 checkpoint loaded in bfloat16: the same (statistics in float32)."""
    folder = _saved(kind, tmp_path / kind, dtype=torch.bfloat16)
    tokens = _tokens(3, 16)
    whole = measure(load_model(str(folder), dtype="bfloat16", device="cpu"), tokens,
                    batch_size=3)
    got, _ = measure_layerwise(str(folder), tokens, weight_files(str(folder)),
                               dtype="bfloat16", batch_size=3)
    _assert_same(got, whole)


def test_extreme_tokens_off_leaves_sink_nan(tmp_path):
    folder = _saved("llama", tmp_path / "m")
    got, _ = measure_layerwise(str(folder), _tokens(2, 8), weight_files(str(folder)),
                               extreme_tokens=False)
    assert got["sink_mass"].isna().all() and got["top1"].gt(0).all()


def test_budget_chooses_layer_by_layer_and_records_it(tmp_path):
    """measure_checkpoint measures whole when the model fits max_memory_gb (or no budget
    is set) and layer by layer when it does not; the tables are the same."""
    folder = _saved("neox", tmp_path / "m")
    tokens = _tokens(4, 16)
    cfg = json.loads((folder / "config.json").read_text())
    need = whole_model_bytes(cfg, "float32", 2, 16)
    assert not needs_layerwise(cfg, "float32", 2, 16, None)
    assert needs_layerwise(cfg, "float32", 2, 16, need / 2e9)
    assert not needs_layerwise(cfg, "float32", 2, 16, need * 2 / 1e9)
    small = ExtractSettings(batch_size=2, device="cpu", max_memory_gb=need / 2e9)
    big = ExtractSettings(batch_size=2, device="cpu", max_memory_gb=need * 2 / 1e9)
    by_layer, meta = measure_checkpoint(str(folder), tokens, small)
    whole, meta_whole = measure_checkpoint(str(folder), tokens, big)
    assert meta["layerwise"] and not meta_whole["layerwise"]
    assert meta["weights"] == meta_whole["weights"]
    assert meta["layerwise_info"]["layers"] == 3
    _assert_same(by_layer, whole)


def test_max_memory_gb_is_validated():
    for bad in (0, -1, "4", True):
        with pytest.raises(ValueError, match="max_memory_gb"):
            ExtractSettings(max_memory_gb=bad)
    assert ExtractSettings().max_memory_gb is None


def test_missing_tensor_is_refused_naming_it(tmp_path):
    folder = tmp_path / "m"
    _tiny("llama").save_pretrained(folder)
    st = load_file(folder / "model.safetensors")
    gone = "model.layers.1.mlp.up_proj.weight"
    del st[gone]
    save_file(st, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys.*layers\.1\.mlp\.up_proj"):
        measure_layerwise(str(folder), _tokens(2, 8), weight_files(str(folder)))


def test_legacy_buffers_in_the_weights_are_ignored_as_transformers_does(tmp_path):
    """Pythia's hub checkpoints hold per-layer ``attention.bias``, ``attention.masked_bias``
    and ``attention.rotary_emb.inv_freq`` buffers that the model no longer has: both
    passes ignore them (and measure the same), while a tensor the model does not know at
    all is refused."""
    folder = tmp_path / "m"
    _tiny("neox").save_pretrained(folder)
    st = load_file(folder / "model.safetensors")
    for i in range(3):
        pre = f"gpt_neox.layers.{i}.attention."
        st[pre + "bias"] = torch.ones(1, 1, 32, 32, dtype=torch.bool)
        st[pre + "masked_bias"] = torch.tensor(-1e9)
        st[pre + "rotary_emb.inv_freq"] = torch.ones(1)
    save_file(st, folder / "model.safetensors", metadata={"format": "pt"})
    tokens = _tokens(2, 12)
    whole = measure(load_model(str(folder), dtype="float32", device="cpu"), tokens)
    got, _ = measure_layerwise(str(folder), tokens, weight_files(str(folder)))
    _assert_same(got, whole)
    st["gpt_neox.layers.1.attention.extra.weight"] = torch.ones(2)
    save_file(st, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected keys.*layers\.1\.attention\.extra"):
        measure_layerwise(str(folder), tokens, weight_files(str(folder)))


@pytest.mark.parametrize("direct", [True, False])
def test_shard_reader_reads_what_safetensors_reads(direct, tmp_path):
    """Buffered, and with O_DIRECT where the file system allows it (tensors of at least
    4 KB; smaller ones buffered), at any offset in the shard."""
    folder = _saved("opt", tmp_path / "m", dtype=torch.bfloat16)
    reader = ShardReader(weight_files(str(folder)), direct=direct)
    try:
        for f in weight_files(str(folder)):
            for name, want in load_file(f).items():
                got = reader.read(name)
                assert got.dtype == want.dtype and torch.equal(got, want), name
    finally:
        reader.close()


def test_empty_parameters_keeps_buffers_real():
    """Parameters on meta (no memory), buffers (rotary frequencies) computed as usual."""
    cfg = tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, vocab_size=64)
    with empty_parameters():
        model = tf.LlamaForCausalLM(cfg)
    assert all(p.is_meta for p in model.parameters())
    real = tf.LlamaForCausalLM(cfg)
    bufs = dict(model.named_buffers())
    assert bufs and all(not b.is_meta for b in bufs.values())
    for name, b in real.named_buffers():
        assert torch.equal(bufs[name], b), name


# ------------------------------------------------------------- under a memory limit
_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    import transformers.modeling_utils, transformers.models.llama.modeling_llama
    torch.set_num_threads(1)
    from madyn.measure.checkpoints import load_model, weight_files
    from madyn.measure.layerwise import measure_layerwise
    from madyn.measure.statistics import measure
    folder, mode, headroom, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    tokens = np.arange(2 * 16).reshape(2, 16) % 64

    def run(path):
        if mode == "whole":
            return measure(load_model(path, dtype="float32", device="cpu"), tokens)
        return measure_layerwise(path, tokens, weight_files(path))[0]

    # the same pass on a tiny model of the same family first: what does not grow with the
    # model (lazy imports, thread stacks, allocator arenas) is held before the limit
    run(warm)
    vm = int(next(l.split()[1] for l in open("/proc/self/status")
                  if l.startswith("VmSize:"))) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
    try:
        df = run(folder)
    except (MemoryError, RuntimeError, OSError, ValueError) as e:
        print(json.dumps({"ok": False, "error": type(e).__name__ + ": " + str(e)[:600]}))
        sys.exit(0)
    peak = int(next(l.split()[1] for l in open("/proc/self/status")
                    if l.startswith("VmPeak:"))) * 1024
    print(json.dumps({"ok": True, "top1": df["top1"].tolist(), "grew_mb": (peak - vm) / 2**20}))
""")


def _big_checkpoint(out: Path) -> Path:
    """A Llama checkpoint of about 470 MB in float32 (16 layers of 27 MB: width 512, MLP
    2816; vocabulary 8000, untied head), random weights written tensor by tensor, in
    shards."""
    cfg = tf.LlamaConfig(num_hidden_layers=16, hidden_size=512, num_attention_heads=8,
                         intermediate_size=2816, vocab_size=8000,
                         max_position_embeddings=64, tie_word_embeddings=False)
    with empty_parameters():
        model = tf.LlamaForCausalLM(cfg)
    out.mkdir()
    cfg.save_pretrained(out)
    gen = torch.Generator().manual_seed(0)
    shard, shards, index, size, total = {}, [], {}, 0, 0
    for name, p in model.state_dict(keep_vars=True).items():
        shard[name] = torch.randn(p.shape, generator=gen) * 0.05
        size += shard[name].numel() * 4
        total += shard[name].numel() * 4
        if size > 64e6:
            shards.append(shard)
            shard, size = {}, 0
    shards.append(shard)
    for i, sh in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, out / fname, metadata={"format": "pt"})
        index.update({k: fname for k in sh})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                              "weight_map": index}))
    return out


@pytest.mark.slow
def test_layer_by_layer_fits_where_the_whole_model_does_not(tmp_path):
    """With the address space capped at what the process holds after the same pass on a
    tiny model, plus 250 MB, loading the
    whole 470 MB model fails, while measuring it layer by layer (two 27 MB layers and the
    16 MB embedding at a time, read without memory maps: its address space grows by about
    80 MB) succeeds; without the cap, both give the same table."""
    folder = _big_checkpoint(tmp_path / "big")
    warm = tmp_path / "warm"
    _tiny("llama").save_pretrained(warm)
    env_run = [sys.executable, "-c", _CHILD, str(folder)]
    res = {}
    for mode, headroom in (("whole", 250), ("layers", 250), ("whole", 4000)):
        p = subprocess.run(env_run + [mode, str(headroom * 2**20), str(warm)],
                           capture_output=True,
                           text=True, timeout=300,
                           env={**os.environ, "MALLOC_ARENA_MAX": "1",
                                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stderr[-2000:]
        res[(mode, headroom)] = json.loads(p.stdout.strip().splitlines()[-1])
    assert not res[("whole", 250)]["ok"], res[("whole", 250)]
    assert "memory" in res[("whole", 250)]["error"].lower()  # it failed for want of memory
    assert res[("layers", 250)]["ok"], res[("layers", 250)]
    np.testing.assert_allclose(res[("layers", 250)]["top1"], res[("whole", 4000)]["top1"],
                               rtol=1e-5)


def test_extract_cli_max_memory_gb(tmp_path, capsys):
    """``madyn extract --max-memory-gb``: below the model's size it is measured layer by
    layer (recorded in the table's metadata), with the same table as without; a budget
    that is not a positive number is refused naming the option (exit 2)."""
    from madyn.cli.main import main
    from madyn.measure.stats_table import read_stats

    folder = _saved("gpt2", tmp_path / "m")
    tok = tmp_path / "tokens.npy"
    np.save(tok, _tokens(3, 16))
    outs = {}
    for name, extra in (("layers", ["--max-memory-gb", "1e-6"]), ("whole", [])):
        outs[name] = tmp_path / f"{name}.parquet"
        assert main(["extract", str(folder), "--tokens", str(tok), "--out",
                     str(outs[name]), "--device", "cpu", "--batch-size", "2", *extra]) == 0
    (got, meta), (want, meta_whole) = read_stats(outs["layers"]), read_stats(outs["whole"])
    assert meta["layerwise"] is True and meta["max_memory_gb"] == 1e-6
    assert meta_whole["layerwise"] is False and meta_whole["max_memory_gb"] is None
    _assert_same(got, want)
    with pytest.raises(SystemExit) as e:
        main(["extract", str(folder), "--tokens", str(tok), "--out", str(tmp_path / "x"),
              "--max-memory-gb", "0"])
    assert e.value.code == 2 and "--max-memory-gb" in capsys.readouterr().err
