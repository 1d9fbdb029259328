"""`madyn extract` refuses what it must not measure: each case a one-line error naming the
input, exit 2, and nothing written. Real tiny checkpoints, real files."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from madyn.cli.main import main
from madyn.measure.statistics import mlp_activation


def _extract(ckpt, tokens, out, *extra) -> int:
    return main(["extract", str(ckpt), "--tokens", str(tokens), "--out", str(out),
                 "--device", "cpu", *extra])


@pytest.fixture
def tokens(tmp_path, corpus_dir):
    from madyn.train.corpus import eval_windows

    p = tmp_path / "tokens.npy"
    np.save(p, eval_windows(np.load(corpus_dir / "heldout.npy"), 2, 16, seed=0))
    return p


def _refused(capsys, code: int, out, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert not out.exists()
    assert len(err) == 1 and all(n in err[0] for n in needles), err


def test_missing_weight_tensor_is_refused(tiny_model_dir, tokens, tmp_path, capsys):
    ckpt = tmp_path / "broken"
    shutil.copytree(tiny_model_dir / "step4", ckpt)
    weights = load_file(ckpt / "model.safetensors")
    gone = next(k for k in weights if k.endswith("attention.dense.weight"))
    save_file({k: v for k, v in weights.items() if k != gone}, ckpt / "model.safetensors",
              metadata={"format": "pt"})
    out = tmp_path / "s.parquet"
    _refused(capsys, _extract(ckpt, tokens, out), out, str(ckpt), "missing keys", gone)


def test_unexpected_weight_tensor_is_refused(tiny_model_dir, tokens, tmp_path, capsys):
    ckpt = tmp_path / "extra"
    shutil.copytree(tiny_model_dir / "step4", ckpt)
    weights = load_file(ckpt / "model.safetensors")
    weights["gpt_neox.layers.0.surprise.weight"] = torch.ones(3)
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "s.parquet"
    _refused(capsys, _extract(ckpt, tokens, out), out, "unexpected keys", "surprise")


def test_encoder_only_checkpoint_is_refused(tokens, tmp_path, capsys):
    import transformers as tf

    ckpt = tmp_path / "bert"
    tf.BertForMaskedLM(tf.BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
                       ).save_pretrained(ckpt)
    out = tmp_path / "s.parquet"
    _refused(capsys, _extract(ckpt, tokens, out), out, "BertForMaskedLM",
             "not a decoder-only")


@pytest.mark.parametrize("case, needle", [
    ("float", "must be integers"), ("empty", "non-empty"), ("vocab", "outside the model's "
                                                                      "vocabulary"),
    ("pickle", "not a .npy array")])
def test_bad_token_files_are_refused(case, needle, tiny_model_dir, tmp_path, capsys):
    p = tmp_path / "tokens.npy"
    if case == "float":
        np.save(p, np.full((2, 8), 3.7))
    elif case == "empty":
        np.save(p, np.zeros((0, 8), dtype=np.int64))
    elif case == "vocab":
        np.save(p, np.full((2, 8), 10**6, dtype=np.int64))
    else:
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = tmp_path / "s.parquet"
    _refused(capsys, _extract(tiny_model_dir / "step4", p, out), out, needle)


def test_missing_local_path_fails_at_once(tokens, tmp_path, capsys):
    out = tmp_path / "s.parquet"
    t0 = time.monotonic()
    code = _extract(tmp_path / "no" / "such" / "checkpoint", tokens, out)
    assert time.monotonic() - t0 < 5  # no hub look-up
    _refused(capsys, code, out, "no such checkpoint folder")


def test_batch_size_zero_is_a_usage_error(tiny_model_dir, tokens, tmp_path, capsys):
    out = tmp_path / "s.parquet"
    with pytest.raises(SystemExit) as e:
        _extract(tiny_model_dir / "step4", tokens, out, "--batch-size", "0")
    assert e.value.code == 2 and not out.exists()
    assert "--batch-size: must be >= 1" in capsys.readouterr().err


def test_mlp_activation_found_by_shape_not_name():
    """A module whose class name says nothing: found because it sits between the up- and
    the down-projection of the layer's MLP (hidden_size -> F -> hidden_size)."""

    class Quux(torch.nn.Module):  # an activation with an unhelpful name
        def forward(self, x):
            return torch.relu(x)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_proj = torch.nn.Linear(16, 48)  # 16 -> 48 but no 48 -> 16
            self.norm_like = Quux()  # parameter-free, but not in an MLP
            self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), Quux(),
                                           torch.nn.Linear(64, 16))

    block = Block()
    assert mlp_activation(block, 16) is block.mlp[1]
    assert mlp_activation(block, 32) is None  # the hidden size matters


def test_no_extreme_tokens_flag_and_the_table_goes_stale(tiny_model_dir, tokens, tmp_path):
    """--no-extreme-tokens leaves sink_mass NaN; the next run with the metrics on measures
    again (a table measured with the other setting is not kept)."""
    from madyn.measure.stats_table import read_stats

    ckpt, out = tiny_model_dir / "step0", tmp_path / "s.parquet"
    assert _extract(ckpt, tokens, out, "--no-extreme-tokens") == 0
    df, meta = read_stats(out)
    assert df["sink_mass"].isna().all() and meta["extreme_tokens"] is False
    assert np.isfinite(df["first_norm_ratio"]).all()
    assert _extract(ckpt, tokens, out) == 0
    df, meta = read_stats(out)
    assert df["sink_mass"].between(0, 1).all() and meta["extreme_tokens"] is True
    assert meta["attn_implementation"] == "madyn_sdpa_sinks"
