"""`madyn predict` by default (predict_model auto) uses the curve-space predictor that
leave-one-design-out chose, trained on the suite's series beside the feature table, and says
which, with its measured error, on stderr and in summary.json."""

from __future__ import annotations

import json

import pytest

from madyn.cli.main import main
from madyn.io import read_json, write_json
from madyn.predict.design_predictors import KINDS
from madyn.predict.features import build_feature_table, write_feature_table
from tests.helpers import SYNTHETIC_SUITE, neox_config, synthetic_fit_table

SETTINGS = json.dumps({"parametrisation": "original", "n_boot": 2})


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    """results/<suite>/ as the workflow lays it out: features, series, configs."""
    root = tmp_path_factory.mktemp("results") / "syn"
    fit, series = synthetic_fit_table()
    configs = {s.name: neox_config(s) for s in SYNTHETIC_SUITE}
    for i, (name, cfg) in enumerate(configs.items()):
        cfg["madyn_design"] = {"label": name, "optimizer": "adamw", "lr": 0.01 * (1 + i)}
    table = build_feature_table(fit, configs, "original", "ratio")
    (root / "features").mkdir(parents=True)
    write_feature_table(table, root / "features" / "ft.parquet")
    (root / "series").mkdir()
    (root / "configs").mkdir()
    for name, cfg in configs.items():
        s = series[series["model"] == name].rename(columns={"quantity": "statistic",
                                                            "value": "mean"})
        s[["model", "step", "layer", "statistic", "mean"]].to_parquet(
            root / "series" / f"{name}.parquet")
        write_json(root / "configs" / f"{name}.json", cfg)
    return root


def _predict(suite_dir, tmp_path, capsys, name="out"):
    out = tmp_path / name
    rc = main(["predict", "--features", str(suite_dir / "features" / "ft.parquet"),
               "--settings-json", SETTINGS, "--layers", "3", "--width", "64", "--heads", "4",
               "--lr", "0.02", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    return read_json(out / "summary.json"), err


def test_predict_auto_says_which_model_and_its_measured_error(suite_dir, tmp_path, capsys):
    summary, err = _predict(suite_dir, tmp_path, capsys)
    assert summary["model_type"] in KINDS
    m = summary["measured_lodo"]
    assert m["n_designs"] == len(SYNTHETIC_SUITE) and -10 < m["r2_median"] <= 1
    assert "leave-one-design-out" in summary["chosen_by"]
    line = [x for x in err.splitlines() if x.startswith("madyn predict: model ")]
    assert line and summary["model_type"] in line[0] and "median curve R²" in line[0]
    assert len(summary["layers"]) == 3
    assert "split-conformal" in summary["interval_method"]


def test_predict_auto_reads_the_nested_lodo_winner(suite_dir, tmp_path, capsys):
    metrics = suite_dir / "metrics" / "design_lodo.json"
    metrics.parent.mkdir(exist_ok=True)
    per = {k: {"r2_median": 0.5, "final_rel_err_mean": 0.2, "final_rel_err_median": 0.1,
               "n_designs": 6, "n_layers": 26} for k in KINDS}
    write_json(metrics, {"quantities": {"ratio": {"winner": "eb_shrink", "per_kind": per}}})
    try:
        summary, err = _predict(suite_dir, tmp_path, capsys, "out2")
    finally:
        metrics.unlink()
    assert summary["model_type"] == "eb_shrink"
    assert summary["chosen_by"].startswith("nested leave-one-design-out")
    assert "model eb_shrink" in err


def test_forecast_run_from_a_design_prior(suite_dir, tmp_path):
    """make-prior --design-lodo, then a run of a new design forecast from its predicted
    curve: the summary names the design prior, intervals hold the point forecast."""
    from madyn.stages import forecast as fst
    from madyn.stages import forecast_prior as fpr

    doc = {"quantities": {q: {"winner": "eb_shrink", "per_kind": {"eb_shrink": {
        "r2_median": 0.5}}} for q in ("ratio",)},
           "forecast": {"level": 0.9, "ratio": {"calibration": {
               "forecast": {"0.1": 0.6, "0.25": 0.4, "0.5": 0.2},
               "prior": {"0.1": 0.8, "0.25": 0.8, "0.5": 0.8}}}}}
    write_json(tmp_path / "design_lodo.json", doc)
    series = sorted(map(str, (suite_dir / "series").glob("*.parquet")))
    configs = sorted(map(str, (suite_dir / "configs").glob("*.json")))
    run_name = "l4-w64-h4"
    prior_series = [p for p in series if run_name not in p]
    man = fpr.make_prior(prior_series, str(tmp_path / "p.parquet"), configs,
                         quantities=("ratio",), design_lodo=str(tmp_path / "design_lodo.json"))
    assert man["design_prior"]["quantities"]["ratio"]["kind"] == "eb_shrink"
    assert all("features" in m for m in man["models"].values())
    import pandas as pd

    run = pd.read_parquet([p for p in series if run_name in p][0])
    run = run[run["step"] <= 300]
    run.to_parquet(tmp_path / "run.parquet")
    folder = tmp_path / "runfolder"
    folder.mkdir()
    write_json(folder / "config.json", read_json([c for c in configs if run_name in c][0]))
    from madyn.settings import ForecastSettings

    s = ForecastSettings.from_dict({"quantities": ["ratio"]})
    out = fst.forecast_run(str(tmp_path / "run.parquet"), 1200, str(tmp_path / "fc"), s,
                           prior=[str(tmp_path / "p.parquet")], run_folder=str(folder))
    assert out["design_prior"]["quantities"]["ratio"]["kind"] == "eb_shrink"
    # how far the prior's models are from the run is recorded under a design prior too
    d = out["prior_distance"]
    assert run_name not in d["models"] and len(d["models"]) == len(man["models"])
    assert d["run"]["last_step"] == 1200
    for layer in out["layers"]["ratio"].values():
        f = layer["final"]
        assert 0 < f["lo"] <= f["value"] <= f["hi"]
    # a prior that holds the run itself: the run is left out of it (as without a design
    # prior), so its prior is the predictor's curve, never its own series
    fpr.make_prior(series, str(tmp_path / "all.parquet"), configs, quantities=("ratio",),
                   design_lodo=str(tmp_path / "design_lodo.json"))
    out = fst.forecast_run(str(tmp_path / "run.parquet"), 1200, str(tmp_path / "fc2"), s,
                           prior=[str(tmp_path / "all.parquet")], run_folder=str(folder))
    assert run_name not in out["design_prior"]["quantities"]["ratio"]["prior"]
