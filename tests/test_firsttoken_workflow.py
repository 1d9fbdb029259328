"""A tiny synthetic-corpus suite through Snakemake (training, a no-BOS control with its own
evaluation batch, the kinds in growth.json), committed with `madyn make-reference` and
read back by a released suite with its kinds."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from madyn.io import read_json
from madyn.workflow.scratch_project import copy_workflow
from tests.helpers import ROOT
from tests.test_workflow import _run, _snakemake


def _tiny_suite(cfg: dict) -> dict:
    ft = cfg["suites"]["firsttoken"]
    models = [dict(m, layers=2, width=16, heads=2) for m in ft["models"]
              if m["name"] in ("base-s0", "base-s1", "l2-w64-h4", "nobos-s0")]
    return {**ft, "train": {**ft["train"], "steps": 24, "batch_size": 4, "seq_len": 32,
                            "warmup": 4, "log_until": 8, "every": 4},
            "extract": {**ft["extract"], "n_seqs": 4, "seq_len": 32, "batch_size": 4},
            "models": models}


@pytest.mark.slow
def test_synthetic_suite_then_reference_round_trip(tmp_path):
    proj = copy_workflow(ROOT, tmp_path)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["ft"] = _tiny_suite(cfg)
    cfg["suites"]["ft-ref"] = {"source": "released", "path": "data/reference/ft",
                               "base_design": "base",
                               "models": [{"name": m["name"], **({"design": m["design"]}
                                                                 if "design" in m else {})}
                                          for m in cfg["suites"]["ft"]["models"]]}
    cfg["fit"]["n_starts"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake(proj, "suite_all", "extract_all", "--cores", "2", "--config", "suite=ft")
    assert r.returncode == 0, r.stderr[-3000:]
    res = proj / "results" / "ft"
    bos = read_json(res / "corpus" / "manifest.json")["bos_id"]
    assert (np.load(res / "eval" / "tokens_corpus.npy")[:, 0] == bos).all()
    assert (np.load(res / "eval" / "tokens_corpus-nobos.npy") != bos).all()
    growth = read_json(res / "metrics" / "growth.json")
    assert set(growth["base-s0"]["kind_per_layer"]) <= {"first_token", "feature", "none"}
    assert read_json(res / "models" / "nobos-s0" / "manifest.json")["train"]["bos"] is False

    r = _run(["madyn", "make-reference", "--suite", "ft", "--out", "data/reference/ft"], proj)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _snakemake(proj, "extract_all", "--cores", "2", "--config", "suite=ft-ref")
    assert r.returncode == 0, r.stderr[-3000:]
    back = read_json(proj / "results" / "ft-ref" / "metrics" / "growth.json")
    for m in ("base-s0", "nobos-s0"):
        assert back[m]["kind_per_layer"] == growth[m]["kind_per_layer"]
        assert back[m]["last"] == growth[m]["last"]


def test_committed_reference_records_its_backtest_skip(tmp_path):
    """`backtest: false` (the first-token reference, to keep `make run` within 10 minutes):
    the forecast rule writes its outs saying why, and forecasts nothing."""
    proj = copy_workflow(ROOT, tmp_path)
    shutil.copytree(ROOT / "data" / "reference" / "firsttoken",
                    proj / "data" / "reference" / "firsttoken")
    target = "results/firsttoken-reference/metrics/forecast.json"
    r = _snakemake(proj, target, "--cores", "2", "--config", "suite=firsttoken-reference")
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_json(proj / target)["skipped"] == (
        "suites.firsttoken-reference.backtest is false")
    res = proj / "results" / "firsttoken-reference"
    assert (res / "forecast" / "backtest.csv").read_text().startswith("model,layer")
    assert (res / "forecast" / "backtest.png").stat().st_size > 0
