"""The hub code path (offline, on a hub cache madyn lays out itself), the study's released
layout (parsed, never executed) and checkpoint integrity."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from madyn.io import read_json
from madyn.measure import released
from madyn.measure.checkpoints import fingerprint
from madyn.measure.series import build_series, integrity
from madyn.measure.statistics import measure
from madyn.measure.stats_table import read_stats


def publish_to_hub_cache(src: Path, cache: Path, repo_id: str, revision: str) -> str:
    """Lay ``src`` out as the hub cache would after downloading ``repo_id@revision``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def test_hub_path_with_revision_offline(tiny_model_dir, corpus_dir, tmp_path):
    steps = read_json(tiny_model_dir / "manifest.json")["steps"]
    cache = tmp_path / "hub"
    for s in (steps[1], steps[-1]):
        publish_to_hub_cache(tiny_model_dir / f"step{s}", cache, "madyn-test/tiny", f"step{s}")
    from madyn.train.corpus import eval_windows

    tokens = tmp_path / "tokens.npy"
    np.save(tokens, eval_windows(np.load(corpus_dir / "heldout.npy"), 2, 16, seed=1))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "hub.parquet"
    last = steps[-1]
    r = subprocess.run([sys.executable, "-m", "madyn.cli", "extract", "madyn-test/tiny",
                        "--revision", f"step{last}", "--tokens", str(tokens), "--out", str(out),
                        "--step", str(last), "--device", "cpu"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    hub_df, meta = read_stats(out)
    assert meta["revision"] == f"step{last}" and meta["source"] == "madyn-test/tiny"
    # the same weights as the local checkpoint: same fingerprint, same statistics
    local_sha = read_json(tiny_model_dir / "manifest.json")["weights_sha256"][str(last)]
    assert meta["weights"]["shards"]["model.safetensors"] == local_sha
    from madyn.measure.checkpoints import load_model

    local = measure(load_model(str(tiny_model_dir / f"step{last}"), device="cpu"),
                    np.load(tokens))
    np.testing.assert_allclose(hub_df["top1"], local["top1"], rtol=1e-6)


@pytest.fixture
def loopback_hub(tiny_model_dir):
    """Revisions step0 and step4 of the tiny model on a loopback hub (tests/fake_hub.py)."""
    from tests.fake_hub import FakeHub

    fake = FakeHub()
    for s in (0, 4):
        fake.publish("madyn-test/tiny", f"step{s}", tiny_model_dir / f"step{s}")
    with fake:
        yield fake


def _hub_env(hub, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _madyn(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "madyn.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def _tokens(corpus_dir: Path, tmp_path: Path) -> Path:
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.load(corpus_dir / "heldout.npy")[:32].astype(np.int64).reshape(2, 16))
    return tokens


def _weights(home: Path, loopback_hub, revision: str) -> Path:
    """The weights link of ``revision`` in the hub cache under ``home``."""
    commit = loopback_hub.resolve("madyn-test/tiny", revision)
    return (home / "hub" / "models--madyn-test--tiny" / "snapshots" / commit
            / "model.safetensors")


def test_hub_download_deleted_after_measuring(loopback_hub, corpus_dir, tmp_path):
    """A revision madyn downloaded is measured, then its weights leave the cache (links
    and blobs); its small files stay. A user's file named like the by-hand marker beside
    --out is neither overwritten nor removed."""
    home, out = tmp_path / "hf", tmp_path / "o.parquet"
    mine = tmp_path / "o.download.json"
    mine.write_text("my notes\n")
    r = _madyn(["extract", "madyn-test/tiny", "--revision", "step0", "--tokens",
                _tokens(corpus_dir, tmp_path), "--out", out, "--device", "cpu",
                "--delete-download"], _hub_env(loopback_hub, home))
    assert r.returncode == 0, r.stderr
    assert out.exists() and mine.read_text() == "my notes\n"
    repo = home / "hub" / "models--madyn-test--tiny"
    assert not list(repo.glob("snapshots/*/*.safetensors"))
    assert [b for b in repo.glob("blobs/*") if b.stat().st_size > 100_000] == []  # weights
    assert list(repo.glob("snapshots/*/config.json"))  # small files stay


def test_delete_download_spares_a_revision_the_user_had_cached(loopback_hub, corpus_dir,
                                                               tmp_path):
    """The user's own snapshot_download of step4 before madyn's download and measurement
    with deletion: the user's weights (link and blob) survive; step0, which madyn fetched,
    is deleted, also when its download ran twice into the same marker."""
    home = tmp_path / "hf"
    env = _hub_env(loopback_hub, home)
    r = subprocess.run([sys.executable, "-c", "from huggingface_hub import "
                        "snapshot_download as d; d('madyn-test/tiny', revision='step4')"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    users = _weights(home, loopback_hub, "step4")
    blob = users.resolve()
    tokens = _tokens(corpus_dir, tmp_path)
    for step in (4, 0):
        marker = tmp_path / f"step{step}.json"
        for _ in range(2 if step == 0 else 1):  # a rerun download finds its own files
            r = _madyn(["step", "download", "madyn-test/tiny", "--revision", f"step{step}",
                        "--out", marker], env)
            assert r.returncode == 0, r.stderr
        r = _madyn(["extract", "--marker", marker, "--tokens", tokens, "--out",
                    tmp_path / f"s{step}.parquet", "--step", step, "--model", "tiny",
                    "--device", "cpu", "--delete-download"], env)
        assert r.returncode == 0, r.stderr
    assert users.is_symlink() and blob.is_file()
    assert blob.read_bytes() == (loopback_hub.files[loopback_hub.resolve(
        "madyn-test/tiny", "step4")]["model.safetensors"])
    ours = _weights(home, loopback_hub, "step0")
    assert not ours.exists() and not ours.is_symlink()
    assert read_json(tmp_path / "step4.json")["fetched"] == {"links": [], "blobs": []}


def _table(n_seqs=3, n_layers=4, seed=0):
    rng = np.random.default_rng(seed)
    top = np.sort(rng.uniform(5, 50, size=(n_seqs, 3, n_layers)), axis=1)[:, ::-1, :]
    med = rng.uniform(0.5, 1.0, size=(n_seqs, 1, n_layers))
    return released.to_table(np.concatenate([top, med], axis=1))


def test_released_layout_round_trip(tmp_path):
    tables = {s: _table(seed=s) for s in (0, 1, 2, 4)}
    for s, t in tables.items():
        released.write_exp2(t, released.exp2_path(tmp_path, "m_1", s))
    found = released.scan(tmp_path)
    assert sorted(found["m_1"]) == [0, 1, 2, 4]
    back = released.read_model(found["m_1"])
    for s, t in tables.items():
        np.testing.assert_allclose(back[s][released.QUANTITIES], t[released.QUANTITIES])
    arr = released.parse_exp2(found["m_1"][0].read_text())
    assert arr.shape == (3, 4, 4)  # B x Q x L


HOSTILE = {
    "code": "__import__('os').system('touch {pwned}')",
    "lambda": "(lambda: open('{pwned}', 'w'))()",
    "attr": "array([[[1.0]]]).__class__",
    "shape": "[[[1.0, 2.0], [1.0, 1.0]]]",
    "ragged": "[[[3.0], [2.0, 1.0], [1.0], [0.5]]]",
    "negative": "[[[-3.0], [2.0], [1.0], [0.5]]]",
    "order": "[[[1.0], [2.0], [3.0], [0.5]]]",
    "syntax": "[[[1.0",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_malformed_or_hostile_file_is_reported_and_skipped(kind, tmp_path):
    pwned = tmp_path / "PWNED"
    good = _table()
    released.write_exp2(good, released.exp2_path(tmp_path, "m", 0))
    bad = released.exp2_path(tmp_path, "m", 1)
    bad.write_text(HOSTILE[kind].format(pwned=pwned))
    warnings: list[str] = []
    tables = released.read_model(released.scan(tmp_path)["m"], warn=warnings.append)
    assert sorted(tables) == [0]
    assert len(warnings) == 1 and bad.name in warnings[0]
    assert not pwned.exists()


def test_wrapped_array_literal_accepted():
    text = "array([[[3.0], [2.0], [1.0], [0.5]]], dtype=float16)"
    assert released.parse_exp2(text).shape == (1, 4, 1)


def test_identical_weights_flagged_and_kept_out(tiny_model_dir, tmp_path):
    """A revision serving another revision's weights (pythia-2.8b's defect) is flagged."""
    steps = read_json(tiny_model_dir / "manifest.json")["steps"]
    fps = {s: fingerprint([tiny_model_dir / f"step{s}" / "model.safetensors"]) for s in steps}
    assert integrity(fps) == {}
    fps[steps[2]] = fps[steps[-1]]  # step 2 serves the final weights
    assert integrity(fps) == {steps[2]: f"weights identical to step {steps[-1]}"}
    # shard-level: a revision sharing one shard with another (pythia-12b)
    shard = {s: {"sha256": f"all{s}", "shards": {"a": f"a{s}", "b": f"b{s}"}} for s in steps}
    shard[steps[1]]["shards"]["a"] = shard[steps[-1]]["shards"]["a"]
    assert list(integrity(shard)) == [steps[1]]
    tables = {s: _table(seed=s) for s in steps}
    series, report = build_series(tables, {s: {"weights": fps[s]} for s in steps}, "tiny")
    assert series.loc[series["step"] == steps[2], "flagged"].all()
    assert not series.loc[series["step"] != steps[2], "flagged"].any()
    assert report["identical_groups"] == [sorted([steps[2], steps[-1]])]
    from madyn.measure.series import fit_input

    fi = fit_input(series)
    assert set(fi["quantity"]) == {"ratio", "top1", "median"}
    assert fi.loc[fi["step"] == steps[2], "flagged"].all()


def test_series_statistics(tmp_path):
    tables = {0: _table(seed=0), 10: _table(seed=1)}
    series, _ = build_series(tables, {0: {}, 10: {}}, "m")
    r = series[(series.statistic == "ratio") & (series.step == 10) & (series.layer == 2)]
    per_seq = tables[10][tables[10].layer == 2]["ratio"]
    assert r["mean"].item() == pytest.approx(per_seq.mean())
    assert r["sem"].item() == pytest.approx(per_seq.std() / np.sqrt(3))
    rom = series[(series.statistic == "ratio_of_means") & (series.step == 10)
                 & (series.layer == 2)]
    t = tables[10][tables[10].layer == 2]
    assert rom["mean"].item() == pytest.approx(t["top1"].mean() / t["median"].mean())


def test_deleting_a_revision_spares_files_a_running_download_shares(tiny_model_dir, tmp_path):
    """While revision B downloads, deleting measured revision A must not take the blobs A
    shares with B (config.json, tokenizer: the hub stores identical files once), even
    before B's snapshot links them; A's weights go."""
    from madyn.measure.hub import delete_cached_revision

    cache = tmp_path / "hub"
    a = publish_to_hub_cache(tiny_model_dir / "step0", cache, "madyn-test/tiny", "step0")
    b = publish_to_hub_cache(tiny_model_dir / "step12", cache, "madyn-test/tiny", "step12")
    repo = cache / "models--madyn-test--tiny"
    for f in (repo / "snapshots" / b).iterdir():  # B in flight: blobs there, links not yet
        f.unlink()
    shared = repo / "blobs" / hashlib.sha256(
        (tiny_model_dir / "step0" / "config.json").read_bytes()).hexdigest()
    weights_a = (repo / "snapshots" / a / "model.safetensors").resolve()
    fetched = {"links": ["model.safetensors"], "blobs": [weights_a.name]}  # madyn's fetch
    delete_cached_revision(repo / "snapshots" / a, fetched)
    assert shared.exists()
    assert not weights_a.exists()
    assert not (repo / "snapshots" / a / "model.safetensors").exists()
