"""A run suite is analysed as runs, not as a cross-model study: its DAG holds no cross-model
job, it ends with the run summary (printed, and on the report's front page), its headline
holds per-run numbers, a checkpoint folder and its own monitor are measured on the same
tokens, and a new checkpoint reruns only that run's jobs. A real HF Trainer run with
madyn's callback (tests/trainer_run.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from madyn.workflow.scratch_project import copy_workflow
from tests.trainer_run import train

ROOT = Path(__file__).resolve().parents[1]
STUDY_JOBS = {"evaluate", "predict_example", "forecast", "effects", "headline"}


@pytest.fixture(scope="module")
def run_folder(corpus_dir, tmp_path_factory) -> Path:
    """A Trainer run (140 steps, a checkpoint every 20, the callback every 20) whose last
    checkpoint is held back beside it, to be added later."""
    out = tmp_path_factory.mktemp("trainer") / "out"
    train(corpus_dir, out, steps=140, save_steps=20, every=20)
    (out.parent / "held").mkdir()
    shutil.move(out / "checkpoint-140", out.parent / "held" / "checkpoint-140")
    return out


@pytest.fixture(scope="module")
def project(run_folder, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The run's checkpoints and its monitor folder as a two-entry run suite, run once."""
    proj = copy_workflow(ROOT, tmp_path_factory.mktemp("proj"))
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["mine"] = {"source": "run", "models": [
        {"name": "trainer", "path": str(run_folder)},
        {"name": "live", "path": str(run_folder / "madyn-monitor")}]}
    cfg["suite"] = "mine"
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return proj, _snakemake(proj)


def _snakemake(proj: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=proj,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _jobs(out: str) -> dict[str, int]:
    """rule -> job count of a dry run's table."""
    table = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_the_dag_holds_no_cross_model_job(project):
    proj, r = project
    assert "evaluate" not in r.stderr and "Rule: effects" not in r.stderr
    res = proj / "results/mine"
    for f in ("metrics/predict.json", "metrics/interventions.json"):
        assert "single-run suite" in json.loads((res / f).read_text())["skipped"]
    assert not (res / "predict/lomo_heldout_curves.png").exists()
    assert not (res / "forecast/backtest.csv").exists()
    headline = json.loads((res / "metrics/headline.json").read_text())
    assert set(headline) >= {"suite", "fit", "run:trainer", "run:live"}
    assert not {"growth", "predict", "forecast", "interventions"} & set(headline)


def test_each_run_says_why_the_atlas_is_not_its_prior(project):
    """A run suite's forecast considers the committed atlas design prior first: this run
    (a short run measured on a few 32-token windows, not the atlas's 20) is outside its
    design space, so it is forecast from the relative-time priors, the reasons recorded."""
    proj, _ = project
    s = json.loads((proj / "results/mine/forecast/trainer/summary.json").read_text())
    assert "refused" not in s, s.get("refused")
    dp = s["design_prior"]
    assert dp["used"] is False and dp["path"].endswith("atlas.parquet")
    assert [r for r in dp["outside"] if r.startswith("evaluation batch ")
            and r.endswith(" x 32 (sequences x tokens)") and "20 x 32" not in r[:20]]
    assert "atlas" not in s["prior"]


def test_it_ends_with_the_run_summary(project):
    proj, r = project
    tail = r.stdout[r.stdout.index("run summary ("):]
    assert "run trainer: last checkpoint step 120" in tail
    assert "(no step 0: growth is measured from step 20)" in tail
    assert "run live: last checkpoint step 140" in tail  # the monitor saw the end
    table = pd.read_csv(proj / "results/mine/report/run_summary.csv")
    assert list(table["model"].unique()) == ["trainer", "live"]
    assert set(table["kind"]) <= {"first_token", "feature", "none", "unknown"}
    assert (table["peak_ratio"] >= table["last_ratio"]).all()
    assert (table["first_x10"].dropna() <= table["last_step"].max()).all()


def test_the_report_opens_on_the_run_summary(project):
    proj, _ = project
    subprocess.run([sys.executable, "-m", "snakemake", "--report", "report.html"], cwd=proj,
                   check=True, capture_output=True, timeout=600)
    html = (proj / "report.html").read_text()
    assert "Run summary" in html and "run trainer: last checkpoint step 120" in html


def test_checkpoints_and_monitor_of_one_run_agree(project):
    proj, _ = project
    res = proj / "results/mine"
    trainer = pd.read_parquet(res / "series/trainer.parquet")
    live = pd.read_parquet(res / "series/live.parquet")
    ratio = lambda s: s[s["statistic"] == "ratio"].set_index(["step", "layer"])["mean"]  # noqa: E731
    a, b = ratio(trainer), ratio(live)
    common = a.index.intersection(b.index)
    assert len(common) >= 12  # steps 20 ... 120, every layer
    np.testing.assert_allclose(a[common].to_numpy(), b[common].to_numpy(), rtol=1e-5)


def test_check_reads_a_run_suite_and_a_suite_that_is_not_active(project):
    proj, _ = project
    check = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "madyn.cli", "check", *a], cwd=proj, capture_output=True,
        text=True, timeout=120)
    r = check()
    assert r.returncode == 0, r.stderr
    assert "suite=mine (run, single-run), 2 models" in r.stdout
    assert "trainer: 6 checkpoints (steps 20-120), planned last step 140" in r.stdout
    assert "skipped madyn-monitor: no step in its name" in r.stdout
    r = check("--suite", "smoke")
    assert r.returncode == 0 and "suite=smoke (local, study)" in r.stdout
    r = check("--suite", "nope")
    assert r.returncode == 2 and r.stderr.startswith("madyn check: --suite: no suite 'nope'")


def test_a_new_checkpoint_reruns_only_that_runs_jobs(project, run_folder):
    proj, _ = project
    shutil.move(run_folder.parent / "held" / "checkpoint-140", run_folder / "checkpoint-140")
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], cwd=proj,
                         capture_output=True, text=True, timeout=300)
    jobs = _jobs(dry.stdout)
    assert jobs["extract_run_0_trainer"] == 1 and jobs["forecast_run"] == 1
    assert jobs["fit"] == 1 and jobs["series"] == 1  # the trainer's, not the monitor's
    assert not STUDY_JOBS & set(jobs)
    r = _snakemake(proj)
    log = (proj / "results/mine/logs/extract/trainer.log").read_text()
    assert "measured 1 checkpoints, kept 6 up to date" in log
    assert "run trainer: last checkpoint step 140" in r.stdout
    r = _snakemake(proj, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr


@pytest.mark.slow
def test_snakemake_and_dvc_repro_are_interchangeable(run_folder, tmp_path):
    """In a git + DVC repository, a complete `snakemake` records itself in DVC (`dvc
    status` clean, `dvc repro` runs nothing) with no extra command; after a new checkpoint,
    `dvc repro` measures only it and leaves `snakemake -n` nothing to do."""
    if (run_folder.parent / "held" / "checkpoint-140").exists():  # this test alone
        shutil.move(run_folder.parent / "held" / "checkpoint-140",
                    run_folder / "checkpoint-140")
    proj = copy_workflow(ROOT, tmp_path)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["mine"] = {"source": "run", "models": [
        {"name": "trainer", "path": str(run_folder)}]}
    cfg["suite"] = "mine"
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = lambda *cmd: subprocess.run(cmd, cwd=proj, capture_output=True, text=True,  # noqa: E731
                                      timeout=900)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        assert run(*cmd).returncode == 0
    r = _snakemake(proj)
    assert "every stage committed" in r.stdout
    assert "up to date" in run(sys.executable, "-m", "dvc", "status").stdout
    assert "Running stage" not in run(sys.executable, "-m", "dvc", "repro").stdout

    new = run_folder / "checkpoint-160"  # one more checkpoint (the last one's weights)
    shutil.copytree(run_folder / "checkpoint-140", new)
    state = json.loads((new / "trainer_state.json").read_text())
    (new / "trainer_state.json").write_text(json.dumps({**state, "global_step": 160}))
    try:
        r = run(sys.executable, "-m", "dvc", "repro")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        log = (proj / "results/mine/logs/extract/trainer.log").read_text()
        assert "measured 1 checkpoints, kept 7 up to date" in log
        assert "run trainer: last checkpoint step 160" in r.stdout
        dry = _snakemake(proj, "-n")
        assert "Nothing to be done" in dry.stdout + dry.stderr
    finally:
        shutil.rmtree(new)
