"""Feature table and predictors: real HF configs, a synthetic fit table of six models whose
curve parameters depend smoothly on depth and width, and the file entry points."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from madyn.architecture import ArchitectureError, architecture
from madyn.curves import hypotheses
from madyn.predict.evaluation import evaluate
from madyn.predict.features import (
    FEATURE_COLUMNS,
    SchemaError,
    build_feature_table,
    check_schema,
    forward_transform,
    inverse_transform,
    layer_features,
    read_feature_table,
    write_feature_table,
)
from madyn.predict.prediction import predict_architecture
from madyn.settings import PredictSettings
from madyn.stages import features as features_stage
from madyn.stages import predict as predict_stage
from madyn.train.training import ModelSpec, model_config
from tests.helpers import STEPS, SYNTHETIC_SUITE, neox_config, synthetic_fit_table

FAST = PredictSettings(xgb_n_estimators=60, rf_n_estimators=25, n_boot=6, cv_folds=3,
                       parametrisation="original", predict_model="xgb")


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@pytest.fixture(scope="module")
def data():
    fit, series = synthetic_fit_table()
    configs = {s.name: neox_config(s) for s in SYNTHETIC_SUITE}
    return fit, series, configs


@pytest.fixture(scope="module")
def table(data):
    fit, _, configs = data
    return build_feature_table(fit, configs, "original", "ratio")


# ----------------------------------------------------------------------------- architecture

def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2", "llama", "opt"])
def test_architecture_counts_parameters(family):
    import torch
    import transformers as T
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg, cls = {
        "gpt_neox": (model_config(ModelSpec("x", 3, 64, 4), 512, 128, 0), T.GPTNeoXForCausalLM),
        "gpt2": (T.GPT2Config(vocab_size=500, n_embd=64, n_layer=3, n_head=4, n_positions=128,
                              bos_token_id=0, eos_token_id=0), T.GPT2LMHeadModel),
        "llama": (T.LlamaConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=172, max_position_embeddings=128),
                  T.LlamaForCausalLM),
        "opt": (T.OPTConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3,
                            num_attention_heads=4, ffn_dim=256, max_position_embeddings=128,
                            word_embed_proj_dim=64), T.OPTForCausalLM),
    }[family]
    arch = architecture(cfg.to_dict())
    real = _count(cls(cfg))
    assert abs(arch["n_params"] / real - 1) < 0.02, (arch["n_params"], real)
    assert arch["num_hidden_layers"] == 3 and arch["hidden_size"] == 64
    assert arch["rotary_pct"] == {"gpt_neox": 0.25, "gpt2": 0.0, "llama": 1.0, "opt": 0.0}[family]
    assert arch["gated_mlp"] == (family == "llama")


def test_architecture_rejects_non_decoders():
    from transformers import BertConfig, T5Config

    with pytest.raises(ArchitectureError, match="bert.*encoder-only"):
        architecture(BertConfig().to_dict())
    with pytest.raises(ArchitectureError, match="is_encoder_decoder"):
        architecture(T5Config().to_dict())
    with pytest.raises(ArchitectureError, match="ForMaskedLM"):
        architecture({"architectures": ["FooForMaskedLM"], "model_type": "foo",
                      "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2})
    with pytest.raises(ArchitectureError, match="num_attention_heads"):
        architecture({"model_type": "mystery", "num_hidden_layers": 2, "hidden_size": 8,
                      "vocab_size": 10})


def test_one_decoder_only_check():
    """architecture() and the measuring commands share check_decoder_only: causal-LM heads
    (GPT-2's LMHeadModel too) pass, any other listed head is refused, naming the source."""
    from madyn.architecture import check_decoder_only

    base = {"model_type": "gpt2", "num_hidden_layers": 2, "hidden_size": 8,
            "num_attention_heads": 2}
    check_decoder_only({**base, "architectures": ["GPT2LMHeadModel"]})
    check_decoder_only({**base, "architectures": ["LlamaForCausalLM"]})
    check_decoder_only(base)  # no architectures listed: judged by model_type alone
    with pytest.raises(ArchitectureError, match="^ckpt: not a decoder-only.*ForSequence"):
        check_decoder_only({**base, "architectures": ["GPT2ForSequenceClassification"]},
                           "ckpt")


def test_layer_features_one_based_depth():
    arch = architecture(neox_config(SYNTHETIC_SUITE[2]))  # 4 layers, d 64, 4 heads
    f0, f3 = layer_features(arch, 0), layer_features(arch, 3)
    assert f0["f_depth"] == 0.25 and f3["f_depth"] == 1.0
    assert f3["f_l_times_L"] == 16.0 and f0["f_heads_per_d"] == 4 / 64
    assert set(f0) == set(FEATURE_COLUMNS)
    with pytest.raises(ValueError):
        layer_features(arch, 4)


def test_transforms_invert():
    x = np.array([-3.0, -0.5, 0.0, 0.7, 12.0, 400.0])
    for kind, lam in (("log1p", None), ("yeojohnson", 0.4), ("yeojohnson", -0.3),
                      ("yeojohnson", 0.0), ("yeojohnson", 2.0)):
        back = inverse_transform(forward_transform(x, kind, lam), kind, lam)
        np.testing.assert_allclose(back, x, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- feature table

def test_feature_table(table, data, tmp_path):
    fit = data[0]
    assert len(table) == sum(s.layers for s in SYNTHETIC_SUITE)
    bad = table[(table["model"] == "l8-w64-h8") & (table["layer"] == 7)].iloc[0]
    assert not bad["usable"] and "fit failed" in bad["exclude_reason"]
    assert table["usable"].sum() == len(table) - 1
    # parameters of the chosen parametrisation even where it did not win
    configs = {s.name: neox_config(s) for s in SYNTHETIC_SUITE}
    rep = build_feature_table(fit, configs, "reparam", "ratio")
    assert rep["winner"].eq("original").all() and rep["usable"].all()
    assert set(rep.attrs["transforms"]) == {"A1", "A2", "beta", "tau0", "K"}
    lam = table.attrs["transforms"]["K"]["lambda"]
    np.testing.assert_allclose(
        inverse_transform(table["target_K"].to_numpy(), "yeojohnson", lam),
        table["param_K"].to_numpy(), rtol=1e-9)
    write_feature_table(table, tmp_path / "ft.parquet")
    back = read_feature_table(tmp_path / "ft.parquet")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert back.attrs["transforms"] == table.attrs["transforms"]
    assert (tmp_path / "fitted_param_dataset_original.csv").exists()


def test_schema_errors_name_the_column(table, tmp_path):
    with pytest.raises(SchemaError, match="'f_log_d'"):
        check_schema(table.drop(columns="f_log_d"))
    wrong = table.copy()
    wrong["layer"] = wrong["layer"].astype(str)
    with pytest.raises(SchemaError, match="'layer'"):
        write_feature_table(wrong, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


# ----------------------------------------------------------------------------- evaluation

@pytest.fixture(scope="module")
def metrics(table, data):
    return _quiet(evaluate, table, data[1], FAST)


def test_evaluate_structure(metrics):
    assert set(metrics) >= {"study_protocol", "lomo", "curve_lomo", "n_rows", "n_models"}
    assert metrics["n_models"] == 6 and metrics["n_rows"] == 25
    json.dumps(metrics, allow_nan=False)
    sp = metrics["study_protocol"]
    assert sp["n_train"] + sp["n_test"] == 25
    assert set(sp["per_target"]["target_K"]) == {"mean", "ridge", "rf", "xgb", "ols"}
    assert set(metrics["lomo"]["per_model"]) == {s.name for s in SYNTHETIC_SUITE}


def test_lomo_beats_mean_on_learnable_target(metrics):
    k = metrics["lomo"]["per_target"]["target_K"]
    assert k["mean"]["r2"] < 0.1
    for kind in ("ridge", "xgb", "rf"):
        assert k[kind]["r2"] > k["mean"]["r2"] + 0.3, (kind, k)
    assert k["ridge"]["r2"] > 0.8


def test_curve_lomo_per_model(metrics):
    cl = metrics["curve_lomo"]
    assert "xgb" in cl["model_types"] and "mean_curve" in cl["model_types"]
    for kind in cl["model_types"]:
        per = cl["per_model"][kind]
        assert set(per) == {s.name for s in SYNTHETIC_SUITE}
        for m, v in per.items():
            n = next(s.layers for s in SYNTHETIC_SUITE if s.name == m) - (m == "l8-w64-h8")
            assert v["n_layers"] == n and len(v["per_layer"]) == n
    best = metrics["lomo"]["best_model_type"]
    assert cl["summary"][best]["r2_median_layers"] > 0.5


def test_lomo_two_models_and_one(data):
    fit, series, configs = data
    two = fit[fit["model"].isin(["l4-w64-h4", "l6-w96-h6"])]
    t2 = build_feature_table(two, configs, "original", "ratio")
    m2 = _quiet(evaluate, t2, series, FAST)
    assert m2["n_models"] == 2 and "per_target" in m2["lomo"]
    one = build_feature_table(fit[fit["model"] == "l6-w96-h6"], configs, "original",
                              "ratio")
    m1 = _quiet(evaluate, one, series, FAST)
    assert "skipped" in m1["lomo"] and "2 models" in m1["lomo"]["skipped"]


def test_predict_architecture_unseen(table):
    cfg = neox_config(ModelSpec("l5-w80-h4", 5, 80, 4))
    curves, summary = _quiet(predict_architecture, table, cfg, STEPS, FAST)
    assert sorted(curves["layer"].unique()) == list(range(5))
    assert len(curves) == 5 * len(STEPS)
    assert np.isfinite(curves[["pred", "lo", "hi"]].to_numpy()).all()
    assert (curves["lo"] <= curves["pred"]).all() and (curves["pred"] <= curves["hi"]).all()
    assert (curves["hi"] > curves["lo"]).any()
    for la in summary["layers"]:
        assert la["peak_step_lo"] <= la["peak_step"] <= la["peak_step_hi"]
        assert la["final_ratio_lo"] <= la["final_ratio"] <= la["final_ratio_hi"]
    # the architecture dict itself is accepted too
    c2, _ = _quiet(predict_architecture, table, architecture(cfg), STEPS, FAST)
    pd.testing.assert_frame_equal(c2, curves)


def test_predict_architecture_mean_curve(table):
    """The mean-curve predictor: per layer the mean of the training models' fitted curves
    at the same relative depth, with a model-bootstrap band."""
    cfg = neox_config(ModelSpec("l5-w80-h4", 5, 80, 4))
    s = dataclasses.replace(FAST, predict_model="mean_curve")
    curves, summary = _quiet(predict_architecture, table, cfg, STEPS, s)
    assert summary["model_type"] == "mean_curve" and len(summary["layers"]) == 5
    assert (curves["lo"] <= curves["pred"]).all() and (curves["pred"] <= curves["hi"]).all()
    # the last layer (depth 1.0) is exactly the mean of every model's last-layer curve
    d = table[table["usable"]]
    last = d.loc[d.groupby("model")["layer"].idxmax()]
    names = [c[len("param_"):] for c in d.columns if c.startswith("param_")]
    expect = np.mean([hypotheses.get(FAST.parametrisation).func(np.asarray(STEPS, float),
                                                     *r[[f"param_{n}" for n in names]])
                      for _, r in last.iterrows()], axis=0)
    got = curves[curves["layer"] == 4].sort_values("step")["pred"].to_numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-9)
    again, _ = _quiet(predict_architecture, table, cfg, STEPS, s)
    pd.testing.assert_frame_equal(again, curves)


# ----------------------------------------------------------------------------- files, determinism

def test_entry_points_bit_identical(data, tmp_path):
    fit, series, configs = data
    fit_path, ser_path = tmp_path / "fit.parquet", tmp_path / "series.parquet"
    fit.to_parquet(fit_path)
    series.to_parquet(ser_path)
    cfg_paths = {}
    for m, c in configs.items():
        cfg_paths[m] = str(tmp_path / f"{m}.json")
        (tmp_path / f"{m}.json").write_text(json.dumps(c))
    new_cfg = neox_config(ModelSpec("l3-w48-h4", 3, 48, 4))
    outs = []
    for run in ("a", "b"):
        d = tmp_path / run
        features_stage.run([str(fit_path)], cfg_paths, str(d / "ft.parquet"),
                           str(d / "fitted_param_dataset_original.csv"), FAST)
        _quiet(predict_stage.evaluate, str(d / "ft.parquet"), [str(ser_path)], FAST,
               str(d / "metrics.json"), str(d / "extras"), figures=(run == "a"))
        _quiet(predict_stage.predict, str(d / "ft.parquet"), new_cfg, STEPS, FAST,
               str(d / "pred"))
        outs.append(d)
    names = ["ft.parquet", "fitted_param_dataset_original.csv", "metrics.json",
             "extras/ols_summary.txt", "extras/lomo_predictions.csv", "extras/lomo_curves.csv",
             "extras/study_predictions.csv", "extras/feature_importance.csv",
             "pred/curves.csv", "pred/summary.json"]
    for n in names:
        assert (outs[0] / n).read_bytes() == (outs[1] / n).read_bytes(), n
    for fig in ("lomo_pred_vs_fitted.png", "feature_importance.png",
                "lomo_heldout_curves.png"):
        assert (outs[0] / "extras" / fig).stat().st_size > 1000
    assert (outs[0] / "pred" / "prediction.png").stat().st_size > 1000
    assert "OLS: target_A ~ features" in (outs[0] / "extras/ols_summary.txt").read_text()
