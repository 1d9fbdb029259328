"""The forecast of a run madyn has never seen (`madyn forecast --run`): time relative to
the planned schedule, how far the prior is, recorded refusals, the committed prior and
make-prior, scoring archived forecasts; the acceptance run with the real HF Trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madyn.measure.run_plan import planned_last_step
from madyn.predict import forecast

QUANTITIES = ("ratio", "top1", "median")


def _madyn(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "madyn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def _shape(u: np.ndarray, layer: int, rng) -> np.ndarray:
    """A curve on relative time u = step / last step: a rise to a peak at u = 0.3, then a
    decline to 60 % of it (the shape of a short cosine run), scaled per layer, 2 % noise."""
    rise = 1 - np.exp(-u / 0.08)
    fall = np.where(u > 0.3, 1 - 0.4 * (u - 0.3) / 0.7, 1.0)
    return (2 + layer) * (1 + 4 * rise * fall) * np.exp(rng.normal(0, 0.02, len(u)))


def _write_series(path: Path, model: str, steps: np.ndarray, last: int, rng,
                  layers: int = 3, upto: float | None = None) -> None:
    rows = []
    for q in QUANTITIES:
        for layer in range(layers):
            vals = _shape(steps / last, layer, rng) * (1 if q != "median" else 0.1)
            for t, v in zip(steps, vals, strict=True):
                if upto is None or t <= upto:
                    rows.append({"model": model, "step": int(t), "layer": layer,
                                 "statistic": q, "mean": float(v), "n": 10})
    pd.DataFrame(rows).to_parquet(path, index=False)


def test_a_shorter_schedule_is_forecast_on_relative_time(tmp_path):
    """Prior models of 2000 steps and a run of 600 with the same shape relative to their
    schedules (peak at 30 %): from 25 % of the run, the true final values (60 % of the
    peak) are inside the intervals. On absolute steps (the old forecast) the prior at step
    600 is still near its peak, and the intervals missed the finals."""
    rng = np.random.default_rng(0)
    long = np.array([0, 1, 2, 4, 8, 16, 32, 64, *range(125, 2001, 125)], float)
    prior = []
    for i in range(5):
        _write_series(tmp_path / f"p{i}.parquet", f"p{i}", long, 2000, rng)
        prior.append(tmp_path / f"p{i}.parquet")
    run_steps = np.arange(25, 601, 25, dtype=float)
    _write_series(tmp_path / "run.parquet", "run", run_steps, 600, rng, upto=150)
    _write_series(tmp_path / "full.parquet", "run", run_steps, 600,
                  np.random.default_rng(9))
    r = _madyn("forecast", "--series", *prior, "--run", tmp_path / "run.parquet",
               "--last-step", 600, "--out-dir", tmp_path / "fc")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "fc/summary.json").read_text())
    full = pd.read_parquet(tmp_path / "full.parquet")
    for q in QUANTITIES:
        for layer, v in s["layers"][q].items():
            truth = float(full[(full["statistic"] == q) & (full["layer"] == int(layer))
                               & (full["step"] == 600)]["mean"].iloc[0])
            assert v["final"]["lo"] <= truth <= v["final"]["hi"], (q, layer, v, truth)
            assert abs(v["final"]["value"] - truth) <= abs(v["last_seen"] - truth) + 1e-9
    assert s["time"].startswith("relative")
    assert s["prior_distance"]["models"]["p0"]["last_step"] == pytest.approx(
        np.log(2000 / 600) / np.log(10), abs=1e-3)
    # the archived copy is scored against the checkpoints that arrived since
    r = _madyn("forecast", "--run", tmp_path / "full.parquet", "--out-dir",
               tmp_path / "fc", "--score")
    assert r.returncode == 0, r.stderr
    score = json.loads((tmp_path / "fc/score.json").read_text())
    final = score["archives"]["from_step150"]["overall"]["final"]
    assert final["n"] == 9 and final["coverage"] == 1.0
    assert final["err_pct"] <= final["last_value_err_pct"]
    assert "from_step150 all    final: coverage 1.00 of 9" in r.stderr


def test_a_foreign_prior_carries_the_last_value_and_widens():
    """foreign 1: the point forecast is the last value; the interval is wider than with
    foreign 0 for the same prior."""
    rng = np.random.default_rng(1)
    u = np.linspace(0.04, 1, 24)
    samples = np.log(np.array([_shape(u, 0, rng) for _ in range(6)]))
    seen = _shape(u, 0, rng)[:6]
    steps = u * 600
    near = forecast.forecast_relative(steps, u, seen, samples, foreign=0.0)
    far = forecast.forecast_relative(steps, u, seen, samples, foreign=1.0)
    assert far.final[0] == pytest.approx(seen[-1])
    assert np.log(far.final[2] / far.final[1]) > np.log(near.final[2] / near.final[1])


def test_prior_distance_names_each_component():
    run = {"family": "llama", "last_step": 600, "lr": 3e-3, "vocab_size": 300,
           "schedule": "cosine", "eval": {"n_seqs": 10, "seq_len": 128,
                                          "tokens_sha256": "a"}}
    same = dict(run)
    other = {"family": "gpt_neox", "last_step": 2000, "lr": 3e-2, "vocab_size": 300,
             "schedule": "cosine", "eval": {"n_seqs": 10, "seq_len": 128,
                                            "tokens_sha256": "b"}}
    d = forecast.prior_distance(run, {"same": same, "other": other})
    assert d["models"]["same"]["foreign"] == 0
    o = d["models"]["other"]
    assert (o["family"], o["lr"], o["vocab_size"], o["eval"]) == (1, 1, 0, 0.5)
    assert o["foreign"] == 1 and d["foreign"] == 0.5
    assert forecast.prior_distance({}, {"m": other})["models"]["m"]["family"] == 0.5


def test_a_prior_that_does_not_cover_the_run_is_refused_or_recorded(tmp_path):
    rng = np.random.default_rng(2)
    long = np.array([0, 8, 64, *range(125, 2001, 125)], float)
    _write_series(tmp_path / "p0.parquet", "p0", long, 2000, rng)
    _write_series(tmp_path / "run.parquet", "run", np.arange(25, 601, 25, float), 600,
                  rng, upto=150)
    args = ["forecast", "--series", tmp_path / "p0.parquet", "--run",
            tmp_path / "run.parquet", "--last-step", 600, "--out-dir"]
    r = _madyn(*args, tmp_path / "no")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the prior has 1 model(s) with 'ratio'" in r.stderr
    assert not (tmp_path / "no").exists()
    r = _madyn(*args, tmp_path / "rec", "--record-refusal")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "rec/summary.json").read_text())
    assert "a forecast needs at least 2" in s["refused"] and s["layers"] == {}
    assert list(pd.read_csv(tmp_path / "rec/curves.csv").columns)[:3] == [
        "quantity", "layer", "step"]
    assert (tmp_path / "rec/forecast.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "rec/score.json").read_text())["archives"] == {}
    # an unreadable prior is bad input even with --record-refusal
    r = _madyn("forecast", "--run", tmp_path / "run.parquet", "--last-step", 600,
               "--prior", tmp_path / "nope.parquet", "--out-dir", tmp_path / "bad",
               "--record-refusal")
    assert r.returncode == 2 and "nope.parquet: no such file" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_make_prior_and_the_committed_prior_are_read_back(tmp_path):
    rng = np.random.default_rng(3)
    long = np.array([0, 8, 64, *range(125, 2001, 125)], float)
    paths = []
    for i in range(3):
        _write_series(tmp_path / f"p{i}.parquet", f"p{i}", long, 2000, rng)
        (tmp_path / f"p{i}.json").write_text(json.dumps({"model_type": "gpt_neox",
                                                         "vocab_size": 300}))
        paths.append(tmp_path / f"p{i}.parquet")
    r = _madyn("step", "make-prior", "--series", *paths, "--configs",
               *(tmp_path / f"p{i}.json" for i in range(3)), "--train-json",
               json.dumps({"steps": 2000, "lr": 0.03, "schedule": "cosine"}),
               "--out", tmp_path / "prior.parquet", "--suite", "x")
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "prior.json").read_text())
    assert man["models"]["p1"] == {"family": "gpt_neox", "vocab_size": 300, "n_layers": 3,
                                   "last_step": 2000, "schedule": "cosine", "lr": 0.03,
                                   "optimizer": "adamw", "eval": {"n_seqs": 10}}
    _write_series(tmp_path / "run.parquet", "run", np.arange(25, 601, 25, float), 600,
                  rng, upto=150)
    r = _madyn("forecast", "--run", tmp_path / "run.parquet", "--last-step", 600,
               "--out-dir", tmp_path / "fc", "--prior", tmp_path / "prior.parquet",
               "--run-recipe", json.dumps({"family": "gpt_neox", "lr": 0.03}))
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "fc/summary.json").read_text())["prior_distance"]
    assert d["models"]["p0"]["family"] == 0 and d["models"]["p0"]["lr"] == 0
    # the committed prior is there, small, and described
    from madyn.stages.forecast_prior import DEFAULT_PRIOR_DIR

    committed = sorted(DEFAULT_PRIOR_DIR.glob("*.parquet"))
    assert committed and sum(p.stat().st_size for p in committed) < 400_000
    for p in committed:
        man = json.loads(p.with_suffix(".json").read_text())
        assert len(man["models"]) >= 3
        for m in man["models"].values():
            assert {"family", "last_step", "lr", "vocab_size", "eval"} <= set(m)


def test_planned_last_step_of_a_trainer_run_and_a_monitor_folder(tmp_path, corpus_dir):
    """A real Trainer run (30 steps, checkpoints every 10): max_steps from the newest
    checkpoint's trainer_state.json; a monitor folder's madyn_monitor.json max_steps; a
    folder with neither: None."""
    from tests.trainer_run import train_schedule

    train_schedule(corpus_dir, tmp_path / "run", family="llama", steps=30,
                   schedule="cosine", save_steps=10)
    assert planned_last_step(tmp_path / "run") == 30
    state = json.loads((tmp_path / "run/checkpoint-10/trainer_state.json").read_text())
    assert state["max_steps"] == 30 and state["global_step"] == 10
    mon = tmp_path / "mon"
    mon.mkdir()
    (mon / "madyn_monitor.json").write_text(json.dumps({"every": 100, "max_steps": 250}))
    assert planned_last_step(mon) == 250
    (mon / "madyn_monitor.json").write_text(json.dumps({"every": 100}))
    assert planned_last_step(mon) is None
    assert planned_last_step(tmp_path / "missing") is None
    from madyn.measure.run_plan import run_info

    info = run_info(tmp_path / "run")
    assert info["family"] == "llama" and info["last_step"] == 30 and info["n_layers"] == 4
    assert 0 < info["lr"] <= 3e-3
    from madyn.measure.run_plan import schedule_shape

    peak = 1e-3
    for shape, f in (("cosine", lambda x: 0.5 * (1 + np.cos(np.pi * x))),
                     ("linear", lambda x: 1 - x), ("constant", lambda x: 1.0)):
        pts = [(10 + 25 * i, peak * f(25 * i / 590)) for i in range(24)]
        assert schedule_shape(pts, 600) == shape


def _measure(run: Path, model: str, tokens: Path, out: Path) -> Path:
    """Every checkpoint of a Trainer run measured (madyn step extract-run) into its series
    (madyn step series); the series' path."""
    steps = sorted(int(d.name.split("-")[1]) for d in run.glob("checkpoint-*"))
    outs = [out / f"step{s}.parquet" for s in steps]
    r = _madyn("step", "extract-run", "--checkpoints",
               *(run / f"checkpoint-{s}" for s in steps), "--steps", *steps, "--outs",
               *outs, "--tokens", tokens, "--model", model, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = _madyn("step", "series", "--model", model, "--stats", *outs, "--out",
               out / "series.parquet", "--integrity", out / "integrity.json")
    assert r.returncode == 0, r.stderr
    return out / "series.parquet"


@pytest.mark.slow
@pytest.mark.parametrize("family,steps,schedule", [("llama", 600, "cosine"),
                                                   ("qwen3", 400, "linear")])
def test_a_trainer_run_forecast_from_a_quarter_holds(family, steps, schedule, tmp_path,
                                                     corpus_dir):
    """Issue 31's scenario: a real HF Trainer run (checkpoints every 25, max_steps in its
    state), measured, forecast from its first 25 % with the committed prior and scored
    when it is complete: the 90 % intervals hold at least 80 % of the true final values
    over layers and quantities, and the median error is at most the last value's."""
    from tests.trainer_run import train_schedule

    run = tmp_path / "run"
    train_schedule(corpus_dir, run, family=family, steps=steps, schedule=schedule)
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.load(corpus_dir / "heldout.npy")[:1280].reshape(10, 128)
            .astype(np.int64))
    (tmp_path / "m").mkdir()
    full = _measure(run, family, tokens, tmp_path / "m")
    series = pd.read_parquet(full)
    quarter = steps // 4
    series[series["step"] <= quarter].to_parquet(tmp_path / "quarter.parquet")
    r = _madyn("forecast", "--run", tmp_path / "quarter.parquet", "--run-folder", run,
               "--run-tokens", tokens, "--out-dir", tmp_path / "fc",
               "--record-refusal")  # last step: max_steps; schedule: the logged lrs
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "fc/summary.json").read_text())
    assert "refused" not in s and s["last_step"] == steps and s["seen_to_step"] == quarter
    assert s["prior_distance"]["run"]["family"] == family
    assert s["prior_distance"]["run"]["schedule"] == schedule
    r = _madyn("forecast", "--run", full, "--out-dir", tmp_path / "fc", "--score")
    assert r.returncode == 0, r.stderr
    final = json.loads((tmp_path / "fc/score.json").read_text())[
        "archives"][f"from_step{quarter}"]["overall"]["final"]
    print(family, steps, schedule, final)
    assert final["n"] == 12
    assert final["coverage"] >= 0.8, final
    assert final["err_pct"] <= final["last_value_err_pct"], final


ATLAS_RUN = "a10-llama-l4w96-lr2e-2-t800-s0"  # a design of the atlas with one seed


def _atlas_run(tmp_path: Path, seq_len: int = 32) -> tuple[Path, Path, Path, dict, int]:
    """One committed atlas model as a run seen to a quarter of its 800 steps: (series,
    folder with its config.json, the tokens it was measured on (20 x ``seq_len``), its
    recipe, its last step)."""
    from madyn.io import read_json, write_json
    from madyn.stages.forecast_prior import DEFAULT_PRIOR_DIR

    t = pd.read_parquet(DEFAULT_PRIOR_DIR / "atlas.parquet")
    t = t[t["model"] == ATLAS_RUN]
    last = int(t["step"].max())
    run = tmp_path / "run.parquet"
    t[t["step"] <= last // 4].rename(columns={"quantity": "statistic", "value": "mean"})[
        ["model", "step", "layer", "statistic", "mean"]].to_parquet(run)
    folder = tmp_path / "folder"
    folder.mkdir()
    root = Path(__file__).resolve().parents[1]
    write_json(folder / "config.json",
               read_json(root / "data/reference/atlas" / ATLAS_RUN / "config.json"))
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.zeros((20, seq_len), np.int64))
    man = read_json(DEFAULT_PRIOR_DIR / "atlas.json")["models"][ATLAS_RUN]
    recipe = {k: man[k] for k in ("lr", "optimizer") if k in man}
    return run, folder, tokens, recipe, last


def test_outside_design_space_names_each_reason():
    """A run inside the atlas's design space has no reason; each way out of it is named
    as a person states it: another evaluation batch (or none known), another vocabulary,
    a schedule longer than any of the atlas's, SGD where every atlas model used AdamW."""
    from madyn.io import read_json
    from madyn.stages.forecast_prior import DEFAULT_PRIOR_DIR, outside_design_space

    man = read_json(DEFAULT_PRIOR_DIR / "atlas.json")
    feats = dict(man["models"][ATLAS_RUN]["features"])
    atlas_eval = {"n_seqs": 20, "seq_len": 32}
    assert outside_design_space(man, feats, atlas_eval, 300) == []
    assert outside_design_space(man, feats, {"n_seqs": 10, "seq_len": 128}, 300) == [
        "evaluation batch 10 x 128, the prior's 20 x 32 (sequences x tokens)"]
    assert outside_design_space(man, feats, {"n_seqs": 20}, 300) == [
        "evaluation batch 20 x ?, the prior's 20 x 32 (sequences x tokens) (give --run-tokens)"]
    assert outside_design_space(man, feats, atlas_eval, 50304) == [
        "vocabulary 50304, the prior's 300"]
    # a prior that does not state its windows' length constrains only the sequences
    loose = {**man, "models": {m: {**r, "eval": {"n_seqs": 20}}
                               for m, r in man["models"].items()}}
    assert outside_design_space(loose, feats, {"n_seqs": 20, "seq_len": 128}, 300) == []
    assert outside_design_space(loose, feats, {"n_seqs": 10}, 300) == [
        "evaluation batch 10 x ?, the prior's 20 x ? (sequences x tokens) (give --run-tokens)"]
    longer = {**feats, "x_log_steps": 3.0, "x_sgd": 1.0, "x_log_eps": 0.0}  # SGD: eps 1
    assert outside_design_space(man, longer, atlas_eval, 300) == [
        "sgd 1, the prior's 0", "steps 1000, the prior's 200-800"]


def test_the_atlas_is_the_default_prior_inside_its_design_space(tmp_path):
    """Given no prior, a run inside the committed atlas's design space is forecast from its
    design's predicted curve (the atlas); the same run measured on other windows is
    outside it and gets the relative-time priors, the reason in summary.json and on
    stderr; --prior atlas uses the atlas all the same, the reason recorded."""
    from madyn.settings import ForecastSettings
    from madyn.stages.forecast import forecast_run

    s = ForecastSettings.from_dict({"quantities": ["ratio"]})
    run, folder, tokens, recipe, last = _atlas_run(tmp_path)
    out = forecast_run(str(run), last, str(tmp_path / "in"), s, run_folder=str(folder),
                       run_tokens=str(tokens), recipe=recipe)
    assert out["prior"].endswith("atlas.parquet")
    dp = out["design_prior"]
    assert dp["used"] and dp["outside"] == [] and dp["path"].endswith("atlas.parquet")
    assert "prediction for the run's design" in dp["quantities"]["ratio"]["prior"]
    f = out["layers"]["ratio"]["0"]["final"]
    assert 0 < f["lo"] < f["value"] < f["hi"]

    wide = tmp_path / "wide"
    wide.mkdir()
    run, folder, tokens, recipe, last = _atlas_run(wide, seq_len=128)
    r = _madyn("forecast", "--run", run, "--last-step", last, "--run-folder", folder,
               "--run-tokens", tokens, "--run-recipe", json.dumps(recipe),
               "--out-dir", wide / "fc")
    assert r.returncode == 0, r.stderr
    out = json.loads((wide / "fc/summary.json").read_text())
    assert "atlas" not in out["prior"] and "embedded.parquet" in out["prior"]
    assert out["design_prior"]["used"] is False
    assert out["design_prior"]["outside"] == [
        "evaluation batch 20 x 128, the prior's 20 x 32 (sequences x tokens)"]
    assert "outside the design space" in r.stderr and "20 x 128" in r.stderr

    out = forecast_run(str(run), last, str(wide / "given"), s, run_folder=str(folder),
                       run_tokens=str(tokens), recipe=recipe,
                       prior=[out["design_prior"]["path"]])
    assert out["design_prior"]["used"] and "20 x 128" in out["design_prior"]["outside"][0]
