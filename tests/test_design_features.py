"""Design features in the predictors: design axes read from real Hugging
Face configs of madyn's trainer families and from a trained checkpoint's own record; the
feature table's design columns; leave-one-design-out; `madyn predict` taking a design."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from madyn.architecture import DESIGN_KEY, design
from madyn.predict.evaluation import evaluate, lomo_predictions
from madyn.predict.features import (
    DESIGN_FEATURES,
    FEATURE_COLUMNS,
    SGD_LOG_EPS,
    build_feature_table,
    design_features,
    feature_columns,
    write_feature_table,
)
from madyn.predict.prediction import predict_architecture
from madyn.predict.regressors import fit_predict
from madyn.settings import PredictSettings
from madyn.train.training import FAMILIES, ModelSpec, checkpoint_dir, model_config, train_model
from madyn.workflow import params_file as madyn_params
from madyn.workflow import params_values as madyn_values
from tests.helpers import STEPS, TINY_MODEL, TINY_TRAIN, synthetic_fit_table

FAST = PredictSettings(xgb_n_estimators=40, rf_n_estimators=20, n_boot=4, cv_folds=3,
                       parametrisation="original", predict_model="ridge")


def _config(family: str, parallel: bool = True, **recipe) -> dict:
    spec = ModelSpec("m", 4, 64, 4, family=family, parallel_residual=parallel)
    cfg = model_config(spec, vocab_size=300, seq_len=128, eot_id=0).to_dict()
    return {**cfg, DESIGN_KEY: recipe} if recipe else cfg


@pytest.mark.parametrize("family, parallel, post, qk, gated", [
    ("neox", True, 0, 0, 0), ("neox", False, 0, 0, 0), ("llama", False, 0, 0, 1),
    ("qwen3", False, 0, 1, 1), ("olmo2", False, 1, 1, 1)])
def test_block_layout_read_from_real_configs(family, parallel, post, qk, gated):
    f = design_features(design(_config(family, parallel if family == "neox" else True)))
    assert (f["f_parallel_residual"], f["f_post_norm"], f["f_qk_norm"], f["f_gated_mlp"]) \
        == (float(parallel), post, qk, gated)
    # no recipe in the config: the recipe features are unknown, not invented
    assert all(math.isnan(f[c]) for c in ("f_log_lr", "f_log_eps", "f_sgd"))


def test_recipe_features():
    adam = design_features(design(_config("neox", label="a", optimizer="adamw", lr=0.02,
                                          eps=1e-4)))
    assert adam["f_log_lr"] == pytest.approx(math.log10(0.02))
    assert adam["f_log_eps"] == pytest.approx(-4) and adam["f_sgd"] == 0
    sgd = design_features(design(_config("neox", optimizer="sgd", lr=0.3)))
    assert sgd["f_sgd"] == 1 and sgd["f_log_eps"] == SGD_LOG_EPS


def test_config_json_records_the_checkpoints_own_recipe(corpus_dir, tmp_path):
    """A trained checkpoint's recipe reaches configs/<model>.json, and wins over the
    params' statement (it is what was trained)."""
    train = dataclasses.replace(TINY_TRAIN, steps=2, log_until=0, every=2, optimizer="sgd",
                                lr=0.3, momentum=0.9)
    train_model(TINY_MODEL, train, corpus_dir, tmp_path / "m", threads=1)
    out = tmp_path / "config.json"
    stated = json.dumps({"label": "sgd-design", "optimizer": "adamw", "lr": 1.0})
    subprocess.run([sys.executable, "-m", "madyn.cli", "step", "config-json",
                    str(checkpoint_dir(tmp_path / "m", 2)), "--design-json", stated,
                    "--out", str(out)], check=True)
    cfg = json.loads(out.read_text())
    assert cfg[DESIGN_KEY] == {"label": "sgd-design", "optimizer": "sgd", "lr": 0.3}
    axes = design(cfg)
    assert axes["label"] == "sgd-design" and axes["optimizer"] == "sgd"


# ----------------------------------------------------------------------------- params

def _suite_cfg(models: list[dict], base: str | None = None) -> dict:
    cfg = madyn_params.load("params.yaml")
    suite = dict(cfg["suites"]["interventions"], models=models)
    if base is None:
        suite.pop("base_design", None)
    else:
        suite["base_design"] = base
    return {**cfg, "suite": "x", "suites": {**cfg["suites"], "x": suite}}


def test_design_groups_validated():
    m = {"layers": 4, "width": 64, "heads": 4}
    ok = _suite_cfg([{"name": "a-s0", "design": "a", "seed": 0, **m},
                     {"name": "a-s1", "design": "a", "seed": 1, **m},
                     {"name": "b-s0", "design": "b", "lr": 0.006, **m}], base="a")
    madyn_params.validate(ok)
    assert madyn_values.design_labels(ok["suites"]["x"])["a-s1"] == "a"
    with pytest.raises(madyn_params.ConfigError, match=r"suites\.x\.models\.1\.design: .*lr"):
        madyn_params.validate(_suite_cfg([{"name": "a-s0", "design": "a", **m},
                                          {"name": "a-s1", "design": "a", "lr": 0.1, **m}]))
    with pytest.raises(madyn_params.ConfigError, match=r"suites\.x\.base_design: 'c'"):
        madyn_params.validate(_suite_cfg([{"name": "a-s0", "design": "a", **m}], base="c"))


# ----------------------------------------------------------------------------- table

LRS = (0.006, 0.01, 0.02, 0.06)


def _designed(seeds: int = 3) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict]]:
    """Four designs (lr :data:`LRS`) x ``seeds`` seeds of one shape; the curves scale
    (A and K) linearly with log10 lr, plus a little seed noise."""
    base_fit, base_series = synthetic_fit_table(fail=None)
    one = base_fit[base_fit["model"] == "l4-w64-h4"]
    one_series = base_series[base_series["model"] == "l4-w64-h4"]
    rng = np.random.default_rng(1)
    fits, series, configs = [], [], {}
    for lr in LRS:
        for seed in range(seeds):
            name = f"lr{lr}-s{seed}"
            gain = 1 + 2 * (math.log10(lr) + 2) + 0.02 * rng.standard_normal()
            f = one.copy()
            f["model"] = name
            popts = []
            for pn, po in zip(f["param_names"], f["popt"], strict=True):
                p = dict(zip(json.loads(pn), json.loads(po), strict=True))
                for k in ("A", "K", "A1", "A2"):
                    if k in p:
                        p[k] *= gain
                popts.append(json.dumps(list(p.values())))
            f["popt"] = popts
            fits.append(f)
            s = one_series.copy()
            s["model"] = name
            s["value"] = s["value"] * gain
            series.append(s)
            configs[name] = _config("neox", label=f"lr{lr}", optimizer="adamw", lr=lr,
                                    eps=1e-8)
    return (pd.concat(fits, ignore_index=True), pd.concat(series, ignore_index=True),
            configs)


def test_feature_table_carries_design_columns(tmp_path):
    fit, _, configs = _designed()
    table = build_feature_table(fit, configs, "original", "ratio")
    assert set(DESIGN_FEATURES) <= set(table.columns)
    assert sorted(table["design"].unique()) == ["lr0.006", "lr0.01", "lr0.02", "lr0.06"]
    assert table.groupby("design")["f_log_lr"].nunique().eq(1).all()
    # only the varying, known design axis is an input: lr
    assert feature_columns(table) == FEATURE_COLUMNS + ["f_log_lr"]
    write_feature_table(table, tmp_path / "t.parquet")  # schema holds with design columns


def test_leave_one_design_out_never_sees_the_held_out_design():
    fit, _, configs = _designed()
    table = build_feature_table(fit, configs, "original", "ratio")
    preds = lomo_predictions(table, FAST, kinds=("ridge",), group="design")
    d = table[table["usable"]].sort_values(["model", "layer"]).reset_index(drop=True)
    cols = feature_columns(d)
    held = d["design"] == "lr0.02"
    y = d["target_K"].to_numpy(float)
    want = fit_predict("ridge", FAST, d.loc[~held, cols].to_numpy(float), y[~held],
                       d.loc[held, cols].to_numpy(float))
    got = preds[(preds["target"] == "target_K")
                & preds["model"].isin(d.loc[held, "model"])].sort_values(["model", "layer"])
    np.testing.assert_allclose(got["y_pred"].to_numpy(), want)


def test_single_model_designs_reuse_the_leave_one_model_out_fits():
    """Holding out a design of one model holds out the same rows as leaving that model
    out: leave-one-design-out reuses those predictions (an atlas's single-seed designs)
    and gives the rows a fresh fit gives; designs of several seeds are fitted anew."""
    fit, _, configs = _designed()
    single = ["lr0.006-s1", "lr0.006-s2", "lr0.06-s1", "lr0.06-s2"]
    table = build_feature_table(fit[~fit["model"].isin(single)],
                                {m: c for m, c in configs.items() if m not in single},
                                "original", "ratio")
    kinds = ("ridge", "xgb")
    by_model = lomo_predictions(table, FAST, kinds=kinds)
    fresh = lomo_predictions(table, FAST, kinds=kinds, group="design")
    pd.testing.assert_frame_equal(
        lomo_predictions(table, FAST, kinds=kinds, group="design", by_model=by_model), fresh)
    marked = lomo_predictions(table, FAST, kinds=kinds, group="design",
                              by_model=by_model.assign(y_pred=by_model["y_pred"] + 1))
    moved = marked["y_pred"] != fresh["y_pred"]
    assert set(marked.loc[moved, "model"]) == {"lr0.006-s0", "lr0.06-s0"}
    assert moved.sum() == (fresh["model"].isin(["lr0.006-s0", "lr0.06-s0"])).sum()


def test_lodo_reported_and_design_beats_mean_curve():
    """With the curves driven by lr, the design features beat the mean curve of the other
    designs when a whole design is held out (lr 0.01, inside the others' range)."""
    fit, series, configs = _designed()
    table = build_feature_table(fit, configs, "original", "ratio")
    m = evaluate(table, series, FAST)
    assert m["lodo"]["n_designs"] == 4 and "f_log_lr" in m["features"]
    per = m["curve_lodo"]["per_model"]
    best = m["lodo"]["best_model_type"]
    mid = [k for k in per[best] if k.startswith("lr0.01-")]
    ridge = np.mean([per[best][k]["final_rel_err_mean"] for k in mid])
    mean = np.mean([per["mean_curve"][k]["final_rel_err_mean"] for k in mid])
    assert ridge < 0.5 * mean
    # one model per design: leave-one-design-out is leave-one-model-out, and says so
    one_each = build_feature_table(*_designed(seeds=1)[::2], "original", "ratio")
    assert "is lomo" in evaluate(one_each, None, FAST)["lodo"]["skipped"]


def test_evaluation_in_processes_gives_the_serial_results():
    fit, series, configs = _designed()
    table = build_feature_table(fit, configs, "original", "ratio")
    serial, serial_tables = evaluate(table, series, FAST, return_extras=True)
    parallel, parallel_tables = evaluate(table, series, FAST, return_extras=True, workers=2)
    assert parallel == serial
    assert serial["lomo"]["best_model_type"] and serial["lodo"]["n_designs"] == 4
    for name, frame in serial_tables.items():
        pd.testing.assert_frame_equal(parallel_tables[name], frame)


def test_predict_takes_a_design():
    fit, _, configs = _designed()
    table = build_feature_table(fit, configs, "original", "ratio")
    steps = STEPS
    lo = predict_architecture(table, _config("neox", optimizer="adamw", lr=0.006), steps,
                              FAST)[1]
    hi = predict_architecture(table, _config("neox", optimizer="adamw", lr=0.06), steps,
                              FAST)[1]
    assert lo["design_features"]["f_log_lr"] == pytest.approx(math.log10(0.006))
    last = [r["final_ratio"] for r in lo["layers"]], [r["final_ratio"] for r in hi["layers"]]
    assert np.mean(last[1]) > 1.5 * np.mean(last[0])
    with pytest.raises(ValueError, match=r"f_log_lr.*give the new model's lr"):
        predict_architecture(table, _config("neox"), steps, FAST)


def test_cli_predict_design_flags(tmp_path):
    fit, _, configs = _designed()
    table = build_feature_table(fit, configs, "original", "ratio")
    write_feature_table(table, tmp_path / "t.parquet")
    settings = json.dumps(dataclasses.asdict(FAST))

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "madyn.cli", "predict", "--layers", "4", "--width", "64",
             "--heads", "4", "--features", str(tmp_path / "t.parquet"), "--settings-json",
             settings, "--out", str(tmp_path / "out"), *extra],
            capture_output=True, text=True)

    r = run()
    assert r.returncode == 2 and "give the new model's lr" in r.stderr
    assert not (tmp_path / "out").exists()
    r = run("--lr", "0")
    assert r.returncode == 2 and "--lr 0.0 outside" in r.stderr
    r = run("--family", "qwen3", "--sequential")
    assert r.returncode == 2 and "apply to family neox" in r.stderr
    r = run("--lr", "0.02", "--optimizer", "adamw")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["design_features"] == {"f_log_lr": pytest.approx(math.log10(0.02))}


def test_family_configs_are_the_trainers():
    """The design axes come from the config's structure keys, for every trainer family."""
    seen = {f: design(_config(f)) for f in FAMILIES}
    assert {f: (a["norm"], a["qk_norm"]) for f, a in seen.items()} == {
        "neox": ("pre", False), "llama": ("pre", False), "qwen3": ("pre", True),
        "olmo2": ("post", True), "gpt2": ("pre", False)}


def test_cli_predict_says_when_the_design_is_not_used(tmp_path):
    fit, _, configs = _designed()
    write_feature_table(build_feature_table(fit, configs, "original", "ratio"),
                        tmp_path / "t.parquet")
    settings = json.dumps(dataclasses.asdict(dataclasses.replace(FAST,
                                                                 predict_model="mean_curve")))
    r = subprocess.run(
        [sys.executable, "-m", "madyn.cli", "predict", "--layers", "4", "--width", "64",
         "--heads", "4", "--lr", "0.02", "--features", str(tmp_path / "t.parquet"),
         "--settings-json", settings, "--out", str(tmp_path / "out")],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "uses relative depth alone; --lr did not change the prediction" in r.stderr
