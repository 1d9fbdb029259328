"""The workflow on the smoke suite, driven the way researchers drive it: `dvc repro` (whose
stages call Snakemake targets), then Snakemake directly. Validation first, idempotence,
incremental reruns from DVC's own output, the report, and a kill -9 midway."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from madyn.project import copy_workflow
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DVC = [str(BIN / "dvc")]
ENV = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
       "GIT_AUTHOR_NAME": "madyn-test", "GIT_AUTHOR_EMAIL": "test@madyn",
       "GIT_COMMITTER_NAME": "madyn-test", "GIT_COMMITTER_EMAIL": "test@madyn"}


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([*SNAKEMAKE, *args], cwd)


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    r = _run([*DVC, *args], cwd)
    assert r.returncode == 0, f"dvc {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _stages_run(out: str) -> set[str]:
    """Stages DVC says it ran ("Running stage 'fit':")."""
    return set(re.findall(r"Running stage '([^']+)'", out))


def test_bad_params_fail_before_any_job(tmp_path):
    proj = copy_workflow(ROOT, tmp_path)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["smoke"]["train"]["steps"] = -1
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake(proj, "--cores", "1")
    assert r.returncode != 0
    assert "suites.smoke.train.steps" in r.stdout + r.stderr
    assert not (proj / "results").exists()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke suite through `dvc repro` in a fresh git + DVC repository."""
    proj = copy_workflow(ROOT, tmp_path_factory.mktemp("proj"))
    remote = tmp_path_factory.mktemp("remote")
    assert _run(["git", "init", "-q"], proj).returncode == 0
    _dvc(proj, "init", "-q")
    _dvc(proj, "remote", "add", "-d", "local", str(remote))
    assert _run(["git", "add", "-A"], proj).returncode == 0
    assert _run(["git", "commit", "-qm", "init"], proj).returncode == 0
    r = _dvc(proj, "repro")
    return proj, r


def test_dvc_repro_runs_every_phase(smoke_run):
    proj, r = smoke_run
    assert _stages_run(r.stdout) == {"suite", "extract", "fit", "features", "predict",
                                      "report"}
    res = proj / "results/smoke"
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    for m in [m["name"] for m in cfg["suites"]["smoke"]["models"]]:
        assert len(list((res / "models" / m).glob("step*/model.safetensors"))) >= 8
        assert (res / "series" / f"{m}.parquet").exists()
        assert (res / "figures" / m / "series.png").exists()
        assert len(list((res / "released" / m / "stats").glob(f"exp2_{m}_step*"))) >= 8
        assert (res / "params" / m / "layer_fit_params_ratio.json").exists()
        assert "loss" in (res / f"logs/train_{m}.log").read_text()  # progress lines
    for f in ["metrics/growth.json", "metrics/fit.json", "metrics/predict.json",
              "predict/example/summary.json", "report/peak_heatmaps.png"]:
        assert (res / f).exists(), f
    html = (res / "report.html").read_text(errors="replace")
    assert "peak_heatmaps.png" in html and "s2-w32-h2" in html


def test_second_run_does_nothing(smoke_run):
    proj, _ = smoke_run
    r = _snakemake(proj, "--cores", "2", "-n")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr
    assert "up to date" in _dvc(proj, "status").stdout


def test_predictor_param_reruns_only_predict_onward(smoke_run):
    proj, _ = smoke_run
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["predict"]["xgb_max_depth"] = 2
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = _dvc(proj, "repro")
    assert _stages_run(r.stdout) == {"predict", "report"}, r.stdout
    for stage in ("suite", "extract", "fit", "features"):
        assert f"Stage '{stage}' didn't change, skipping" in r.stdout
    again = _dvc(proj, "repro")
    assert _stages_run(again.stdout) == set()
    assert "Data and pipelines are up to date" in again.stdout


@pytest.mark.slow
def test_adding_a_model_trains_and_measures_only_it(smoke_run):
    proj, _ = smoke_run
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    smoke = cfg["suites"]["smoke"]
    smoke["models"].append({"name": "s2-w48-h2", "layers": 2, "width": 48, "heads": 2})
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = _dvc(proj, "repro")
    counts = _job_counts(r.stdout + r.stderr, first_only=False)  # over the stages
    n_steps = len(list((proj / "results/smoke/models/s2-w48-h2").glob("step*")))
    assert counts["train"] == 1
    assert counts["extract_checkpoint"] == n_steps
    assert _stages_run(_dvc(proj, "repro").stdout) == set()


@pytest.mark.slow
def test_fit_param_reruns_fit_onward(smoke_run):
    proj, _ = smoke_run
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["fit"]["alpha"] = cfg["fit"]["alpha"] * 2
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = _dvc(proj, "repro")
    assert _stages_run(r.stdout) == {"fit", "features", "predict", "report"}, r.stdout


def test_predict_cli_on_outside_configs(smoke_run, tmp_path):
    from transformers import BertConfig, LlamaConfig

    proj, _ = smoke_run
    llama = tmp_path / "llama.json"
    llama.write_text(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=5,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 vocab_size=320).to_json_string())
    r = _run([str(BIN / "madyn"), "predict", "--config", str(llama), "--out",
              str(tmp_path / "pred")], proj)
    assert r.returncode == 0, r.stderr[-2000:]
    curves = (tmp_path / "pred/curves.csv").read_text().splitlines()
    assert curves[0] == "layer,step,pred,lo,hi"
    assert {line.split(",")[0] for line in curves[1:]} == {str(i) for i in range(5)}
    assert (tmp_path / "pred/prediction.png").stat().st_size > 10_000
    bert = tmp_path / "bert.json"
    bert.write_text(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128).to_json_string())
    r = _run([str(BIN / "madyn"), "predict", "--config", str(bert), "--out",
              str(tmp_path / "bad")], proj)
    assert r.returncode != 0
    assert "not a decoder-only" in r.stderr and "bert" in r.stderr
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_dvc_plots_and_push(smoke_run, tmp_path):
    proj, _ = smoke_run
    _dvc(proj, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "loss.csv" in html and "peak_heatmaps.png" in html
    assert "pushed" in _dvc(proj, "push").stdout


def _job_counts(text: str, first_only: bool = True) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table: the first one (a dry run
    prints it twice), or summed over the tables of several runs (one per DVC stage)."""
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        parts = line.split()
        if in_table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = counts.get(parts[0], 0) + int(parts[1])
        elif in_table and parts and parts[0] == "total":
            if first_only:
                break
            in_table = False
    return counts


def test_kill_midway_then_rerun_redoes_only_missing(smoke_run):
    from madyn.extract import read_stats

    proj, _ = smoke_run
    model = "s3-w48-h4"
    stats = sorted((proj / "results/smoke/stats" / model).glob("step*.parquet"))
    assert len(stats) >= 8
    # back to the state of a first run that is still extracting this model: no statistics,
    # nothing downstream of them (Snakemake rightly leaves intermediates alone otherwise)
    res = proj / "results/smoke"
    for f in [*stats, res / f"series/{model}.parquet", res / f"integrity/{model}.json"]:
        f.unlink()
    log = proj / "killed_run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, "--cores", "2", "extract_all"], cwd=proj,
                                env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 300

        def finished() -> int:  # extraction jobs Snakemake has recorded as complete
            return log.read_text().count("(Rule: extract_checkpoint)")

        while finished() < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the harshest stop: no cleanup at all
        proc.wait()
    recorded = finished()
    done = [f for f in stats if f.exists()]
    assert 2 <= recorded <= len(done) < len(stats), log.read_text()[-3000:]
    for f in done:  # whatever exists is complete and readable
        df, meta = read_stats(f)
        assert len(df) > 0 and meta["model"] == model
    assert _snakemake(proj, "--unlock").returncode == 0
    dry = _snakemake(proj, "--cores", "2", "-n", "extract_all")
    counts = _job_counts(dry.stdout + dry.stderr)
    # redone: the missing files, plus any written in the instant between the file landing
    # and Snakemake recording its job as finished (Snakemake reruns those, conservatively)
    redo = counts.get("extract_checkpoint", 0)
    reasons = "\n".join(x for x in dry.stdout.splitlines() if "reason:" in x or "output:" in x)
    assert len(stats) - len(done) <= redo <= len(stats) - recorded, reasons[-4000:]
    assert "train" not in counts and "corpus" not in counts
    r = _snakemake(proj, "--cores", "2", "extract_all")
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(f.exists() for f in stats)
    assert not list((proj / "results/smoke/stats" / model).glob(".*"))  # no temp debris
