"""The Snakemake workflow on the smoke suite: validation first, parallel jobs, idempotence."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _project_copy(dst: Path) -> Path:
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, dst / name)
    for name in ("workflow", "profiles"):
        shutil.copytree(ROOT / name, dst / name)
    return dst


def _snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env_path = str(Path(sys.executable).parent)
    import os

    env = {**os.environ, "PATH": env_path + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_bad_params_fail_before_any_job(tmp_path):
    proj = _project_copy(tmp_path)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["smoke"]["train"]["steps"] = -1
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake(proj, "--cores", "1", "--config", "suite=smoke")
    assert r.returncode != 0
    assert "suites.smoke.train.steps" in r.stdout + r.stderr
    assert not (proj / "results").exists()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    proj = _project_copy(tmp_path_factory.mktemp("proj"))
    r = _snakemake(proj, "--cores", "2", "--config", "suite=smoke")
    assert r.returncode == 0, r.stderr[-3000:]
    return proj, r


def test_smoke_suite_trains_every_model(smoke_run):
    proj, _ = smoke_run
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    for m in cfg["suites"]["smoke"]["models"]:
        out = proj / "results/smoke/models" / m["name"]
        assert (out / "manifest.json").exists()
        assert len(list(out.glob("step*/model.safetensors"))) >= 8
        assert (proj / "results/smoke/series" / f"{m['name']}.parquet").exists()
        assert (proj / "results/smoke/figures" / m["name"] / "series.png").exists()
        exp2 = proj / "results/smoke/released" / m["name"] / "stats"
        assert len(list(exp2.glob(f"exp2_{m['name']}_step*"))) >= 8
        log = (proj / f"results/smoke/logs/train_{m['name']}.log").read_text()
        assert "loss" in log  # progress lines were written


def test_second_run_does_nothing(smoke_run):
    proj, _ = smoke_run
    r = _snakemake(proj, "--cores", "2", "--config", "suite=smoke", "-n")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr


def _job_counts(text: str) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table."""
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        parts = line.split()
        if in_table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
        elif in_table and parts and parts[0] == "total":
            break
    return counts


def test_kill_midway_then_rerun_redoes_only_missing(smoke_run):
    import contextlib
    import os
    import signal
    import time

    from madyn.extract import read_stats

    proj, _ = smoke_run
    model = "s3-w48-h4"
    stats = sorted((proj / "results/smoke/stats" / model).glob("step*.parquet"))
    assert len(stats) >= 8, sorted(p.name for p in (proj / "results/smoke").rglob("*"))[:50]
    for f in stats:
        f.unlink()
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep
           + os.environ.get("PATH", "")}
    log = proj / "killed_run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, "--cores", "2", "--config", "suite=smoke"],
                                cwd=proj, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while (sum(f.exists() for f in stats) < 2 and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the harshest stop: no cleanup at all
        proc.wait()
    done = [f for f in stats if f.exists()]
    assert 2 <= len(done) < len(stats), log.read_text()[-3000:]
    for f in done:  # whatever exists is complete and readable
        df, meta = read_stats(f)
        assert len(df) > 0 and meta["model"] == model
    assert _snakemake(proj, "--unlock", "--config", "suite=smoke").returncode == 0
    dry = _snakemake(proj, "--cores", "2", "--config", "suite=smoke", "-n")
    counts = _job_counts(dry.stdout + dry.stderr)
    assert counts.get("extract_checkpoint") == len(stats) - len(done)
    assert "train" not in counts and "corpus" not in counts
    r = _snakemake(proj, "--cores", "2", "--config", "suite=smoke")
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(f.exists() for f in stats)
    assert not list((proj / "results/smoke/stats" / model).glob(".*"))  # no temp debris
