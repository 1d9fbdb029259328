"""Hostile and broken inputs to the real ``madyn`` command (issue 19, points 3, 5, 7, 9):
each is refused with one line on stderr naming the file and the reason, a non-zero exit,
nothing written, and nothing of the user's removed; nothing hangs or exhausts memory
(every run has a timeout, and a memory limit where a config could make it allocate).
Real tiny checkpoints, real files, a real loopback hub."""

from __future__ import annotations

import resource
import shutil
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
    from madyn.corpus import eval_windows

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
    refused(madyn("config-json", ckpt, "--out", d), "--out", str(d), "is a folder")
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
    refused(madyn("growth", series, "--out", d), "--out", str(d), "is a folder")
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
    refused(madyn("extract-model", tiny_model_dir, "--steps", 0, 4, "--outs", out, out,
                  "--tokens", tokens, "--device", "cpu"), "--outs", str(out), "given twice")
    assert not out.exists()
