"""Curve-space predictors of a design under nested leave-one-design-out, and the
design-prior forecast's conformal intervals, on small synthetic suites whose curves a
design feature (the peak lr) sets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from madyn.predict import design_curves as dc
from madyn.predict import design_forecast as dfc
from madyn.predict import design_lodo as dl
from madyn.predict import design_predictors as dp

STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 100, 150, 200, 250, 300], float)


def _suite(n_designs: int, seeds: int = 2, noise: float = 0.03, slope: float = 1.5,
           rng_seed: int = 0, layers: int = 3):
    """curves (model -> (steps, depths, L x S)), designs, features: log ratio grows with
    log(1 + step) at a rate set by the design's log10 lr (and depth); seed noise on top."""
    rng = np.random.default_rng(rng_seed)
    lrs = np.geomspace(1e-3, 3e-2, n_designs)
    curves, designs, feats = {}, {}, {}
    v = np.log1p(STEPS) / np.log1p(STEPS[-1])
    depths = (np.arange(layers) + 1) / layers
    for i, lr in enumerate(lrs):
        a = 1.0 + slope * (math.log10(lr) + 3)
        for s in range(seeds):
            m = f"d{i:02d}-s{s}"
            level = rng.normal(0, noise)
            vals = np.stack([np.exp(0.5 + a * v * (0.5 + dep) + level
                                    + rng.normal(0, noise, len(v))) for dep in depths])
            curves[m] = (STEPS.copy(), depths, vals)
            designs[m] = f"d{i:02d}"
            feats[m] = {"x_log_lr": math.log10(lr), "x_log2_width": 6.0}
    return curves, designs, pd.DataFrame.from_dict(feats, orient="index")


def test_design_aware_predictors_beat_the_mean_curve_on_unseen_designs():
    data = dc.design_data(*_suite(8))
    _, doc, _ = dl.lodo(data, ("mean_log", "kernel_ridge", "gp", "eb_shrink"), nested=False)
    per = doc["per_kind"]
    for kind in ("kernel_ridge", "gp", "eb_shrink"):
        assert per[kind]["r2_median"] > per["mean_log"]["r2_median"] + 0.1, (kind, per)
        assert per[kind]["final_rel_err_mean"] < 0.7 * per["mean_log"]["final_rel_err_mean"]


def test_mean_curve_is_the_other_designs_mean_on_the_grid():
    data = dc.design_data(*_suite(4))
    held = "d01"
    te = data.rows_of_designs([held])
    pred = dp.fit_predict("mean_log", data.subset(~te), data.subset(te))
    # by hand: each other design's seeds averaged, then the designs (same depths here)
    others = [d for d in sorted(set(data.designs)) if d != held]
    per_design = [data.Y[data.designs == d].reshape(2, 3, -1).mean(0) for d in others]
    want = np.mean(per_design, axis=0)
    np.testing.assert_allclose(pred, np.concatenate([want, want]), atol=1e-12)


def test_nested_lodo_never_sees_the_held_out_design():
    # two designs with identical features but opposite levels: only a model that saw the
    # held-out design's own seeds could predict its level; leave-one-model-out would
    curves, designs, feats = _suite(6, seeds=3, noise=0.0)
    for m in list(curves):
        if designs[m] in ("d00", "d01"):
            steps, dep, vals = curves[m]
            curves[m] = (steps, dep, vals * (np.e ** 2 if designs[m] == "d00" else 1.0))
            feats.loc[m, "x_log_lr"] = -2.5
    data = dc.design_data(curves, designs, feats)
    _, doc, held = dl.lodo(data, ("mean_log", "kernel_ridge", "eb_shrink"), nested=True)
    assert {s["design"] for s in doc["selections"]} == set(designs.values())
    d0 = data.designs == "d00"
    err_d0 = np.abs(held[d0] - data.Y[d0]).mean()
    # the held-out prediction cannot know d00's level (2 in log); its seeds agree exactly
    assert err_d0 > 0.5
    # a leave-one-model-out fit (the other seeds seen) would have found it
    one = data.models == "d00-s0"
    lomo = dp.fit_predict("kernel_ridge", data.subset(~one), data.subset(one))
    assert np.abs(lomo - data.Y[one]).mean() < err_d0


def test_conformal_intervals_cover_unseen_synthetic_designs():
    level = 0.9
    # calibrate on one suite's leave-one-design-out backtest, check on new designs
    data = dc.design_data(*_suite(10, seeds=1, noise=0.08, rng_seed=1))
    _, _, held = dl.lodo(data, ("gp",), nested=False)
    bt = dfc.backtest_rows(data, held, (0.25,), early_fit=False)
    q = dfc.calibration(bt, level)["0.25"]
    new = dc.design_data(*_suite(10, seeds=1, noise=0.08, rng_seed=2))
    pred = dp.fit_predict("gp", data, new)
    bt_new = dfc.backtest_rows(new, pred, (0.25,), early_fit=False)
    f = bt_new[bt_new["method"] == "forecast"]
    cover = float((f["score"] <= q).mean())
    assert 0.75 <= cover <= 1.0, cover
    # cross-conformal coverage inside the backtest itself
    cc = dfc.cross_conformal(bt, level)
    c = cc.loc[cc["method"] == "forecast", "covered"].mean()
    assert 0.75 <= c <= 1.0


def test_conformal_quantile_and_half_widths():
    s = np.arange(1, 20, dtype=float)  # 19 scores: ceil(20 * 0.9) = 18th smallest
    assert dfc.conformal_quantile(s, 0.9) == 18.0
    assert dfc.conformal_quantile(s[:3], 0.9) == math.inf
    u = STEPS / STEPS[-1]
    hw = dfc.half_widths(u, 5, 0.4)
    assert np.all(hw[:5] == 0) and hw[-1] == pytest.approx(0.4)
    assert np.all(np.diff(hw[4:]) > 0)
    cal = {"0.1": 0.5, "0.25": 0.3, "0.5": 0.2}
    assert dfc.calibrated_q(cal, 0.25) == pytest.approx(0.3)
    assert dfc.calibrated_q(cal, 0.05) > 0.5
    assert dfc.calibrated_q(cal, 0.9) == pytest.approx(0.2)


def test_sample_efficiency_rows_per_size():
    data = dc.design_data(*_suite(7, seeds=1))
    eff = dl.sample_efficiency(data, ("mean_log", "eb_shrink"), sizes=(3,), repeats=2)
    assert sorted(set(eff["n_train"])) == [3, 6]
    assert set(eff["kind"]) == {"mean_log", "eb_shrink"}
    assert (eff["n_layers"] > 0).all()


def test_blend_weights_span_the_three_estimates():
    u = STEPS / STEPS[-1]
    prior = np.linspace(0.0, 2.0, len(u))
    seen = np.exp(prior[:5] + 0.5)
    np.testing.assert_allclose(dfc.blend_forecast(u, seen, prior, (0.0, 0.0))[5:], prior[5:])
    np.testing.assert_allclose(dfc.blend_forecast(u, seen, prior, (1.0, 0.0)),
                               dfc.offset_forecast(u, seen, prior))
    np.testing.assert_allclose(dfc.offset_forecast(u, seen, prior)[5:], prior[5:] + 0.5)
    np.testing.assert_allclose(dfc.blend_forecast(u, seen, prior, (0.0, 1.0))[5:],
                               np.log(seen[-1]))
    # truths that are 30 % the prior and 70 % the last value (logs): those weights back
    rng = np.random.default_rng(0)
    a, lv, d = rng.normal(0, 1, 200), rng.normal(0, 1, 200), rng.normal(0, 0.3, 200)
    assert dfc.fit_weights(a, d, lv, 0.3 * a + 0.7 * lv) == pytest.approx((0.0, 0.7))
    assert dfc.fit_weights(a, d, lv, a + d) == pytest.approx((1.0, 0.0))
    assert dfc.calibrated_weights({"0.1": [1, 0], "0.5": [0, 1]}, 0.3) == \
        pytest.approx((0.5, 0.5))
    assert dfc.calibrated_weights(None, 0.3) == dfc.DEFAULT_WEIGHTS


def test_cross_fitted_blend_is_no_worse_than_its_parts_on_unseen_designs():
    # levels a design's features cannot tell (seed noise 0.3): early values say part of it
    data = dc.design_data(*_suite(12, seeds=2, noise=0.3, rng_seed=3))
    _, _, held = dl.lodo(data, ("gp",), nested=False)
    bt = dfc.backtest_rows(data, held, (0.1, 0.25), early_fit=False)
    err = bt.groupby(["fraction", "method"])["final_rel_err"].median().unstack()
    for frac, row in err.iterrows():
        assert row["forecast"] <= min(row["offset"], row["prior"], row["last_value"]) * 1.05, \
            (frac, row.to_dict())
    f = bt[bt["method"] == "forecast"]
    # each design's weights were chosen without it: they differ between designs
    assert f.groupby("design")[["w_offset", "w_last"]].first().drop_duplicates().shape[0] > 1


def test_backtest_rows_are_the_same_over_two_processes():
    data = dc.design_data(*_suite(4, seeds=1))
    _, _, held = dl.lodo(data, ("mean_log",), nested=False)
    one = dfc.backtest_rows(data, held, (0.25,), early_fit=True)
    two = dfc.backtest_rows(data, held, (0.25,), early_fit=True, workers=2)
    pd.testing.assert_frame_equal(one, two)
    assert set(one["method"]) == {"forecast", "offset", "prior", "last_value", "early_fit"}
