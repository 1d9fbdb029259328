"""Design effects: bootstrap effect table, per-model quantities on a real tiny model,
kurtosis-cos_sim association, and the `madyn effects` command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from madyn.io import read_json
from madyn.predict.effects import (
    QUANTITIES,
    TABLE_COLUMNS,
    effect_table,
    effects_json,
    kurtosis_cos_association,
    model_quantities,
)

# ----------------------------------------------------------------------------- effect table


def _per_model(groups: dict[str, np.ndarray], quantity: str = "final_ratio"
               ) -> tuple[pd.DataFrame, dict[str, str]]:
    rows, designs = [], {}
    for label, values in groups.items():
        for i, v in enumerate(values):
            rows.append({"model": f"{label}-s{i}", quantity: float(v)})
            designs[f"{label}-s{i}"] = label
    return pd.DataFrame(rows), designs


def _groups(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = 10 + rng.normal(0, 0.3, 5)
    return {"base": base, "double": 20 + rng.normal(0, 0.3, 5),
            "same": rng.permutation(base)}


def test_known_effect_and_null_effect():
    per_model, designs = _per_model(_groups())
    t = effect_table(per_model, designs, "base", n_boot=4000, seed=1)
    assert list(t.columns) == TABLE_COLUMNS
    assert list(t["design"]) == ["double", "same"]
    d = t.set_index("design")
    assert d.loc["double", "ratio"] == pytest.approx(2.0, rel=0.03)
    assert 1 < d.loc["double", "ratio_lo"] < d.loc["double", "ratio"] < d.loc["double",
                                                                            "ratio_hi"]
    assert d.loc["double", "excludes_zero"] and d.loc["double", "diff_lo"] > 9
    assert d.loc["double", ["n_base", "n_design"]].tolist() == [5, 5]
    # the same values as the base: difference 0, interval around it
    assert d.loc["same", "diff"] == pytest.approx(0.0, abs=1e-12)
    assert d.loc["same", "diff_lo"] < 0 < d.loc["same", "diff_hi"]
    assert not d.loc["same", "excludes_zero"]
    assert d.loc["same", "ratio_lo"] < 1 < d.loc["same", "ratio_hi"]


def test_bootstrap_is_seeded_and_cells_are_independent():
    per_model, designs = _per_model(_groups())
    a = effect_table(per_model, designs, "base", n_boot=500, seed=3)
    b = effect_table(per_model, designs, "base", n_boot=500, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = effect_table(per_model, designs, "base", n_boot=500, seed=4)
    assert not np.allclose(a["diff_lo"], c["diff_lo"])
    # dropping a design leaves the other design's interval as it was
    keep = {m: d for m, d in designs.items() if d != "same"}
    only = effect_table(per_model[per_model["model"].isin(list(keep))], keep, "base",
                        n_boot=500, seed=3)
    pd.testing.assert_frame_equal(only, a[a["design"] == "double"].reset_index(drop=True))


def test_single_seed_gets_means_but_no_interval():
    per_model, designs = _per_model({"base": np.array([1.0, 1.2, 0.9]),
                                     "one": np.array([3.0])})
    row = effect_table(per_model, designs, "base", n_boot=200).iloc[0]
    assert row["n_design"] == 1 and row["ratio"] == pytest.approx(3 / (3.1 / 3))
    assert math.isnan(row["diff_lo"]) and math.isnan(row["ratio_hi"])
    assert not row["excludes_zero"]


def test_nan_values_are_left_out_and_nonpositive_base_has_no_ratio():
    per_model, designs = _per_model({"base": np.array([-1.0, 0.0, 1.0, np.nan]),
                                     "up": np.array([2.0, 3.0, np.nan])})
    row = effect_table(per_model, designs, "base", n_boot=200).iloc[0]
    assert (row["n_base"], row["n_design"]) == (3, 2)
    assert row["diff"] == pytest.approx(2.5)
    assert math.isnan(row["ratio"]) and math.isnan(row["ratio_lo"])


def test_bad_arguments_name_what_is_wrong():
    per_model, designs = _per_model(_groups())
    with pytest.raises(ValueError, match="'control'"):
        effect_table(per_model, designs, "control")
    with pytest.raises(ValueError, match="double-s0"):
        effect_table(per_model, {m: d for m, d in designs.items() if m != "double-s0"},
                     "base")
    with pytest.raises(ValueError, match="ghost-s0"):
        effect_table(per_model, {**designs, "ghost-s0": "base"}, "base")
    with pytest.raises(ValueError, match="level"):
        effect_table(per_model, designs, "base", level=95)


def test_effects_json_is_strict_json():
    per_model, designs = _per_model({"base": np.array([1.0, 2.0]), "x": np.array([4.0])})
    t = effect_table(per_model, designs, "base", n_boot=100)
    assoc = {"rho": float("nan"), "n": 0}
    out = effects_json(t, assoc, "base", designs)
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back["base_design"] == "base" and back["designs"]["x"] == ["x-s0"]
    assert back["effects"]["x"]["final_ratio"]["diff_lo"] is None
    assert back["association"]["rho"] is None
    assert set(back["quantities"]) == set(QUANTITIES)


# ----------------------------------------------------------------------------- real tiny model


@pytest.fixture(scope="module")
def tiny_series_fits(tiny_model_dir, corpus_dir):
    """The tiny trained model measured at every checkpoint, its series and a small fit."""
    from madyn.curves.fit import fit_model
    from madyn.measure.extract import measure_checkpoint
    from madyn.measure.series import build_series, fit_input
    from madyn.settings import FitSettings
    from madyn.train.corpus import eval_windows

    tokens = eval_windows(np.load(corpus_dir / "heldout.npy"), 3, 32, seed=0)
    steps = read_json(tiny_model_dir / "manifest.json")["steps"]
    tables, metas = {}, {}
    for s in steps:
        tables[s], metas[s] = measure_checkpoint(str(tiny_model_dir / f"step{s}"), tokens,
                                                 {"device": "cpu"})
    series, _ = build_series(tables, metas, "tiny")
    settings = FitSettings(hypotheses=("original", "first_order", "log_baseline"),
                           quantities=("ratio",))
    fits, _ = fit_model(fit_input(series, ("ratio",)), settings, progress=False)
    return tables, series, fits


def test_model_quantities_on_a_real_tiny_model(tiny_series_fits):
    tables, series, fits = tiny_series_fits
    q = model_quantities(series, fits)
    assert list(q) == list(QUANTITIES)
    win = fits[(fits["quantity"] == "ratio") & fits["is_winner"]].sort_values("layer")
    assert len(win) == 2  # one winner per layer of the 2-layer model
    assert q["final_ratio"] == pytest.approx(float(np.median(win["final_value"])))
    finite = win["asymptote"][np.isfinite(win["asymptote"])]
    assert (math.isnan(q["asymptote"]) if finite.empty
            else q["asymptote"] == pytest.approx(float(np.median(finite))))
    in_range = win.loc[win["peak_in_range"], "peak_step"]
    assert (math.isnan(q["peak_step"]) if in_range.empty
            else q["peak_step"] == pytest.approx(float(np.median(in_range))))
    # series quantities, recomputed from the last checkpoint's per-sequence table
    last = tables[max(tables)]
    for name, col in [("final_kurtosis", "kurtosis"), ("final_sink_mass", "sink_mass"),
                      ("final_cos_sim", "cos_sim")]:
        expect = last.groupby("layer")[col].mean().median()
        assert q[name] == pytest.approx(float(expect), rel=1e-9), name
    assert q["final_kurtosis"] >= 1  # kurtosis of channel RMS is at least 1


def test_model_quantities_skip_a_flagged_last_step(tiny_series_fits):
    tables, series, fits = tiny_series_fits
    s = series.copy()
    steps = sorted(tables)
    s.loc[s["step"] == steps[-1], "flagged"] = True
    q = model_quantities(s, fits)
    expect = tables[steps[-2]].groupby("layer")["kurtosis"].mean().median()
    assert q["final_kurtosis"] == pytest.approx(float(expect), rel=1e-9)


def test_model_quantities_take_the_median_of_finite_layers(tiny_series_fits):
    """A third layer (a copy of layer 0 with a 10x larger winner) moves the mean, not the
    median; a diverging asymptote (NaN) and a peak beyond the last step are left out."""
    _, series, fits = tiny_series_fits
    win = fits[(fits["quantity"] == "ratio") & fits["is_winner"]].sort_values("layer")
    extra = fits[fits["layer"] == 0].assign(layer=2)
    w = extra["is_winner"]
    extra.loc[w, "final_value"] *= 10
    extra.loc[w, ["asymptote", "peak_step", "peak_in_range"]] = [np.nan, 5e4, False]
    f3 = pd.concat([fits, extra], ignore_index=True)
    f3.loc[f3["is_winner"] & (f3["layer"] == 1), ["asymptote", "peak_step",
                                                  "peak_in_range"]] = [7.0, 3.0, True]
    f3.loc[f3["is_winner"] & (f3["layer"] == 0), ["asymptote", "peak_step",
                                                  "peak_in_range"]] = [5.0, 1e5, False]
    q = model_quantities(series, f3)
    finals = sorted([*win["final_value"], 10 * win["final_value"].iloc[0]])
    assert q["final_ratio"] == pytest.approx(finals[1])
    assert q["asymptote"] == pytest.approx(6.0)  # median of 5 and 7; layer 2's NaN left out
    assert q["peak_step"] == pytest.approx(3.0)  # the only peak within the range


def test_model_quantities_refuse_mixed_models(tiny_series_fits):
    _, series, fits = tiny_series_fits
    other = fits.assign(model="other")
    with pytest.raises(ValueError, match="'other'"):
        model_quantities(series, other)
    with pytest.raises(ValueError, match="peak_in_range"):
        model_quantities(series, fits.drop(columns="peak_in_range"))


# ----------------------------------------------------------------------------- association


def _final_series(model: str, kurt: list[float], cos: list[float], flagged_tail=None
                  ) -> pd.DataFrame:
    """A tidy series with one step (100) of the given per-layer kurtosis and cos_sim; with
    ``flagged_tail`` (kurt, cos), a later flagged step 200 holding those."""
    rows = []
    for step, (k, c), flag in [(100, (kurt, cos), False)] + (
            [(200, flagged_tail, True)] if flagged_tail else []):
        for layer, (kv, cv) in enumerate(zip(k, c, strict=True)):
            rows += [{"model": model, "step": step, "layer": layer, "statistic": stat,
                      "mean": v, "flagged": flag}
                     for stat, v in (("kurtosis", kv), ("cos_sim", cv), ("ratio", 5.0))]
    return pd.DataFrame(rows)


def test_association_of_a_monotone_relation():
    rng = np.random.default_rng(0)
    kurt = rng.uniform(1, 50, size=(4, 3))
    series = {f"m{i}": _final_series(f"m{i}", list(k), list(0.1 + 0.2 * np.log(k)))
              for i, k in enumerate(kurt)}
    a = kurtosis_cos_association(series)
    assert a["rho"] == pytest.approx(1.0) and a["n"] == 12 and a["n_models"] == 4
    assert a["p_value"] < 1e-6
    assert a["model_level"]["rho"] == pytest.approx(1.0)
    down = {m: s.assign(mean=np.where(s["statistic"] == "cos_sim", -s["mean"], s["mean"]))
            for m, s in series.items()}
    assert kurtosis_cos_association(down)["rho"] == pytest.approx(-1.0)


def test_association_uses_the_last_unflagged_step_and_drops_bad_pairs():
    # the unflagged step is perfectly increasing; the flagged later step decreasing
    s = _final_series("m", [2.0, 4.0, 8.0, np.nan, 0.0], [0.1, 0.2, 0.3, 0.9, 0.95],
                      flagged_tail=([2.0, 4.0, 8.0, 1.0, 1.0], [0.3, 0.2, 0.1, 0.0, 0.0]))
    a = kurtosis_cos_association({"m": s})
    assert a["n"] == 3 and a["rho"] == pytest.approx(1.0)
    few = kurtosis_cos_association({"m": _final_series("m", [2.0, 3.0], [0.1, 0.2])})
    assert few["n"] == 2 and math.isnan(few["rho"]) and math.isnan(few["p_value"])


# ----------------------------------------------------------------------------- CLI end to end


def _suite_files(tmp_path, series: pd.DataFrame, fits: pd.DataFrame) -> tuple[list, list,
                                                                                dict]:
    """The tiny model's real series and fits under six names: base-s0..2 as measured
    (scaled a little per seed), big-s0..2 with ratios and kurtosis doubled."""
    ser_paths, fit_paths, designs = [], [], {}
    for design, factor in (("base", 1.0), ("big", 2.0)):
        for i, jitter in enumerate((0.98, 1.0, 1.02)):
            m = f"{design}-s{i}"
            s = series.assign(model=m)
            scaled = s["statistic"].isin(["ratio", "kurtosis"])
            s.loc[scaled, "mean"] *= factor * jitter
            f = fits.assign(model=m)
            for c in ("final_value", "asymptote"):
                f[c] *= factor * jitter
            (tmp_path / "series").mkdir(exist_ok=True)
            (tmp_path / "fits").mkdir(exist_ok=True)
            s.to_parquet(tmp_path / "series" / f"{m}.parquet")
            f.to_parquet(tmp_path / "fits" / f"{m}.parquet")
            ser_paths.append(str(tmp_path / "series" / f"{m}.parquet"))
            fit_paths.append(str(tmp_path / "fits" / f"{m}.parquet"))
            designs[m] = design
    return ser_paths, fit_paths, designs


def test_cli_end_to_end(tiny_series_fits, tmp_path, capsys):
    from madyn.cli.main import main

    _, series, fits = tiny_series_fits
    ser, fit, designs = _suite_files(tmp_path, series, fits)
    out = tmp_path / "out"
    args = ["effects", "--series", *ser, "--fits", *fit,
            "--design", *[f"{m}={d}" for m, d in designs.items()], "--base", "base",
            "--out-json", str(out / "effects.json"), "--out-csv", str(out / "effects.csv"),
            "--out-png", str(out / "effects.png"), "--n-boot", "500"]
    assert main(args) == 0
    j = read_json(out / "effects.json")
    assert j["base_design"] == "base" and j["designs"]["big"] == ["big-s0", "big-s1",
                                                                  "big-s2"]
    big = j["effects"]["big"]
    assert big["final_ratio"]["ratio"] == pytest.approx(2.0, rel=1e-6)
    assert big["final_kurtosis"]["ratio"] == pytest.approx(2.0, rel=1e-6)
    assert big["final_ratio"]["excludes_zero"] is True
    assert big["final_cos_sim"]["ratio"] == pytest.approx(1.0)  # cos_sim untouched
    assert set(j["per_model"]) == set(designs)
    csv = pd.read_csv(out / "effects.csv")
    assert list(csv.columns) == TABLE_COLUMNS and len(csv) == len(QUANTITIES)
    assert (out / "effects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (out / "effects.json").read_bytes()
    assert main(args) == 0 and (out / "effects.json").read_bytes() == first  # deterministic
    assert "Spearman rho" in capsys.readouterr().err


def test_cli_without_base_writes_only_the_association(tiny_series_fits, tmp_path):
    from madyn.cli.main import main

    _, series, fits = tiny_series_fits
    ser, _, _ = _suite_files(tmp_path, series, fits)
    out = tmp_path / "out"
    assert main(["effects", "--series", *ser, "--out-json", str(out / "e.json"),
                 "--out-csv", str(out / "e.csv"), "--out-png", str(out / "e.png")]) == 0
    j = read_json(out / "e.json")
    assert j["base_design"] is None and "no base_design" in j["skipped"]
    assert j["association"]["n"] == 6 * 2
    assert (out / "e.csv").read_text().strip() == ",".join(TABLE_COLUMNS)
    assert not (out / "e.png").exists()


def test_cli_bad_design_item_exits_2_naming_it(tiny_series_fits, tmp_path, capsys):
    from madyn.cli.main import main

    _, series, fits = tiny_series_fits
    ser, fit, designs = _suite_files(tmp_path, series, fits)
    items = [f"{m}={d}" for m, d in designs.items()]
    common = ["--series", *ser, "--fits", *fit, "--out-json", str(tmp_path / "e.json"),
              "--out-csv", str(tmp_path / "e.csv")]
    assert main(["effects", *common, "--design", *items[1:], "base-s0", "--base",
                 "base"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("madyn effects:") and "'base-s0'" in err and "\n" not in err
    assert main(["effects", *common, "--design", *items, "--base", "control"]) == 2
    assert "'control'" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()
