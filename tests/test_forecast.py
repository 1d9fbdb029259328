"""Forecasting a run from its first steps (madyn.predict.forecast, `madyn forecast`): known answers
on curves drawn from known parameters, the prior's effect, the backtest and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from madyn.predict import forecast

STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, *range(125, 2001, 125)], float)


def _curves(rng, n: int, spread: float = 1.0, noise: float = 0.03) -> np.ndarray:
    """n x S curves: a rise to a plateau with a slow decay, parameters drawn around one
    design (``spread`` scales their variation), multiplicative noise."""
    a = 1.5 + spread * rng.normal(0, 0.3, (n, 1))
    b = 1.2 + spread * rng.normal(0, 0.3, (n, 1))
    tau = np.exp(np.log(300) + spread * rng.normal(0, 0.5, (n, 1)))
    c = 0.15 + spread * rng.uniform(-0.15, 0.15, (n, 1))
    log_y = a + b * (1 - np.exp(-STEPS / tau)) - c * STEPS / STEPS[-1]
    return np.exp(log_y + rng.normal(0, noise, log_y.shape))


def test_intervals_cover_the_true_final_value_near_their_nominal_rate():
    """200 series from known parameters: forecast from half the steps with 8 prior
    models drawn from the same design; the 90 % intervals cover the truth about 90 %."""
    rng = np.random.default_rng(0)
    k = forecast.observed_upto(STEPS, 0.5 * STEPS[-1])
    covered, errors = [], []
    for _ in range(200):
        prior, truth = _curves(rng, 8), _curves(rng, 1)[0]
        fc = forecast.forecast_layer(STEPS, truth[:k], np.log(prior), level=0.9)
        covered.append(fc.final[1] <= truth[-1] <= fc.final[2])
        errors.append(abs(fc.final[0] - truth[-1]) / truth[-1])
    assert 0.82 <= np.mean(covered) <= 0.98, np.mean(covered)
    assert np.median(errors) < 0.1


def test_a_prior_centred_on_the_truth_narrows_the_intervals():
    rng = np.random.default_rng(1)
    k = forecast.observed_upto(STEPS, 0.25 * STEPS[-1])
    widths = {"broad": [], "centred": []}
    for _ in range(50):
        truth = _curves(rng, 1)[0]
        broad = np.log(_curves(rng, 8))
        centred = np.log(truth) + rng.normal(0, 0.02, (8, len(STEPS)))
        for name, prior in (("broad", broad), ("centred", centred)):
            fc = forecast.forecast_layer(STEPS, truth[:k], prior, level=0.9)
            widths[name].append(np.log(fc.final[2] / fc.final[1]))
            if name == "centred":
                assert fc.final[1] <= truth[-1] <= fc.final[2]
    # the truth's own checkpoint noise (3 %) bounds how narrow they can get
    assert np.median(widths["centred"]) < 0.7 * np.median(widths["broad"])


@pytest.mark.parametrize("observed,message", [
    (np.array([5.0]), "needs at least 2"),
    (np.array([5.0, np.nan, 6.0]), "finite and positive"),
    (np.array([5.0, -1.0, 6.0]), "finite and positive"),
    (np.ones(len(STEPS)), "nothing left to forecast"),
])
def test_bad_series_is_refused_in_one_line(observed, message):
    prior = np.log(_curves(np.random.default_rng(2), 4))
    with pytest.raises(forecast.ForecastError, match=message):
        forecast.forecast_layer(STEPS, observed, prior)


def test_too_few_prior_models_is_refused():
    with pytest.raises(forecast.ForecastError, match="at least 2"):
        forecast.forecast_layer(STEPS, np.ones(5), np.log(_curves(np.random.default_rng(3), 1)))


def _series(path, model: str, rng, layers: int = 3, upto: float | None = None) -> None:
    """A series Parquet (the long layout madyn writes) of ratio, top1 and median."""
    rows = []
    curves = {q: _curves(rng, layers) for q in ("ratio", "top1", "median")}
    for q, vals in curves.items():
        for layer in range(layers):
            for t, v in zip(STEPS, vals[layer], strict=True):
                if upto is None or t <= upto:
                    rows.append({"model": model, "step": int(t), "layer": layer,
                                 "statistic": q, "mean": float(v)})
    pd.DataFrame(rows).to_parquet(path, index=False)


def _models(root, n: int, rng) -> list[str]:
    """n series Parquets m0 .. m{n-1} under ``root``; their paths."""
    for i in range(n):
        _series(root / f"m{i}.parquet", f"m{i}", rng)
    return [str(root / f"m{i}.parquet") for i in range(n)]


def _madyn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "madyn.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_backtest_cli_writes_metrics_table_and_figure(tmp_path):
    rng = np.random.default_rng(4)
    paths = _models(tmp_path, 4, rng)
    out = tmp_path / "out"
    r = _madyn("forecast", "--series", *paths, "--out-json", str(out / "f.json"),
               "--out-csv", str(out / "b.csv"), "--out-png", str(out / "b.png"),
               "--settings-json", json.dumps({"fractions": [0.25, 0.5]}))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "f.json").read_text())
    assert set(summary["ratio"]) == {"25%", "50%"}
    assert set(summary["ratio"]["25%"]) == {"forecast", "prior", "last_value", "early_fit"}
    assert 0 <= summary["ratio"]["25%"]["forecast"]["coverage"] <= 1
    table = pd.read_csv(out / "b.csv")
    assert len(table) == 3 * 4 * 3 * 2 * 4  # quantities x models x layers x fractions x methods
    assert (out / "b.png").stat().st_size > 10_000
    assert "backtest of 4 models" in r.stderr


def test_backtest_in_processes_gives_the_serial_rows():
    rng = np.random.default_rng(5)
    curves = {f"m{i}": (STEPS, np.array([0.25, 0.75]), _curves(rng, 2)) for i in range(4)}
    serial = forecast.backtest(curves, (0.25, 0.5))
    parallel = forecast.backtest(curves, (0.25, 0.5), workers=3)
    assert len(serial) == 4 * 2 * 2 * 4  # models x layers x fractions x methods
    pd.testing.assert_frame_equal(parallel, serial)


def test_backtest_of_two_models_is_a_recorded_skip(tmp_path):
    rng = np.random.default_rng(5)
    paths = _models(tmp_path, 2, rng)
    r = _madyn("forecast", "--series", *paths, "--out-json", str(tmp_path / "f.json"),
               "--out-csv", str(tmp_path / "b.csv"), "--out-png", str(tmp_path / "b.png"))
    assert r.returncode == 0, r.stderr
    assert "a backtest needs at least 3" in json.loads((tmp_path / "f.json").read_text())[
        "skipped"]


def test_a_run_still_training_is_forecast_to_its_planned_last_step(tmp_path):
    rng = np.random.default_rng(6)
    prior = _models(tmp_path, 4, rng)
    _series(tmp_path / "run.parquet", "run", rng, upto=500)
    r = _madyn("forecast", "--series", *prior, "--run", str(tmp_path / "run.parquet"),
               "--last-step", "2000", "--out-dir", str(tmp_path / "fc"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "fc/summary.json").read_text())
    layer = s["layers"]["ratio"]["1"]
    assert layer["final"]["lo"] <= layer["final"]["value"] <= layer["final"]["hi"]
    assert 0 <= layer["peak_before_last_step"] <= 1
    assert np.isfinite(layer["asymptote"]["value"])
    curves = pd.read_csv(tmp_path / "fc/curves.csv")
    assert curves["step"].max() == 2000 and curves["seen"].sum() == 3 * 3 * 12
    # a planned last step before what the run has seen: one line, nothing written
    r = _madyn("forecast", "--series", *prior, "--run", str(tmp_path / "run.parquet"),
               "--last-step", "400", "--out-dir", str(tmp_path / "bad"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--last-step 400 is not after the run's last checkpoint (500)" in r.stderr
    assert not (tmp_path / "bad").exists()


def _hostile_run(path, rng, case: str) -> None:
    """A run's series broken as issue 32 found it: empty, no model column, a step whose
    values are all NaN, a step given twice, two models in one file."""
    _series(path, "run", rng, upto=500)
    run = pd.read_parquet(path)
    if case == "empty":
        run = run.iloc[:0]
    elif case == "no_model":
        run = run.drop(columns="model")
    elif case == "nan_step":
        run.loc[run["step"] == run["step"].max(), "mean"] = np.nan
    elif case == "duplicate_step":
        again = run[run["step"] == run["step"].max()].assign(mean=lambda d: d["mean"] * 10)
        run = pd.concat([run, again], ignore_index=True)
    elif case == "two_models":
        run = pd.concat([run, run.assign(model="other", mean=run["mean"] * 10)],
                        ignore_index=True)
    run.to_parquet(path, index=False)


@pytest.mark.parametrize("case,needle", [
    ("empty", "no rows"),
    ("no_model", "no column 'model'"),
    ("nan_step", "non-finite"),
    ("duplicate_step", "more than once"),
    ("two_models", "2 models ('other', 'run')"),
])
def test_a_hostile_run_series_is_refused_in_one_line(case, needle, tmp_path):
    """Issue 32: an empty table or one with no model column raised IndexError/KeyError; a
    step whose values are all NaN was dropped, a step given twice or a second model in
    the file averaged in (3.79 and 37.9 became 20.85). Each is one line naming the file,
    exit 2, nothing written."""
    rng = np.random.default_rng(7)
    prior = _models(tmp_path, 4, rng)
    run = tmp_path / "run.parquet"
    _hostile_run(run, rng, case)
    r = _madyn("forecast", "--series", *prior, "--run", str(run), "--last-step", "2000",
               "--out-dir", str(tmp_path / "fc"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert str(run) in lines[0] and needle in lines[0], lines[0]
    assert not (tmp_path / "fc").exists()


def test_forecast_out_dir_writes_only_into_madyns_own_folder(tmp_path):
    """Issue 32: ``--out-dir`` on a folder holding the user's own summary.json replaced it.
    A folder madyn did not make (no marker) is refused unless empty; madyn's own is
    rewritten."""
    rng = np.random.default_rng(8)
    prior = _models(tmp_path, 4, rng)
    _series(tmp_path / "run.parquet", "run", rng, upto=500)
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "summary.json").write_text('{"my": "results"}\n')
    args = ["forecast", "--series", *prior, "--run", str(tmp_path / "run.parquet"),
            "--last-step", "2000", "--out-dir"]
    r = _madyn(*args, str(mine))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert str(mine) in lines[0] and "summary.json" in lines[0] and "madyn" in lines[0]
    assert sorted(p.name for p in mine.iterdir()) == ["summary.json"]
    assert (mine / "summary.json").read_text() == '{"my": "results"}\n'
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # an empty folder, then madyn's own folder again
        r = _madyn(*args, str(tmp_path / "empty"))
        assert r.returncode == 0, r.stderr
    assert {"curves.csv", "summary.json", "forecast.png"} <= {
        p.name for p in (tmp_path / "empty").iterdir()}
