"""Curve hypotheses and per-layer fitting: Jacobians, exact scale-back, fit quality on
synthetic series, AICc selection, bad-data handling and the written outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from madyn.curves import hypotheses as H
from madyn.curves.fit import TABLE_COLUMNS, fit_model, fit_series
from madyn.settings import FitSettings
from madyn.stages.fit import run as run_fit

# the study's checkpoint grid: 0, 1, 2, 4, ..., 512, then a spread up to 143000 (39 steps)
STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
                 + list(np.linspace(1000, 143000, 28).round(-3).astype(int)), float)
T = STEPS[-1]
T_N = STEPS / T

# parameters in normalised space (t_n in [0, 1], y_n of order 1)
NORM_PARAMS = {
    "original": [2.0, 0.5, 30.0, 0.2, 1.0],
    "reparam": [0.8, 1.2, 2.0, 0.01, -0.5],
    "first_order": [0.3, 1.2, 0.05],
    "second_order_under": [0.1, 1.0, 20.0, 0.3],
    "second_order_critical": [0.0, 2.0, 15.0],
    "second_order_over": [0.0, 1.0, 10.0, 2.5],
    "log_baseline": [1.0, 0.3],
}
NORM_PARAMS["original_reg"] = NORM_PARAMS["original"]
NORM_PARAMS["reparam_reg"] = NORM_PARAMS["reparam"]


def _t_fit(h: H.Hypothesis) -> np.ndarray:
    return T_N if h.scale_time else STEPS


def _noisy(y: np.ndarray, seed: int, level: float = 0.05) -> np.ndarray:
    """5 % multiplicative Gaussian noise."""
    return y * (1 + level * np.random.default_rng(seed).standard_normal(len(y)))


def test_registry_covers_all_hypotheses():
    assert set(NORM_PARAMS) == set(H.REGISTRY)
    assert H.get("reparam").family == H.get("original_reg").family == "emlog"
    with pytest.raises(KeyError, match="unknown hypothesis"):
        H.get("nope")


@pytest.mark.parametrize("name", sorted(H.REGISTRY))
def test_jacobian_matches_finite_differences(name):
    h = H.get(name)
    p = np.array(NORM_PARAMS[name])
    t = _t_fit(h)
    J = h.jac(t, *p)
    assert J.shape == (len(t), h.k)
    steps = 1e-6 * np.maximum(1.0, np.abs(p))
    fd = np.column_stack([(h.func(t, *(p + e)) - h.func(t, *(p - e))) / (2 * e[j])
                          for j, e in enumerate(np.diag(steps))])
    np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-7 * np.abs(J).max())


@pytest.mark.parametrize("name", sorted(H.REGISTRY))
def test_to_raw_is_exact(name):
    h = H.get(name)
    p = np.array(NORM_PARAMS[name])
    mu, sd = 37.5, 12.25
    raw = h.to_raw(p, T, mu, sd)
    lhs = h.func(STEPS, *raw)
    rhs = mu + sd * h.func(_t_fit(h), *p)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["original_reg", "reparam_reg"])
def test_penalty_and_its_jacobian(name):
    h = H.get(name)
    p = np.array(NORM_PARAMS[name])
    r = h.penalty(p, 0.04)
    assert r.shape == (h.k,)
    # both are penalised on (A1, A2, beta, tau0, K): original_reg on its exact conversion
    q = H.original_to_reparam(p) if name == "original_reg" else p
    np.testing.assert_allclose(r, 0.2 * (q - h.penalty_ref) / h.penalty_scale)
    steps = 1e-6 * np.maximum(1.0, np.abs(p))
    fd = np.column_stack([(h.penalty(p + e, 0.04) - h.penalty(p - e, 0.04)) / (2 * e[j])
                          for j, e in enumerate(np.diag(steps))])
    np.testing.assert_allclose(h.penalty_jac(p, 0.04), fd, rtol=1e-6, atol=1e-9)
    assert H.get("reparam").penalty(p, 0.04).size == 0


def test_original_reg_penalty_equals_reparam_reg_on_the_same_curve():
    """A saturating rise needs |A| ~ 1e60 in the original form; its penalty must be the
    reparam form's, not a ridge on A (which made original_reg fail on such series)."""
    q = np.array([-224.6, 498.3, 7.19, 9.29, 1.40])
    p = H.reparam_to_original(q)
    assert abs(p[0]) > 1e30
    np.testing.assert_allclose(H.get("original_reg").penalty(p, 0.01),
                               H.get("reparam_reg").penalty(q, 0.01), rtol=1e-9)


def test_original_reparam_conversion_and_peak():
    p = np.array([2.0, 0.5, 30.0, 0.2, 1.0])
    q = H.original_to_reparam(p)
    np.testing.assert_allclose(H.reparam_func(T_N, *q), H.original_func(T_N, *p), rtol=1e-12)
    np.testing.assert_allclose(H.reparam_to_original(q), p, rtol=1e-12)
    # the Lambert-W peak is the maximum of the curve, in both forms
    t_peak = H.original_peak(p)
    grid = np.linspace(0, 1, 200001)
    assert t_peak == pytest.approx(grid[np.argmax(H.original_func(grid, *p))], abs=1e-5)
    assert H.reparam_peak(q) == pytest.approx(t_peak, rel=1e-9)
    assert np.isnan(H.original_peak(np.array([-2.0, 0.5, 30.0, 0.2, 1.0])))  # a trough


def test_starts_are_feasible_and_good():
    h = H.get("reparam")
    y = H.reparam_func(T_N, *NORM_PARAMS["reparam"])
    starts = h.starts(T_N, y, 3)
    assert starts.shape[1] == 5 and 1 <= len(starts) <= 3
    lo, hi = map(np.asarray, h.bounds)
    assert np.all(starts > lo) and np.all(starts < hi)
    rss = np.sum((H.reparam_func(T_N, *starts[0]) - y) ** 2)
    assert rss < 0.05 * np.sum((y - y.mean()) ** 2)  # the grid alone explains > 95 %


# raw-unit reparam parameter sets (A1, A2, beta, tau0, K): growth, early peak, late plateau
# (positive curves, as the measured top1, median and ratio series are)
REPARAM_SETS = [
    [300.0, 0.0, 2e-6, 1.0, 10.0],
    [50.0, 100.0, 4e-5, 20.0, 5.0],
    [800.0, -500.0, 1e-5, 3.0, 100.0],
    [120.0, 0.0, 1.5e-4, 2.0, 30.0],
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("pset", range(len(REPARAM_SETS)))
def test_reparam_fit_reaches_high_r2(pset, seed):
    y = _noisy(H.reparam_func(STEPS, *REPARAM_SETS[pset]), seed)
    res = {r.hypothesis: r for r in fit_series(STEPS, y)}
    rp = res["reparam"]
    assert rp.success, rp.reason
    assert rp.r2 >= 0.98
    assert rp.residuals.shape == (len(STEPS),)
    assert rp.pcov.shape == (5, 5) and rp.perr.shape == (5,)
    np.testing.assert_allclose(rp.residuals, y - H.reparam_func(STEPS, *rp.popt))
    assert res["original"].r2 >= rp.r2 - 0.01  # same family, fitted as well
    assert sum(r.is_winner for r in res.values()) == 1
    w = [r.akaike_weight for r in res.values() if r.success]
    assert sum(w) == pytest.approx(1.0)


# generating hypotheses and raw parameters, grouped by family: original and reparam (and
# their regularised variants) are one function family, so selection is judged per family
GENERATORS = {
    "emlog": [("reparam", [40.0, 300.0, 4e-5, 2.0, 20.0]),
              ("reparam", [10.0, 60.0, 2e-4, 0.5, 6.0]),
              ("original", [60.0, 3e-5, 1.0, 3.0, 8.0])],
    "first_order": [("first_order", [1.0, 40.0, 20000.0]), ("first_order", [2.0, 30.0, 40000.0]),
                    ("first_order", [1.0, 20.0, 10000.0])],
    "second_order_under": [("second_order_under", [5.0, 40.0, 2e-4, 0.3]),
                           ("second_order_under", [10.0, 20.0, 1e-4, 0.2]),
                           ("second_order_under", [3.0, 10.0, 4e-4, 0.4])],
    "second_order_over": [("second_order_over", [1.0, 40.0, 7.5e-5, 1.34]),
                          ("second_order_over", [1.0, 30.0, 5e-5, 2.0]),
                          ("second_order_over", [2.0, 50.0, 1e-4, 1.6])],
    "log_baseline": [("log_baseline", [5.0, 2.0]), ("log_baseline", [10.0, 0.5]),
                     ("log_baseline", [2.0, 4.0])],
}


def test_aicc_picks_the_generating_family():
    hits, total, misses = 0, 0, []
    for family, gens in GENERATORS.items():
        for name, p in gens:
            for seed in range(3):
                y = _noisy(H.get(name).func(STEPS, *p), seed)
                winner = [r for r in fit_series(STEPS, y) if r.is_winner][0]
                total += 1
                hits += winner.family == family
                if winner.family != family:
                    misses.append((name, p, seed, winner.hypothesis))
    assert hits / total >= 0.9, misses


def test_derived_quantities():
    p = [300.0, 0.0, 2e-6, 1.0, 10.0]  # slow decay: peak beyond the observed range
    res = {r.hypothesis: r for r in fit_series(STEPS, _noisy(H.reparam_func(STEPS, *p), 0))}
    rp = res["reparam"]
    assert rp.final_value == pytest.approx(H.reparam_func(np.array([T]), *rp.popt)[0])
    assert rp.asymptote == pytest.approx(rp.popt[4])
    assert rp.last_step == T
    early = [50.0, 100.0, 4e-5, 20.0, 5.0]  # peaks inside the range and decays
    r2 = {r.hypothesis: r for r in fit_series(STEPS, _noisy(H.reparam_func(STEPS, *early), 1))}
    truth = H.reparam_peak(np.array(early))
    assert r2["reparam"].peak_in_range and truth < T
    assert r2["reparam"].peak_step == pytest.approx(truth, rel=0.3)
    assert np.isnan(r2["log_baseline"].asymptote) or r2["log_baseline"].popt[1] == 0
    assert np.isnan(r2["first_order"].peak_step)  # monotone


def _reasons(results) -> set[str]:
    return {r.reason for r in results}


def test_bad_series_are_recorded_not_raised():
    y = H.reparam_func(STEPS, *REPARAM_SETS[0])
    with_nan = y.copy()
    with_nan[[3, 20]] = np.nan
    res = fit_series(STEPS, with_nan)
    assert all(r.n == len(STEPS) - 2 for r in res)
    assert all("2 non-finite values removed" in r.reason for r in res)
    assert any(r.success for r in res)

    const = fit_series(STEPS, np.full(len(STEPS), 3.0))
    assert not any(r.success for r in const)
    assert _reasons(const) == {"skipped: constant series"}

    two = fit_series(STEPS[:2], y[:2])
    assert not any(r.success for r in two)
    assert all("usable points" in r.reason for r in two)

    # too few points for the 5-parameter curves but enough for the 2-parameter baseline
    few = {r.hypothesis: r for r in fit_series(STEPS[-6:], y[-6:], FitSettings(min_points=4))}
    assert not few["reparam"].success and "k=5 >= n-1=5" in few["reparam"].reason
    assert few["log_baseline"].success

    nothing = fit_series(np.array([]), np.array([]))
    assert not any(r.success for r in nothing)


def test_outlier_step_removed_and_refitted():
    y = _noisy(H.reparam_func(STEPS, *REPARAM_SETS[0]), 3)
    y[25] *= 3.0
    res = fit_series(STEPS, y)
    assert all(f"outlier step(s) [{int(STEPS[25])}] removed" in r.reason for r in res)
    rp = {r.hypothesis: r for r in res}["reparam"]
    assert rp.n == len(STEPS) - 1 and STEPS[25] not in rp.steps
    assert rp.r2 >= 0.98


def test_flagged_points_removed():
    y = _noisy(H.reparam_func(STEPS, *REPARAM_SETS[1]), 4)
    flagged = np.zeros(len(STEPS), bool)
    flagged[[10, 30]] = True
    y[30] = 1e6  # a flagged garbage value never reaches the fit
    res = fit_series(STEPS, y, flagged=flagged)
    assert all(r.reason.startswith("2 flagged checkpoints removed") for r in res)
    assert all(r.n == len(STEPS) - 2 for r in res)
    assert max(r.r2 for r in res if r.success) >= 0.98


def _fit_input(model: str = "m", n_layers: int = 3) -> pd.DataFrame:
    rows = []
    for layer in range(n_layers):
        p = REPARAM_SETS[layer % len(REPARAM_SETS)]
        top1 = _noisy(H.reparam_func(STEPS, *p) * 2.0, layer)
        median = _noisy(np.full(len(STEPS), 2.0), 10 + layer)
        for q, vals in (("ratio", top1 / median), ("top1", top1), ("median", median)):
            rows += [{"model": model, "step": int(s), "layer": layer, "quantity": q,
                      "value": float(v), "flagged": bool(s == 4)}
                     for s, v in zip(STEPS, vals, strict=True)]
    return pd.DataFrame(rows)


def test_fit_model_table_and_released_layout():
    s = FitSettings(hypotheses=("reparam", "original", "first_order", "log_baseline"))
    table, released = fit_model(_fit_input(), s, progress=False)
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 3 * 3 * 4
    assert set(released) == {"ratio", "top1", "median"}
    assert table["reason"].str.contains("1 flagged checkpoint removed").all()
    win = table[table["is_winner"]]
    assert len(win) == 9  # one winner per (quantity, layer)
    assert table.groupby(["quantity", "layer"])["akaike_weight"].sum().round(9).eq(1).all()
    assert (table["n_layers"] == 3).all() and (table["last_step"] == T).all()
    row = table[(table.hypothesis == "reparam") & (table.quantity == "ratio")].iloc[0]
    assert json.loads(row["param_names"]) == ["A1", "A2", "beta", "tau0", "K"]
    assert len(json.loads(row["popt"])) == 5
    layers = released["ratio"]
    assert len(layers) == 3 and set(layers[0]) == set(s.hypotheses)
    rec = layers[1]["reparam"]
    for key in ("param_names", "popt", "pcov", "r2", "aic", "residuals", "aicc", "bic",
                "akaike_weight", "is_winner", "reason", "n", "k", "perr", "peak_step"):
        assert key in rec
    text = json.dumps(released, allow_nan=False)  # strict JSON: NaN became null
    assert json.loads(text) == released
    assert len(rec["pcov"]) == 5 and len(rec["residuals"]) == rec["n"] == len(STEPS) - 1


def test_run_fit_writes_outputs(tmp_path):
    from madyn.io import read_json
    from madyn.measure import released as rel
    from madyn.measure.series import build_series

    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000]
    rng = np.random.default_rng(0)
    tables = {}
    for s in steps:
        level = np.array([5 + 2 * np.log1p(s), 3 + 4 * np.log1p(s) * np.exp(-s / 4000)])
        top = level[None, None, :] * (1 + 0.03 * rng.standard_normal((3, 3, 2)))
        top = np.sort(top, axis=1)[:, ::-1, :]
        med = rng.uniform(0.9, 1.1, size=(3, 1, 2))
        tables[s] = rel.to_table(np.concatenate([top, med], axis=1))
    series, _ = build_series(tables, {s: {} for s in steps}, "tiny")
    path = tmp_path / "series" / "tiny.parquet"
    path.parent.mkdir()
    series.to_parquet(path)
    s = FitSettings(hypotheses=("reparam", "first_order", "log_baseline"))
    run_fit(str(path), str(tmp_path / "params"), str(tmp_path / "fits.parquet"), s)
    for q in ("ratio", "top1", "median"):
        data = read_json(tmp_path / "params" / f"layer_fit_params_{q}.json")
        assert len(data) == 2 and set(data[0]) == {"reparam", "first_order", "log_baseline"}
    table = pd.read_parquet(tmp_path / "fits.parquet")
    assert len(table) == 3 * 2 * 3 and table["model"].eq("tiny").all()
    assert table.loc[table.quantity == "top1", "r2"].max() > 0.9


# normalised reparam parameters (t_n = step / last step) of real series of the smoke suite:
# a saturating or sigmoid rise in log time, some with a late dip
REAL_SHAPES = {
    "saturating": [-224.6, 498.3, 7.19, 9.29, 1.40],
    "rise_dip": [-37.06, 4.64, 9.12, 1.21, 1.21],
    "slow_rise": [-108.6, 143.7, 7.99, 3.84, 1.32],
    "late_dip": [-21.25, -29.35, 22.1, 0.279, 0.773],
    "sigmoid": [-239.2, 593.1, 5.86, 12.07, 1.58],
}
SCHEDULES = {
    "log": np.concatenate([[0.0], np.unique(np.round(np.logspace(0, np.log10(2000), 26)))]),
    "embedded": np.array([0, 1, 2, 4, 8, 16, 32, 64, *range(125, 2000, 125), 2000], float),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("shape", sorted(REAL_SHAPES))
def test_regularised_fits_cost_little_r2(shape, schedule):
    """alpha = 0.01 of ridge must not cost more than 0.02 of R^2 against the unregularised
    fit, on top1-like (1..50) and median-like (0.01..1) series with 3 % noise."""
    steps = SCHEDULES[schedule]
    f = H.reparam_func(steps / steps[-1], *REAL_SHAPES[shape])
    s = FitSettings(hypotheses=("original", "reparam", "original_reg", "reparam_reg"),
                    alpha=0.01, outlier_mad=0)
    for lo, hi in [(1.0, 50.0), (0.01, 1.0)]:
        clean = lo + (hi - lo) * (f - f.min()) / np.ptp(f)
        for seed in range(2):
            res = {r.hypothesis: r for r in fit_series(steps, _noisy(clean, seed, 0.03), s)}
            assert all(r.success for r in res.values())
            assert res["original"].r2 > 0.99
            for name in ("original", "reparam"):
                assert res[f"{name}_reg"].r2 > res[name].r2 - 0.02, (name, lo, seed)


def test_summary_of_a_run_with_as_few_checkpoints_as_fits_need(tmp_path):
    """Six checkpoints (fit.min_points): the study's 5-parameter curves are skipped (k >=
    n - 1), so a model has no emlog R^2; the fit summary says so instead of raising
    (TypeError in `madyn step fit-summary` on a real 6-checkpoint Trainer run)."""
    from madyn.measure import released as rel
    from madyn.measure.series import build_series
    from madyn.stages.fit import summarise, summary_lines

    steps = [20, 40, 60, 80, 100, 120]
    rng = np.random.default_rng(1)
    tables = {}
    for s in steps:
        top = (2 + np.log1p(s)) * (1 + 0.03 * rng.standard_normal((3, 3, 2)))
        med = rng.uniform(0.9, 1.1, size=(3, 1, 2))
        tables[s] = rel.to_table(np.concatenate([np.sort(top, axis=1)[:, ::-1], med], axis=1))
    series, _ = build_series(tables, {s: {} for s in steps}, "run")
    series.to_parquet(tmp_path / "run.parquet")
    run_fit(str(tmp_path / "run.parquet"), str(tmp_path / "params"),
            str(tmp_path / "run_fits.parquet"), FitSettings())
    summary = summarise([str(tmp_path / "run_fits.parquet")], str(tmp_path / "all.parquet"),
                        str(tmp_path / "fit.json"))
    assert summary["per_model"]["run"]["ratio"]["best_emlog_r2_mean"] is None
    [line] = summary_lines(summary)
    assert line.startswith("run            ratio: mean best R^2 none, winners {")
