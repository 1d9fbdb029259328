"""The disk budget at run time: a hub suite of 6 revisions, downloaded for real from a
loopback hub (tests/fake_hub.py) into an empty cache by the workflow's ``download`` jobs,
measured and deleted by its ``extract_checkpoint`` jobs. A thread samples the bytes of
weights in the cache every few ms: with ``extract.disk_budget_gb`` they stay within it;
without, downloads outrun measuring and they do not."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from madyn.io import read_json
from madyn.measure.extract import measure_checkpoint
from madyn.measure.stats_table import STAT_COLUMNS, read_stats
from madyn.workflow.scratch_project import copy_workflow
from tests.fake_hub import FakeHub
from tests.helpers import ROOT

REPO = "madyn-test/tiny"
SUITE = "hubtiny"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def hub(tiny_model_dir):
    """Every checkpoint of the tiny model as revision step{N}; main = the last."""
    steps = read_json(tiny_model_dir / "manifest.json")["steps"]
    fake = FakeHub()
    for s in steps:
        fake.publish(REPO, f"step{s}", tiny_model_dir / f"step{s}")
    fake.alias(REPO, "main", f"step{steps[-1]}")
    with fake:
        yield fake


def _steps(tiny_model_dir: Path) -> list[int]:
    """Six of the seven revisions (the fewest a fit takes): 0, 1, 2, 4, 5, 12."""
    steps = read_json(tiny_model_dir / "manifest.json")["steps"]
    return steps[:-2] + steps[-1:]


def _suite(steps: list[int], extract: dict) -> dict:
    return {"description": "the tiny model's checkpoints from a loopback hub",
            "source": "hub", "corpus": {"max_mb": 0.4, "heldout_fraction": 0.1,
                                        "vocab_size": 300},
            "extract": {"n_seqs": 2, "seq_len": 16, "seed": 0, "dtype": "float32",
                        "device": "cpu", "batch_size": 2, **extract},
            "models": [{"name": "tiny", "repo": REPO}],
            "schedule": {"log_until": 4, "every": 5, "last": steps[-1]},
            "analyse_steps": steps}


def _env(hub: FakeHub, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", "")}


class WeightsOnDisk(threading.Thread):
    """Samples the bytes of weight blobs (complete or ``.incomplete``) in a hub cache."""

    def __init__(self, blobs: Path, weight_shas: set[str], every_s: float = 0.005):
        super().__init__(daemon=True)
        self.blobs, self.shas, self.every_s = blobs, weight_shas, every_s
        self.peak, self.samples, self._done = 0, 0, threading.Event()

    def bytes_now(self) -> int:
        total = 0
        try:
            entries = list(os.scandir(self.blobs))
        except FileNotFoundError:
            return 0
        for e in entries:
            if e.name.split(".")[0] in self.shas:
                with contextlib.suppress(FileNotFoundError):  # deleted since listed
                    total += e.stat(follow_symlinks=False).st_size
        return total

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.bytes_now())
            self.samples += 1
            time.sleep(self.every_s)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _blobs(hf_home: Path) -> Path:
    return hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"


def _run(hub: FakeHub, tmp: Path, steps: list[int], extract: dict,
         targets: list[str], net: int = 1) -> tuple[Path, int, float]:
    """Run the workflow on a fresh project and an empty hub cache; returns the project,
    the peak bytes of weights in the cache and the seconds Snakemake took."""
    proj, home = tmp / "proj", tmp / "hf"
    proj.mkdir()
    copy_workflow(ROOT, proj, suite=SUITE)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"][SUITE] = _suite(steps, extract)
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = _env(hub, home)
    # the model's config.json, fetched first (as the feature table does): the plan reads
    # its parameter count from the cache, so the windows fit the real revision size
    r = subprocess.run([sys.executable, "-m", "madyn.cli", "step", "config-json", REPO, "--out",
                        str(tmp / "config.json")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    shas = {hub.sha256(c, "model.safetensors") for c in hub.files}
    sampler = WeightsOnDisk(_blobs(home), shas)
    sampler.start()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "2",
                        "--resources", f"net={net}"],
                       cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - t0
    peak = sampler.stop()
    assert r.returncode == 0, (r.stdout[-3000:] + r.stderr[-3000:])
    assert sampler.samples > 100
    return proj, peak, seconds


def _weights_gets(hub: FakeHub, since: float) -> dict[str, list[float]]:
    """Wall-clock times of the weight downloads served since ``since``, per commit."""
    out: dict[str, list[float]] = {}
    for e in hub.log:
        if e.method == "GET" and e.file == "model.safetensors" and e.wall >= since:
            out.setdefault(hub.resolve(e.repo, e.revision), []).append(e.wall)
    return out


def test_disk_budget_bounds_the_downloads_at_run_time(hub, tiny_model_dir, tmp_path):
    steps = _steps(tiny_model_dir)
    size = (tiny_model_dir / f"step{steps[0]}" / "model.safetensors").stat().st_size
    budget = 2.5 * size  # two revisions fit, three do not
    since = time.time()
    stats = [f"results/{SUITE}/stats/tiny/step{s}.parquet" for s in steps]
    proj, peak, seconds = _run(hub, tmp_path, steps,
                               {"delete_downloads": True, "disk_budget_gb": budget / 1e9},
                               stats)
    print(f"budgeted run: {seconds:.1f}s, peak {peak} bytes of weights "
          f"({peak / size:.2f} revisions), budget {budget:.0f}")
    # the cache filled by downloading, and never held more weights than the budget; the
    # sampler sees whole revisions (each stays until its measuring process ends: seconds)
    assert size <= peak <= budget
    gets = _weights_gets(hub, since)
    commits = {hub.refs[REPO][f"step{s}"] for s in steps}
    assert set(gets) == commits and all(len(v) == 1 for v in gets.values())
    shas = {hub.sha256(c, "model.safetensors") for c in commits}
    assert WeightsOnDisk(_blobs(tmp_path / "hf"), shas).bytes_now() == 0  # all deleted
    # downloads overlap measuring: a revision arrives before the previous one is measured
    order = [gets[hub.refs[REPO][f"step{s}"]][0] for s in steps]
    measured = [(proj / f).stat().st_mtime for f in stats]
    assert any(order[i + 1] < measured[i] for i in range(len(steps) - 1))
    # every revision measured, and equal to measuring the same checkpoint locally
    tokens = np.load(proj / f"results/{SUITE}/eval/tokens_{REPO.replace('/', '--')}.npy")
    sha = read_json(tiny_model_dir / "manifest.json")["weights_sha256"]
    for s, f in zip(steps, stats, strict=True):
        df, meta = read_stats(proj / f)
        assert (meta["source"], meta["revision"], meta["step"]) == (REPO, f"step{s}", s)
        assert meta["weights"]["shards"]["model.safetensors"] == sha[str(s)]
        local, _ = measure_checkpoint(str(tiny_model_dir / f"step{s}"), tokens,
                                      {"device": "cpu", "batch_size": 2})
        np.testing.assert_allclose(df[STAT_COLUMNS].to_numpy(float),
                                   local[STAT_COLUMNS].to_numpy(float), rtol=1e-6)


def test_without_budget_downloads_outrun_the_disk(hub, tiny_model_dir, tmp_path):
    """The same sampler fails the bound when nothing gates the downloads."""
    steps = _steps(tiny_model_dir)
    size = (tiny_model_dir / f"step{steps[0]}" / "model.safetensors").stat().st_size
    markers = [f"results/{SUITE}/downloads/tiny/step{s}.json" for s in steps]
    _, peak, seconds = _run(hub, tmp_path, steps, {"delete_downloads": True}, markers,
                            net=2)
    print(f"unbudgeted downloads: {seconds:.1f}s, peak {peak / size:.2f} revisions")
    assert peak == len(steps) * size > 2.5 * size
