"""The embedded suite: corpus manifest, schedule, training, determinism, HF format."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from madyn.io import read_json, sha256_file
from madyn.train.training import checkpoint_steps, train_model, training_summary
from tests.helpers import TINY_MODEL, TINY_TRAIN


def test_schedule_is_pythia_like():
    assert checkpoint_steps(143000, 512, 1000)[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256,
                                                       512, 1000]
    assert len(checkpoint_steps(143000, 512, 1000)) == 154
    s = checkpoint_steps(1200, 64, 100)
    assert s[0] == 0 and s[-1] == 1200 and len(s) >= 15
    assert checkpoint_steps(7, 64, 5) == [0, 1, 2, 4, 5, 7]


def test_corpus_manifest_matches_files(corpus_dir: Path):
    m = read_json(corpus_dir / "manifest.json")
    root = Path(m["root"])
    for f in m["files"][:20]:
        assert hashlib.sha256((root / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    splits = {f["split"] for f in m["files"]}
    assert splits == {"train", "heldout"}
    for name in ("train", "heldout"):
        arr = np.load(corpus_dir / f"{name}.npy")
        assert arr.dtype == np.uint16 and arr.size == m["tokens"][name] > 0
        assert arr.max() < m["vocab_size"] + 1
    assert (corpus_dir / "tokenizer" / "tokenizer.json").exists()


def test_checkpoints_are_hf_safetensors_and_load(tiny_model_dir: Path):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    m = read_json(tiny_model_dir / "manifest.json")
    expected = checkpoint_steps(TINY_TRAIN.steps, TINY_TRAIN.log_until, TINY_TRAIN.every)
    assert m["steps"] == expected
    for s in expected:
        d = tiny_model_dir / f"step{s}"
        assert (d / "model.safetensors").exists() and not list(d.glob("*.bin"))
    last = tiny_model_dir / f"step{expected[-1]}"
    model = GPTNeoXForCausalLM.from_pretrained(last)
    assert model.config.num_hidden_layers == TINY_MODEL.layers
    assert model.config.use_parallel_residual
    rope = getattr(model.config, "rope_parameters", None) or {}  # transformers >= 5
    assert rope.get("partial_rotary_factor", getattr(model.config, "rotary_pct", None)) == 0.25
    tok = AutoTokenizer.from_pretrained(last)
    assert tok.decode(tok("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"
    # training moved the weights and lowered the loss
    assert m["weights_sha256"]["0"] != m["weights_sha256"][str(expected[-1])]
    assert m["loss_curve"][-1] < m["loss_curve"][0]


def test_training_is_bit_identical(corpus_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    again = tmp_path / "again"
    # a checkpoint of an earlier schedule, and a file that is not a checkpoint
    (again / "step999").mkdir(parents=True)
    (again / "step999" / "madyn_checkpoint.json").write_text("{}")
    (again / "notes.txt").write_text("mine")
    train_model(TINY_MODEL, TINY_TRAIN, corpus_dir, again, threads=1)
    first = read_json(tiny_model_dir / "manifest.json")["weights_sha256"]
    assert read_json(again / "manifest.json")["weights_sha256"] == first
    assert sorted(p.name for p in again.glob("step*")) == sorted(f"step{k}" for k in first)
    assert (again / "notes.txt").read_text() == "mine"
    s = str(TINY_TRAIN.steps)
    assert sha256_file(again / f"step{s}" / "model.safetensors") == first[s]


def test_training_summary_times_the_suite(corpus_dir: Path, tmp_path: Path):
    m = train_model(TINY_MODEL, TINY_TRAIN, corpus_dir, tmp_path / "m", threads=1)
    t = m["train_seconds"]
    assert 0 < t < 600 and m["started_unix"] > 1.7e9
    assert "train_seconds" not in read_json(tmp_path / "m" / "manifest.json")  # deterministic
    later = {**m, "started_unix": m["started_unix"] + 10 * t}  # a model added later
    half = {**m, "started_unix": m["started_unix"] + t / 2}  # run beside the first
    s = training_summary({"a": m, "b": later, "c": half, "d": {"model": "d"}}, budget_s=1e6)
    assert s["wall_s"] == pytest.approx(2.5 * t, abs=0.2)  # a and c overlap; b does not
    assert s["sum_s"] == pytest.approx(3 * t, abs=0.2)
    assert s["untimed"] == ["d"] and s["within_budget"] and sorted(s["models"]) == ["a", "b", "c"]
