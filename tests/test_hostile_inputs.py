"""Hostile and broken inputs to the real ``madyn`` command (an ``--out`` that is a
folder, what ``--delete-download`` may remove, hostile checkpoint and config files,
oversized JSON): each is refused with one line on stderr naming the file and the reason,
a non-zero exit, nothing written, and nothing of the user's removed; nothing hangs or
exhausts memory (every run has a timeout, and a memory limit where a config could make it
allocate). Real tiny checkpoints, real files, a real loopback hub."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MEM_LIMIT = 4 * 2**30  # bytes of address space for a run that a hostile config could blow


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def madyn(*args, env: dict | None = None, timeout: float = 120,
          memory: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``madyn`` CLI (this checkout's code) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "madyn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=_limit_memory if memory else None)


def refused(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A clean refusal: non-zero exit, one line on stderr holding every needle."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stderr
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def tokens(tmp_path, corpus_dir) -> Path:
    from madyn.train.corpus import eval_windows

    p = tmp_path / "tokens.npy"
    np.save(p, eval_windows(np.load(corpus_dir / "heldout.npy"), 2, 16, seed=0))
    return p


@pytest.fixture
def ckpt(tiny_model_dir, tmp_path) -> Path:
    """A private copy of a real tiny checkpoint, free to break."""
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir / "step4", out)
    return out


def _extract(ckpt: Path, tokens: Path, out: Path, **kw) -> subprocess.CompletedProcess:
    return madyn("extract", ckpt, "--tokens", tokens, "--out", out, "--device", "cpu", **kw)


# ------------------------------------------------------ 3: --out on an existing folder
def _user_folder(tmp_path: Path) -> Path:
    d = tmp_path / "thesis"
    (d / "chapters").mkdir(parents=True)
    (d / "chapters" / "one.tex").write_text("my work\n")
    return d


def _intact(d: Path) -> None:
    assert (d / "chapters" / "one.tex").read_text() == "my work\n"


def test_config_json_out_on_a_folder_is_refused_and_kept(ckpt, tmp_path):
    d = _user_folder(tmp_path)
    refused(madyn("step", "config-json", ckpt, "--out", d), "--out", str(d), "is a folder")
    _intact(d)


def test_extract_out_on_a_folder_is_refused_and_kept(ckpt, tokens, tmp_path):
    d = _user_folder(tmp_path)
    refused(_extract(ckpt, tokens, d), "--out", str(d), "is a folder")
    _intact(d)


def test_growth_out_on_a_folder_is_refused_and_kept(tmp_path):
    d = _user_folder(tmp_path)
    series = tmp_path / "m.parquet"
    import pandas as pd

    pd.DataFrame({"statistic": ["ratio"] * 2, "step": [0, 10], "layer": [0, 0],
                  "mean": [1.0, 2.0]}).to_parquet(series)
    refused(madyn("step", "growth", series, "--out", d), "--out", str(d), "is a folder")
    _intact(d)


def test_atomic_file_output_never_replaces_a_folder(tmp_path):
    from madyn.io import OutputError, write_json

    d = _user_folder(tmp_path)
    with pytest.raises(OutputError, match="is a folder"):
        write_json(d, {"a": 1})
    _intact(d)


def test_folder_output_replaces_only_what_madyn_wrote(tmp_path):
    """A folder output (a checkpoint, a tokenizer) replaces its earlier self, but not a
    folder holding anything the new one does not."""
    from madyn.io import OutputError, atomic_path

    out = tmp_path / "tok"
    for text in ("one", "two"):
        with atomic_path(out, folder=True) as tmp:
            tmp.mkdir()
            (tmp / "vocab.json").write_text(text)
    assert (out / "vocab.json").read_text() == "two"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"), atomic_path(out, folder=True) as tmp:
        tmp.mkdir()
        (tmp / "vocab.json").write_text("three")
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "vocab.json").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary left


def test_stale_temporary_lookalikes_of_the_user_survive(tmp_path):
    """Only the temporary folders a killed writer left are swept, not a user's files that
    look alike."""
    from madyn.io import write_json

    mine = tmp_path / ".out.json.tmp_backup"
    mine.write_text("keep")
    alike = tmp_path / ".out.json.tmpabcd1234"
    alike.mkdir()
    (alike / "notes.txt").write_text("keep")
    stale = tmp_path / ".out.json.tmpzzzz9999"
    stale.mkdir()
    (stale / "out.json").write_text("{")
    write_json(tmp_path / "out.json", {"a": 1})
    assert mine.read_text() == "keep" and (alike / "notes.txt").read_text() == "keep"
    assert not stale.exists()


def test_extract_model_refuses_one_out_for_two_steps(tiny_model_dir, tokens, tmp_path):
    out = tmp_path / "s.parquet"
    refused(madyn("step", "extract-model", tiny_model_dir, "--steps", 0, 4, "--outs", out, out,
                  "--tokens", tokens, "--device", "cpu"), "--outs", str(out), "given twice")
    assert not out.exists()


# ------------------------------------------- 7, 9: hostile or broken checkpoint files
def _config(ckpt: Path, **changes) -> str:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))  # NaN stays NaN, as json writes it
    return "config.json"


def _replace(path: Path, make) -> None:
    path.unlink()
    make(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _lying_length(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(data)) + data[8:])


def _short_length(path: Path) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", n // 2) + data[8:])


def _header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with ``edit(header)`` (the data kept)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _dtype(header: dict, dtype: str) -> None:
    name = next(k for k in sorted(header) if k.endswith("layernorm.weight"))
    header[name]["dtype"] = dtype


def _overlap(header: dict) -> None:
    """A bias whose bytes are its weight's (same shape: the sizes still agree)."""
    w = next(k for k in sorted(header) if k.endswith("input_layernorm.weight"))
    header[w.replace(".weight", ".bias")]["data_offsets"] = header[w]["data_offsets"]


def _many_empty(header: dict, n: int = 1_400_000) -> None:
    """1.4 M tensors of no elements (95 MB of header, under the library's 100 MB)."""
    end = max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")
    for i in range(n):
        header[f"e{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [end, end]}


def _text_file(path: Path) -> None:
    text = path.parent / "notes.txt"
    text.write_text("These are my notes on the weights, not the weights.\n" * 20)
    _replace(path, lambda p: p.symlink_to(text))


HOSTILE = {  # case -> (how to break the checkpoint, what the one line must say)
    "config_dev_zero": (lambda c: _replace(c / "config.json",
                                           lambda p: p.symlink_to("/dev/zero")),
                        ["config.json", "character device", "/dev/zero"]),
    "config_fifo": (lambda c: _replace(c / "config.json", os.mkfifo),
                    ["config.json", "named pipe"]),
    "config_70b": (lambda c: _config(c, num_hidden_layers=80, hidden_size=8192,
                                     intermediate_size=32768, num_attention_heads=64),
                   ["config.json", "says 80 layers", "hold 2"]),
    "config_wide": (lambda c: _config(c, hidden_size=8192, intermediate_size=32768,
                                      num_attention_heads=64),
                    ["config.json", "parameters", "weight files hold"]),
    "layers_1e9_float": (lambda c: _config(c, num_hidden_layers=1e9),
                         ["config.json", "num_hidden_layers", "whole number"]),
    "layers_1e9": (lambda c: _config(c, num_hidden_layers=10**9),
                   ["config.json", "says 1000000000 layers", "hold 2"]),
    "layers_nan": (lambda c: _config(c, num_hidden_layers=float("nan")),
                   ["config.json", "num_hidden_layers", "whole number", "nan"]),
    "layers_string": (lambda c: _config(c, num_hidden_layers="two"),
                      ["config.json", "num_hidden_layers", "'two'"]),
    "config_not_json": (lambda c: (c / "config.json").write_text("{not json"),
                        ["config.json", "not valid JSON"]),
    "config_huge": (lambda c: (c / "config.json").write_text(" " * (17 * 2**20) + "{}"),
                    ["config.json", "larger than 16 MB"]),
    "weights_dev_zero": (lambda c: _replace(c / "model.safetensors",
                                            lambda p: p.symlink_to("/dev/zero")),
                         ["model.safetensors", "character device"]),
    "weights_fifo": (lambda c: _replace(c / "model.safetensors", os.mkfifo),
                     ["model.safetensors", "named pipe"]),
    "weights_truncated": (lambda c: _truncate(c / "model.safetensors"),
                          ["model.safetensors", "truncated"]),
    "weights_length_lies": (lambda c: _lying_length(c / "model.safetensors"),
                            ["model.safetensors", "header length field says"]),
    "weights_length_short": (lambda c: _short_length(c / "model.safetensors"),
                             ["model.safetensors", "header is not JSON"]),
    "weights_link_to_text": (lambda c: _text_file(c / "model.safetensors"),
                             ["model.safetensors", "not a valid safetensors file"]),
    # issue 32: safetensors headers that passed madyn's check
    "weights_dtype_c64": (lambda c: _header(c / "model.safetensors",
                                            lambda h: _dtype(h, "C64")),
                          ["model.safetensors", "layernorm.weight", "'C64'", "dtype"]),
    "weights_dtype_unknown": (lambda c: _header(c / "model.safetensors",
                                                lambda h: _dtype(h, "Q4_K")),
                              ["model.safetensors", "layernorm.weight", "'Q4_K'", "dtype"]),
    "weights_overlap": (lambda c: _header(c / "model.safetensors", _overlap),
                        ["model.safetensors", "input_layernorm", "overlap"]),
    "weights_huge_header": (lambda c: _header(c / "model.safetensors", _many_empty),
                            ["model.safetensors", "header of", "at most"]),
    # issue 32: configs that passed every check and broke transformers while it built
    "act_unknown": (lambda c: _config(c, hidden_act="evil"),
                    ["config.json", "hidden_act", "'evil'", "not an activation"]),
    "rotary_5": (lambda c: _config(c, partial_rotary_factor=5),
                 ["config.json", "partial_rotary_factor", "5", "(0, 1]"]),
    "rotary_5_rope": (lambda c: _rope(c, partial_rotary_factor=5),
                      ["config.json", "rope_parameters.partial_rotary_factor", "(0, 1]"]),
    "vocab_10": (lambda c: _config(c, vocab_size=10),
                 ["config.json", "embed_in.weight", "[300, 32]", "[10, 32]"]),
    "heads_0": (lambda c: _config(c, num_attention_heads=0),
                ["config.json", "num_attention_heads", "0", "at least 1"]),
    "heads_3": (lambda c: _config(c, num_attention_heads=3),
                ["config.json", "num_attention_heads", "3", "hidden_size 32"]),
    "hidden_1e9": (lambda c: _config(c, hidden_size=10**9),
                   ["config.json", "hidden_size", "1000000000", "at most"]),
}


def _rope(ckpt: Path, **changes) -> str:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rope_parameters"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return "config.json"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_extract_refuses_a_hostile_checkpoint(case, ckpt, tokens, tmp_path):
    """One line naming the file and why, exit 2, no table; fast and within a memory bound
    (no model is built from a config before it matches the weights' headers)."""
    breaks, needles = HOSTILE[case]
    breaks(ckpt)
    out = tmp_path / "s.parquet"
    refused(_extract(ckpt, tokens, out, timeout=60, memory=True), *needles)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tokens.npy"]


@pytest.mark.parametrize("case", ["config_dev_zero", "config_fifo", "config_not_json"])
def test_config_json_refuses_a_hostile_config(case, ckpt, tmp_path):
    """``madyn step config-json`` (the workflow's model_config job) reads config.json safely."""
    breaks, needles = HOSTILE[case]
    breaks(ckpt)
    out = tmp_path / "config.json"
    refused(madyn("step", "config-json", ckpt, "--out", out, timeout=60, memory=True), *needles)
    assert not out.exists()


@pytest.mark.parametrize("case", ["config_dev_zero", "config_fifo"])
def test_predict_refuses_a_hostile_config(case, ckpt, tmp_path):
    breaks, needles = HOSTILE[case]
    breaks(ckpt)
    out = tmp_path / "prediction"
    refused(madyn("predict", "--config", ckpt / "config.json", "--settings-json", "{}",
                  "--features", tmp_path / "none.parquet", "--out", out, timeout=60,
                  memory=True), *needles)
    assert not out.exists()


def test_cached_hub_config_refuses_a_huge_file(tmp_path):
    """Planning reads a hub model's cached config.json: an 8 GB one (sparse, no disk) is
    refused at once, not read into memory. (huggingface_hub returns no path for a FIFO or
    a device there.)"""
    snap = tmp_path / "hub" / "models--o--m" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    with open(snap / "config.json", "wb") as f:
        f.truncate(8 * 2**30)
    (tmp_path / "hub" / "models--o--m" / "refs").mkdir()
    (tmp_path / "hub" / "models--o--m" / "refs" / "main").write_text("a" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", "from madyn.workflow.resources import "
                        "cached_hub_config as c; c('o/m')"], capture_output=True, text=True,
                       timeout=60, env=env, preexec_fn=_limit_memory)
    assert r.returncode != 0
    assert "UnsafeFile" in r.stderr and "config.json: larger than 16 MB" in r.stderr


@pytest.mark.parametrize("kind", ["llama", "opt", "qwen3", "olmo2", "neox"])
def test_checks_before_building_pass_every_family(kind, tmp_path):
    """The header and shape checks accept real checkpoints of each family madyn measures
    (tied and untied embeddings, OPT's decoder prefix, grouped-query attention)."""
    import transformers as tf

    from madyn.measure.checkpoints import load_model
    from madyn.measure.statistics import decoder_layers

    common = {"vocab_size": 64}
    model = {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            num_hidden_layers=3, hidden_size=32, intermediate_size=64,
            num_attention_heads=2, **common)),
        "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(
            num_hidden_layers=3, hidden_size=32, ffn_dim=64, num_attention_heads=2,
            word_embed_proj_dim=32, **common)),
        "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(
            num_hidden_layers=3, hidden_size=32, intermediate_size=64,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, **common)),
        "olmo2": lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(
            num_hidden_layers=3, hidden_size=32, intermediate_size=64,
            num_attention_heads=2, **common)),
        "neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            num_hidden_layers=3, hidden_size=32, intermediate_size=64,
            num_attention_heads=2, tie_word_embeddings=False, **common)),
    }[kind]()
    model.save_pretrained(tmp_path / kind)
    assert len(decoder_layers(load_model(str(tmp_path / kind), device="cpu"))) == 3


# ------------------------------------------------- issue 32: hangs and tracebacks
def test_extract_refuses_tokens_that_are_a_fifo(ckpt, tmp_path):
    """``--tokens`` (a run entry's ``tokens:``) naming a FIFO blocked forever in np.load."""
    fifo = tmp_path / "probe_tokens.npy"
    os.mkfifo(fifo)
    out = tmp_path / "s.parquet"
    refused(_extract(ckpt, fifo, out, timeout=60, memory=True),
            "probe_tokens.npy", "named pipe")
    assert not out.exists()


def test_run_entry_tokens_that_are_not_a_regular_file_are_refused_at_planning(tmp_path):
    from madyn.measure import runs

    fifo = tmp_path / "probe_tokens.npy"
    os.mkfifo(fifo)
    with pytest.raises(runs.RunError, match=r"suites\.mine\.models\.0\.tokens: .*named pipe"):
        runs.entry_tokens({"name": "a", "path": str(tmp_path), "tokens": str(fifo)},
                          "suites.mine.models.0.tokens")
    with pytest.raises(runs.RunError, match=r"models\.0\.tokens: .*no such file"):
        runs.entry_tokens({"name": "a", "path": str(tmp_path), "tokens": str(tmp_path / "x")},
                          "suites.mine.models.0.tokens")
    assert runs.entry_tokens({"name": "a", "path": str(tmp_path)}, "k") is None


def test_eval_tokens_names_a_tokenizer_file_that_is_dev_zero(corpus_dir, tmp_path):
    """A tokenizer folder whose tokenizer.json is a link to /dev/zero gave a misleading
    message about sentencepiece, naming no file."""
    tok = tmp_path / "tok"
    shutil.copytree(corpus_dir / "tokenizer", tok)
    _replace(tok / "tokenizer.json", lambda p: p.symlink_to("/dev/zero"))
    out = tmp_path / "tokens.npy"
    refused(madyn("step", "eval-tokens", "--corpus-manifest", corpus_dir / "manifest.json",
                  "--tokenizer", tok, "--n-seqs", 2, "--seq-len", 16, "--seed", 0,
                  "--out", out, timeout=60, memory=True),
            "tokenizer.json", "character device")
    assert not out.exists()


def test_corpus_with_no_held_out_file_is_one_line(tmp_path):
    """``madyn step corpus --max-mb 0.1``: so few files that none is held out (IndexError)."""
    out = tmp_path / "corpus"
    refused(madyn("step", "corpus", "--out", out, "--max-mb", 0.1, "--heldout-fraction", 0.05,
                  "--vocab-size", 300, timeout=300), "max_mb 0.1", "heldout_fraction 0.05",
            "no held-out file")
    assert not out.exists()
