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
    shutil.copytree(ROOT / "workflow", dst / "workflow")
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
        log = (proj / f"results/smoke/logs/train_{m['name']}.log").read_text()
        assert "loss" in log  # progress lines were written


def test_second_run_does_nothing(smoke_run):
    proj, _ = smoke_run
    r = _snakemake(proj, "--cores", "2", "--config", "suite=smoke", "-n")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr
