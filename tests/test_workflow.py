"""The workflow on the smoke suite, driven the way researchers drive it: `dvc repro` (whose
stages call Snakemake targets), then Snakemake directly. Validation first, idempotence,
incremental reruns from DVC's own output, the report, and a kill -9 midway."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from madyn.io import read_json
from madyn.workflow.scratch_project import copy_workflow
from tests.helpers import ROOT

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


def make_smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The smoke suite through `madyn run` (what `make run` calls: `dvc repro` stage by
    stage, no extra suite) in a fresh git + DVC repository: the session's ``smoke_run``
    fixture (tests/conftest.py)."""
    proj = copy_workflow(ROOT, tmp_path_factory.mktemp("proj"))
    _git_dvc_init(proj, tmp_path_factory.mktemp("remote"))
    r = _run([str(BIN / "madyn"), "run", "--cores", "2", "--extra-suites"], proj, timeout=1500)
    assert r.returncode == 0, f"madyn run:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return proj, r


def _git_dvc_init(proj: Path, remote: Path) -> None:
    """Make ``proj`` a git + DVC repository (DVC remote: the folder ``remote``)."""
    assert _run(["git", "init", "-q"], proj).returncode == 0
    _dvc(proj, "init", "-q")
    _dvc(proj, "remote", "add", "-d", "local", str(remote))
    assert _run(["git", "add", "-A"], proj).returncode == 0
    assert _run(["git", "commit", "-qm", "init"], proj).returncode == 0


def test_dvc_repro_runs_every_phase(smoke_run):
    proj, r = smoke_run
    assert _stages_run(r.stdout) == {"source", "suite", "extract", "fit", "features", "predict",
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


def test_madyn_run_ends_with_its_phase_times_status_and_headline(smoke_run):
    proj, r = smoke_run
    times = (proj / "results/smoke/logs/phase_times.tsv").read_text().splitlines()
    assert times[0] == "phase\twall_s"
    assert [line.split("\t")[0] for line in times[1:]] == [
        "source", "suite", "extract", "fit", "features", "predict", "report", "wait", "total"]
    assert all(int(line.split("\t")[1]) >= 0 for line in times[1:])
    tail = r.stdout[r.stdout.index("phase times"):]
    assert "Data and pipelines are up to date" in tail  # dvc status, after the stages
    assert "headline (results/smoke/metrics/headline.json):" in tail
    assert "  growth: ratio_mid_mean" in tail


def test_madyn_run_fails_naming_a_failed_extra_suite_and_its_log(smoke_copy):
    r = _run([str(BIN / "madyn"), "run", "--cores", "1", "--extra-suites", "nosuch"],
             smoke_copy)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == "madyn run: suite nosuch failed (exit 1): results/nosuch/logs/make_run.log"
    assert "nosuch" in (smoke_copy / "results/nosuch/logs/make_run.log").read_text()
    assert not (smoke_copy / "results/smoke/logs/phase_times.tsv").read_text().count("nosuch")


def test_second_run_does_nothing(smoke_copy):
    proj = smoke_copy
    r = _snakemake(proj, "--cores", "2", "-n")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr
    assert "up to date" in _dvc(proj, "status").stdout


def test_compare_from_an_inactive_venv(smoke_copy):
    """`madyn compare` finds the dvc installed beside it (PATH without the venv): the
    headline metrics and the active suite's params, not the other suites' or the deps."""
    proj = smoke_copy
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "madyn.cli", "compare", "--csv"], cwd=proj,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split(",")
    assert "growth.ratio_mid_mean" in header and "suites.smoke.train.lr" in header
    assert not [c for c in header if c.startswith(("suites.embedded", "src/", "results/"))]
    assert len(header) < 100


def test_predictor_param_reruns_only_predict_onward(smoke_copy):
    proj = smoke_copy
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
def test_adding_a_model_trains_and_measures_only_it(smoke_copy):
    proj = smoke_copy
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    smoke = cfg["suites"]["smoke"]
    smoke["models"].append({"name": "s2-w48-h2", "layers": 2, "width": 48, "heads": 2})
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = _dvc(proj, "repro")
    counts = _job_counts(r.stdout + r.stderr, first_only=False)  # over the stages
    n_steps = len(list((proj / "results/smoke/models/s2-w48-h2").glob("step*")))
    assert counts["train"] == 1 and n_steps >= 8
    assert counts["extract_model"] == 1  # one measuring process for the new model
    assert _stages_run(_dvc(proj, "repro").stdout) == set()


@pytest.mark.slow
def test_fit_param_reruns_fit_onward(smoke_copy):
    proj = smoke_copy
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


def test_dvc_plots_and_push(smoke_copy, tmp_path):
    proj = smoke_copy
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


def test_kill_midway_then_rerun_measures_only_missing(smoke_copy):
    """A model is measured in one process that writes each checkpoint's table as soon as
    it is done: killed midway, the written tables stay and the rerun measures the rest."""
    from madyn.measure.stats_table import read_stats

    proj = smoke_copy
    model = "s3-w48-h4"
    stats = sorted((proj / "results/smoke/stats" / model).glob("step*.parquet"))
    assert len(stats) >= 8
    res = proj / "results/smoke"
    for f in [*stats, res / f"series/{model}.parquet", res / f"integrity/{model}.json"]:
        f.unlink()
    log = res / f"logs/extract/{model}.log"
    log.unlink()  # the first run's
    with (proj / "killed_run.log").open("w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, "--cores", "2", "extract_all"], cwd=proj,
                                env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 300

        def measured() -> int:  # tables the measuring process reports written
            return log.read_text().count(f"[{model}] step") if log.exists() else 0

        while measured() < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the harshest stop: no cleanup at all
        proc.wait()
    done = [f for f in stats if f.exists()]
    assert 2 <= len(done) < len(stats), log.read_text()[-3000:]
    for f in done:  # whatever exists is complete and readable
        df, meta = read_stats(f)
        assert len(df) > 0 and meta["model"] == model
    assert _snakemake(proj, "--unlock").returncode == 0
    r = _snakemake(proj, "--cores", "2", "extract_all")
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(f.exists() for f in stats)
    last = log.read_text().strip().splitlines()[-1]
    assert f"measured {len(stats) - len(done)} checkpoints, kept {len(done)}" in last, last
    assert not list((proj / "results/smoke/stats" / model).glob(".*"))  # no temp debris


def test_kill_during_forcerun_fit_then_rerun_restores_fits(smoke_copy):
    """`snakemake --forcerun fit` removes each fit job's outputs before running it; killed
    then (SIGKILL to the process group), the summaries are still newer than everything, so
    only the phase target naming every per-model output makes the rerun restore them."""
    proj = smoke_copy
    res = proj / "results/smoke"
    per_model = sorted([*res.glob("params/*/layer_fit_params_*.json"),
                        *(f for f in res.glob("fits/*.parquet") if f.name != "all.parquet")])
    assert len(per_model) >= 8
    before = {f: f.read_bytes() for f in per_model}
    with (proj / "killed_fit.log").open("w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, "--cores", "2", "--forcerun", "fit", "fit_all"],
                                cwd=proj, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while (all(f.exists() for f in per_model) and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    missing = [f for f in per_model if not f.exists()]
    assert missing, (proj / "killed_fit.log").read_text()[-3000:]
    assert _snakemake(proj, "--unlock").returncode == 0
    r = _snakemake(proj, "--cores", "2", "fit_all")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Nothing to be done" not in r.stdout + r.stderr
    assert [f for f in per_model if not f.exists()] == []
    assert all(f.read_bytes() == before[f] for f in per_model)  # fits are deterministic
    dry = _snakemake(proj, "--cores", "2", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_deleted_stats_remeasured_alone_with_forcerun(smoke_copy):
    """docs/measuring.md: a deleted table is measured again by `--forcerun extract_model`, alone."""
    proj = smoke_copy
    res = proj / "results/smoke"
    victim = sorted((res / "stats/s2-w32-h2").glob("step*.parquet"))[3]
    n = len(list(victim.parent.glob("step*.parquet")))
    victim.unlink()
    r = _snakemake(proj, "--cores", "2", "--forcerun", "extract_model", "extract_all")
    assert r.returncode == 0, r.stderr[-2000:]
    assert victim.exists()
    last = (res / "logs/extract/s2-w32-h2.log").read_text().strip().splitlines()[-1]
    assert f"measured 1 checkpoints, kept {n - 1}" in last, last


def _released_project(smoke_run, tmp_path, models: list[dict]) -> tuple[Path, Path]:
    """A project whose active suite is the smoke run's export in the released layout."""
    proj, _ = smoke_run
    data = tmp_path / "released"
    shutil.copytree(proj / "results/smoke/released", data)
    rel = copy_workflow(ROOT, tmp_path / "rel", suite="smoke")
    cfg = yaml.safe_load((rel / "params.yaml").read_text())
    cfg["suites"]["study"] = {"source": "released", "path": str(data), "models": models}
    cfg["suite"] = "study"
    (rel / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return rel, data


SMOKE_ARCH = [{"name": "s2-w32-h2", "layers": 2, "width": 32, "heads": 2, "vocab_size": 320},
              {"name": "s3-w48-h4", "layers": 3, "width": 48, "heads": 4, "vocab_size": 320}]


def _smoke_growth(proj: Path) -> dict:
    """The smoke run's growth.json, for the models exported as the released suite."""
    names = {a["name"] for a in SMOKE_ARCH}
    growth = read_json(proj / "results/smoke/metrics/growth.json")
    return {m: v for m, v in growth.items() if m in names}


def test_released_suite_end_to_end_with_hostile_files(smoke_run, tmp_path):
    proj, _ = smoke_run
    (tmp_path / "rel").mkdir()
    rel, data = _released_project(smoke_run, tmp_path, SMOKE_ARCH)
    stats = data / "s2-w32-h2" / "stats"
    pwned = tmp_path / "PWNED"
    hostile = {5: f"__import__('os').system('touch {pwned}')",
               7: "[[[print(1), 2.0, 3.0, 4.0]]]",
               9: "[" * 5000 + "]" * 5000,
               11: "- " * 10000 + "1"}
    for step, text in hostile.items():
        (stats / f"exp2_s2-w32-h2_step{step}").write_text(text)
    with open(stats / "exp2_s2-w32-h2_step13", "wb") as f:
        f.truncate(64 * 2**20 + 1)  # over the size limit: never read
    r = _snakemake(rel, "--cores", "2")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert not pwned.exists()
    res = rel / "results/study"
    assert read_json(res / "metrics/growth.json") == _smoke_growth(proj)
    skipped = read_json(res / "integrity/s2-w32-h2.json")["skipped_files"]
    assert {Path(f).name for f in skipped} == {f"exp2_s2-w32-h2_step{s}"
                                               for s in (5, 7, 9, 11, 13)}
    assert all(skipped.values())  # each with its reason
    for f in ["metrics/fit.json", "metrics/predict.json", "report/peak_heatmaps.png"]:
        assert (res / f).exists(), f
    # the released files are the series' inputs: an edited or deleted file is read again
    victim, other = stats / "exp2_s2-w32-h2_step20", stats / "exp2_s2-w32-h2_step30"
    victim.write_text(other.read_text())
    dry = _snakemake(rel, "--cores", "2", "-n")
    assert _job_counts(dry.stdout + dry.stderr).get("series") == 1, dry.stdout[-2000:]
    victim.unlink()
    dry = _snakemake(rel, "--cores", "2", "-n")
    assert _job_counts(dry.stdout + dry.stderr).get("series") == 1, dry.stdout[-2000:]


@pytest.mark.slow
def test_released_suite_under_dvc(smoke_run, tmp_path):
    """`dvc repro` with a released suite active: the released folder is a read-only DVC
    dependency (the suite stage's, through madyn's link), so an edited or deleted exp2 file
    reruns the suite stage, whose changed manifest reruns extract and what follows."""
    from madyn.measure.released import read_exp2, to_table, write_exp2

    proj, _ = smoke_run
    (tmp_path / "rel").mkdir()
    rel, data = _released_project(smoke_run, tmp_path, SMOKE_ARCH)
    _git_dvc_init(rel, tmp_path / "remote")
    r = _dvc(rel, "repro")
    assert _stages_run(r.stdout) == {"source", "suite", "extract", "fit", "features", "predict",
                                      "report"}
    res = rel / "results/study"
    smoke_growth = _smoke_growth(proj)
    assert read_json(res / "metrics/growth.json") == smoke_growth
    assert read_json(res / "timing/train.json")["models"] == {}  # nothing trained
    assert _stages_run(_dvc(rel, "repro").stdout) == set()
    # layer 0's top1 at the last step x1.1: its ratio there too
    model = "s2-w32-h2"
    last = smoke_growth[model]["last_step"]
    victim = data / model / "stats" / f"exp2_{model}_step{last}"
    arr = read_exp2(victim)
    arr[:, 0, 0] *= 1.1
    write_exp2(to_table(arr), victim)
    status = _dvc(rel, "status").stdout
    assert "suite:" in status and "results/study/source" in status, status
    r = _dvc(rel, "repro")
    assert {"suite", "extract", "fit"} <= _stages_run(r.stdout), r.stdout
    got = read_json(res / "metrics/growth.json")
    assert got["s3-w48-h4"] == smoke_growth["s3-w48-h4"]
    before, after = smoke_growth[model]["last"], got[model]["last"]
    assert after[0] == pytest.approx(1.1 * before[0], abs=2e-3)
    assert after[1:] == before[1:]
    assert _stages_run(_dvc(rel, "repro").stdout) == set()
    (data / model / "stats" / f"exp2_{model}_step20").unlink()
    assert "results/study/source" in _dvc(rel, "status").stdout


def test_released_export_reads_back_without_architecture(smoke_run, tmp_path):
    """The smoke run's export holds each model's config.json: as a released suite whose
    entries name the models only, it runs to the report with the same growth."""
    proj, _ = smoke_run
    for arch in SMOKE_ARCH:
        cfg = read_json(proj / "results/smoke/released" / arch["name"] / "config.json")
        assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
                cfg["vocab_size"]) == (arch["layers"], arch["width"], arch["heads"],
                                       arch["vocab_size"])
    (tmp_path / "rel").mkdir()
    rel, _ = _released_project(smoke_run, tmp_path, [{"name": a["name"]} for a in SMOKE_ARCH])
    r = _snakemake(rel, "--cores", "2")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = rel / "results/study"
    assert read_json(res / "metrics/growth.json") == _smoke_growth(proj)
    for arch in SMOKE_ARCH:
        assert read_json(res / "configs" / f"{arch['name']}.json")["num_hidden_layers"] \
            == arch["layers"]
    assert (res / "report/peak_heatmaps.png").exists()


def test_user_files_in_released_folder_survive_dvc(smoke_run, tmp_path):
    """DVC never owns a user's released folder: files the user keeps there, added at any
    point, survive `dvc repro`, `dvc exp run`, `dvc exp apply`, `dvc checkout --force` and
    `dvc gc -w`; DVC versions madyn's manifest of the files madyn reads, so an edited exp2
    file still reruns the extract stage onward."""
    from madyn.measure.released import read_exp2, to_table, write_exp2

    proj, _ = smoke_run
    (tmp_path / "rel").mkdir()
    rel, data = _released_project(smoke_run, tmp_path, SMOKE_ARCH)
    _git_dvc_init(rel, tmp_path / "remote")
    exp2 = sorted(p.relative_to(data) for p in data.rglob("exp2_*"))
    user: dict[Path, str] = {}

    def add(path: Path, text: str) -> None:
        path.write_text(text)
        user[path] = text

    def survived(when: str) -> None:
        for f, text in user.items():
            assert f.is_file() and f.read_text() == text, f"{when}: {f} lost"
        assert sorted(p.relative_to(data) for p in data.rglob("exp2_*")) == exp2, when

    add(data / "notes.txt", "mine\n")
    add(data / "s2-w32-h2" / "analysis.csv", "a,b\n1,2\n")
    assert _stages_run(_dvc(rel, "repro").stdout) >= {"suite", "extract", "report"}
    survived("dvc repro")
    assert _run(["git", "add", "-A"], rel).returncode == 0
    assert _run(["git", "commit", "-qm", "repro"], rel).returncode == 0
    add(data / "added_before_exp.txt", "x\n")
    r = _dvc(rel, "exp", "run", "-n", "deeper", "-S", "predict.xgb_max_depth=2")
    assert "Stage 'extract' didn't change" in r.stdout, r.stdout[-3000:]
    survived("dvc exp run")
    add(data / "s3-w48-h4" / "added_after_exp.txt", "y\n")
    _dvc(rel, "exp", "apply", "deeper")
    survived("dvc exp apply")
    _dvc(rel, "checkout", "--force")
    survived("dvc checkout --force")
    _dvc(rel, "gc", "-w", "-f")
    survived("dvc gc -w")
    models = rel / "results/study/models"
    assert not models.is_symlink()
    manifest = read_json(models / "released_manifest.json")["files"]
    assert sorted(manifest) == sorted([*map(Path.as_posix, exp2),
                                       *(f"{a['name']}/config.json" for a in SMOKE_ARCH)])
    # an edited exp2 file reruns extract onward, and DVC still leaves the user's files
    model, last = "s2-w32-h2", _smoke_growth(proj)["s2-w32-h2"]["last_step"]
    victim = data / model / "stats" / f"exp2_{model}_step{last}"
    arr = read_exp2(victim)
    arr[:, 0, 0] *= 1.1
    write_exp2(to_table(arr), victim)
    assert "results/study/source" in _dvc(rel, "status").stdout
    # up to the fit stage: what the edit reruns first (the later stages add only time)
    assert _stages_run(_dvc(rel, "repro", "fit").stdout) == {"suite", "extract", "fit"}
    assert read_json(models / "released_manifest.json")["files"] != manifest
    survived("dvc repro after an edit")


def test_released_suite_without_architecture_says_so(smoke_run, tmp_path):
    (tmp_path / "rel").mkdir()
    rel, data = _released_project(smoke_run, tmp_path, [{"name": "s2-w32-h2"}])
    (data / "s2-w32-h2" / "config.json").unlink()
    r = _snakemake(rel, "-n")
    assert r.returncode != 0
    assert "suites.study.models.0: s2-w32-h2 has no" in r.stdout + r.stderr
    assert "layers, width, heads, vocab_size" in r.stdout + r.stderr


def test_tampered_weights_fail_the_measurement(smoke_copy):
    """A checkpoint changed after training (one tensor x3) is not measured silently."""
    from safetensors.torch import load_file, save_file

    proj = smoke_copy
    f = proj / "results/smoke/models/s2-w32-h2/step20/model.safetensors"
    original = f.read_bytes()
    st = f.stat()
    weights = load_file(f)
    name = sorted(weights)[0]
    weights[name] = weights[name] * 3
    save_file(weights, f, metadata={"format": "pt"})
    try:
        r = _run([*DVC, "repro"], proj)
        assert r.returncode != 0
        out = r.stdout + r.stderr
        log = (proj / "results/smoke/logs/extract/s2-w32-h2.log").read_text()
        assert "step20: model.safetensors sha256" in log and "differs from its manifest" in log
        assert "extract_model" in out
    finally:
        f.write_bytes(original)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
