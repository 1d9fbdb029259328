"""Comparing experiments: the headline metrics (few, in git, readable by a fresh clone
before anything runs), a queued parameter sweep on the smoke suite, and sharing results
through a DVC remote (clone A pushes, clone B pulls and recomputes nothing)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from madyn.report import headline
from tests.helpers import ROOT
from tests.test_workflow import BIN, DVC, ENV, SNAKEMAKE, _dvc, _run

MAX_METRICS = 32     # "at most about 30 numbers"
MAX_COLUMNS = 120    # `dvc exp show` with a couple of experiments
HEADLINE = "results/{suite}/metrics/headline.json"


def _lock_md5(proj: Path, path: str) -> str:
    """The md5 dvc.lock records for ``path`` (an out, metric or plot of any stage)."""
    for stage in yaml.safe_load((proj / "dvc.lock").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                if out["path"] == path:
                    return out["md5"]
    raise AssertionError(f"dvc.lock: no {path}")


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    r = _run(["git", *args], cwd)
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr[-2000:]}"
    return r


def _numbers(metrics: dict) -> dict[str, float]:
    """Flatten nested metrics the way DVC names them (``growth.ratio_mid_mean``)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out |= {f"{k}.{kk}": vv for kk, vv in _numbers(v).items()}
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------- the headline metrics

def test_sections_summarise_the_detailed_summaries():
    growth = {"a": {"growth_middle_mean": 2.0, "last": [10.0, 20.0, 30.0, 40.0]},
              "b": {"growth_middle_mean": 4.0, "last": [5.0, 7.0]}}
    g = headline.growth_section(growth)
    # a's middle layers (relative depth in [0.25, 0.75]) are 1 and 2; b's both layers
    assert g == {"ratio_mid_mean": 3.0, "ratio_mid_min": 2.0, "ratio_mid_max": 4.0,
                 "final_ratio_mid_mean": 15.5}
    forecast = {"ratio": {"10%": {"forecast": {"final_err_pct": 50.0}},
                          "30%": {"forecast": {"final_err_pct": 9.123456},
                                  "prior": {"final_err_pct": float("nan")}}}}
    # the nearest fraction to 25 % is 30 %; NaN and missing numbers are left out
    assert headline.forecast_section(forecast) == {"forecast.final_err_pct": 9.123}
    assert headline.forecast_section({"ratio": {}}) == {}
    h = headline.headline(growth, {"n_failed": 0}, {}, {}, {})
    assert h == {"suite": {"n_models": 2, "n_layers": 6}, "growth": g, "fit": {"n_failed": 0}}
    growth["a"]["kind_per_layer"] = ["none", "first_token", "first_token", "feature"]
    growth["b"]["kind_per_layer"] = ["feature", "unknown"]  # unknown: in neither count
    assert headline.kinds_section(growth) == {"first_token_share": 0.4, "feature_share": 0.4}
    assert headline.headline(growth, {}, {}, {}, {})["kinds"]["first_token_share"] == 0.4


def test_committed_headline_is_read_by_a_fresh_clone(tmp_path):
    """The embedded suite's headline metrics are in git with a dvc.lock that matches them:
    `dvc metrics show` in a fresh clone prints them before anything runs."""
    path = HEADLINE.format(suite="embedded")
    committed = _run(["git", "show", f"HEAD:{path}"], ROOT)
    assert committed.returncode == 0, f"{path} is not committed"
    lock = _run(["git", "show", "HEAD:dvc.lock"], ROOT).stdout
    (tmp_path / "dvc.lock").write_text(lock)
    assert hashlib.md5(committed.stdout.encode()).hexdigest() == _lock_md5(tmp_path, path)
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(ROOT), str(clone))
    shown = json.loads(_dvc(clone, "metrics", "show", "--json").stdout)
    data = shown[""]["data"]
    assert list(data) == [path]  # the headline is the only metrics file
    numbers = _numbers(data[path]["data"])
    assert 15 <= len(numbers) <= MAX_METRICS
    assert numbers["suite.n_models"] == 6 and numbers["growth.ratio_mid_mean"] > 1
    assert not (clone / "results/embedded/metrics/fit.json").exists()  # detail: DVC's cache


def test_smoke_headline_curves_and_columns(smoke_copy):
    """After `dvc repro`: one small metrics file, tracked by git and not by DVC's cache;
    the per-layer curves as plot data; `dvc exp show` a few dozen columns."""
    proj = smoke_copy
    path = HEADLINE.format(suite="smoke")
    numbers = _numbers(json.loads((proj / path).read_text()))
    assert len(numbers) <= MAX_METRICS
    assert {"growth.ratio_mid_mean", "fit.ratio.study_r2_mean", "fit.ratio.winner_r2_mean",
            "predict.mean_curve.r2"} <= set(numbers)
    assert not any("wall" in k or k.endswith("_s") for k in numbers)  # no timings
    assert _run(["git", "check-ignore", "-q", path], proj).returncode == 1  # not ignored
    assert _run(["git", "check-ignore", "-q", "results/smoke/metrics/fit.json"],
                proj).returncode == 0
    curves = pd.read_csv(proj / "results/smoke/report/curves.csv")
    assert list(curves.columns) == ["model", "layer", "curve", "depth", "step", "ratio"]
    assert curves["curve"].nunique() == 2 + 3  # every layer of s2-w32-h2 and s3-w48-h4
    default = next(csv.reader(io.StringIO(_dvc(proj, "exp", "show", "--csv").stdout)))
    # the metrics columns are the headline's alone: no per-model detail, no wall times
    assert not [c for c in default if c.startswith(("per_model", "lomo", "curve_lomo",
                                                        "models.", "wall_s", "sum_s"))]
    r = _run([str(BIN / "madyn"), "compare", "--csv"], proj)
    assert r.returncode == 0, r.stderr[-2000:]
    header = next(csv.reader(io.StringIO(r.stdout)))
    assert len(header) <= MAX_COLUMNS < len(default), (len(header), len(default))
    assert {"growth.ratio_mid_mean", "fit.alpha", "suites.smoke.train.lr"} <= set(header)
    assert not [c for c in header if c.startswith(("src/", "results/", "suites.embedded"))]


# ------------------------------------------------------------------------ a queued sweep

def _wait_for_queue(proj: Path, timeout: float = 1500) -> str:
    """Poll `dvc queue status` until no task is queued or running; its last output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _dvc(proj, "queue", "status").stdout
        if not any(w in out for w in ("Queued", "Running")):
            return out
        time.sleep(5)
    raise AssertionError(f"queue still busy after {timeout} s:\n{out}")


@pytest.mark.slow
def test_queued_sweep_then_compare(smoke_copy, tmp_path):
    """Three learning rates queued, run by `dvc queue start`, compared with `dvc exp show`
    (headline metrics and the swept param, a few dozen columns) and `dvc plots diff`
    (the per-layer curves of each experiment as data: a different lr moves them)."""
    proj = smoke_copy
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "smoke baseline")
    lrs = ("0.005", "0.02", "0.04")
    for lr in lrs:
        _dvc(proj, "exp", "run", "--queue", "-n", f"lr-{lr}", "-S", f"suites.smoke.train.lr={lr}")
    # the worker it starts keeps the output open until the queue is done: not captured
    start = subprocess.run([*DVC, "queue", "start", "-j", "1"], cwd=proj, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3000)
    assert start.returncode == 0
    status = _wait_for_queue(proj, timeout=3000)
    assert status.count("Success") == 3, status
    shown = _run([str(BIN / "madyn"), "compare", "--csv"], proj).stdout
    rows = list(csv.DictReader(io.StringIO(shown)))
    assert len(rows[0]) <= MAX_COLUMNS, len(rows[0])
    exps = {r["Experiment"]: r for r in rows if r["Experiment"]}
    assert set(exps) == {f"lr-{lr}" for lr in lrs}
    assert {exps[f"lr-{lr}"]["suites.smoke.train.lr"] for lr in lrs} == set(lrs)
    growth = {float(r["growth.ratio_mid_mean"]) for r in exps.values()}
    # each lr trained the models anew (a queued experiment has no Snakemake metadata:
    # `madyn step retrain-stale` makes it retrain) and grew the massive activations differently
    assert len(growth) == 3, growth
    changed = _run([str(BIN / "madyn"), "compare", "--csv", "--only-changed"], proj).stdout
    assert len(next(csv.reader(io.StringIO(changed)))) < len(rows[0])
    diff = json.loads(_dvc(proj, "plots", "diff", *(f"lr-{lr}" for lr in lrs),
                           "--json").stdout)["data"]
    curves = next(v for k, v in diff.items() if k.endswith("report/curves.csv"))
    values = curves[0]["content"]["data"]["values"]
    by_rev = pd.DataFrame(values).astype({"ratio": float, "step": int})
    assert set(by_rev["rev"]) == {f"lr-{lr}" for lr in lrs}
    last = by_rev[by_rev["step"] == by_rev["step"].max()].groupby("rev")["ratio"].mean()
    assert last.nunique() == 3  # the curves moved


# ------------------------------------------------------------------- shared results

@pytest.mark.slow
def test_push_then_pull_in_another_clone(smoke_copy, tmp_path):
    """Snakemake alone, then `dvc commit`: DVC is up to date. Clone A (the finished smoke
    project) pushes to a folder remote; clone B, a git clone of A, pulls and has every
    result: `dvc status` clean and Snakemake has nothing to do, nothing recomputed."""
    a = smoke_copy
    # first, Snakemake alone (a changed predictor param), then `dvc commit` records it
    cfg = yaml.safe_load((a / "params.yaml").read_text())
    cfg["predict"]["xgb_max_depth"] = 2
    (a / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = _run([*SNAKEMAKE, "--cores", "2"], a)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "predict" in _dvc(a, "status").stdout
    _dvc(a, "commit", "-f")
    assert "up to date" in _dvc(a, "status").stdout
    assert "Running stage" not in _dvc(a, "repro").stdout
    remote = tmp_path / "remote"
    _dvc(a, "remote", "add", "-f", "-d", "shared", str(remote))
    _git(a, "add", "-A")
    _git(a, "commit", "-qm", "smoke results")
    assert "pushed" in _dvc(a, "push").stdout
    b = tmp_path / "b"
    _git(tmp_path, "clone", "-q", str(a), str(b))
    assert not (b / "results/smoke/series").exists()
    _dvc(b, "pull")
    # the source stage's link (or empty folder): not data, so neither in git nor pulled
    r = _run([str(BIN / "madyn"), "dvc-outs", "source"], b)
    assert r.returncode == 0, r.stderr[-2000:]
    # pulled files carry the times of the checkout, in no particular order: `--touch`
    # records them as up to date for Snakemake (it runs nothing, changes no content)
    r = _run([*SNAKEMAKE, "--cores", "1", "--touch"], b)
    assert r.returncode == 0, r.stderr[-2000:]
    for rel in ("series", "fits", "predict", "metrics/fit.json", "report/curves.csv"):
        assert (b / "results/smoke" / rel).exists(), rel
    assert "up to date" in _dvc(b, "status").stdout
    dry = _run([*SNAKEMAKE, "--cores", "1", "-n"], b)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]
    again = _dvc(b, "repro")
    assert "Running stage" not in again.stdout
