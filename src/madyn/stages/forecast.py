"""Forecast stage: the forecast of a run that is still training to its planned last step,
on time relative to the schedules, from a suite prior or a design prior (its priors:
:mod:`madyn.stages.forecast_prior`; the files it writes:
:mod:`madyn.stages.forecast_outputs`; the saved forecasts scored:
:mod:`madyn.stages.forecast_score`; the backtest of a complete suite:
:mod:`madyn.stages.forecast_backtest`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from madyn.io import check_output_folder, mark_output_folder
from madyn.predict import forecast
from madyn.settings import FitSettings, ForecastSettings
from madyn.stages.forecast_outputs import refuse, write_forecast, write_refusal
from madyn.stages.forecast_prior import (
    default_design_priors,
    design_data,
    design_prior,
    eval_batch,
    load_prior,
    outside_design_space,
    prior_curves,
)
from madyn.stages.forecast_score import score


def _asymptote(steps: np.ndarray, curve: np.ndarray, fit_settings: FitSettings) -> float:
    """The asymptote of the AICc winner fitted to a curve (NaN when no fit succeeds)."""
    from madyn.curves.fit import fit_series, select

    best = select(fit_series(steps, curve, fit_settings))
    return float(best.asymptote) if best is not None else float("nan")


SERIES_COLUMNS = ("model", "step", "layer", "statistic", "mean")
# the recipe keys of a run (``--run-recipe``, its folder) that are design features
DESIGN_RECIPE_KEYS = ("lr", "schedule", "optimizer", "eps", "warmup", "weight_decay", "beta2",
                      "batch_size", "bos")


def read_run(path: str, quantities: list[str]) -> pd.DataFrame:
    """The series table of one run (:data:`SERIES_COLUMNS`), checked: rows, every column,
    one model, each (step, layer, statistic) once, finite values of ``quantities``;
    ForecastError naming the file otherwise (a pivot would average a repeated step or a
    second model in, and drop a step that is all NaN)."""
    try:
        run = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise forecast.ForecastError(f"{path}: not a series table ({e})") from None
    missing = [c for c in SERIES_COLUMNS if c not in run.columns]
    if missing:
        raise forecast.ForecastError(f"{path}: no column {missing[0]!r} (a series table, as "
                                     "madyn step series writes it, has "
                                     f"{', '.join(SERIES_COLUMNS)})")
    if run.empty:
        raise forecast.ForecastError(f"{path}: no rows")
    models = sorted(map(str, run["model"].unique()))
    if len(models) > 1:
        raise forecast.ForecastError(
            f"{path}: holds {len(models)} models ({', '.join(map(repr, models[:5]))}); "
            "give the series of one run")
    twice = run.duplicated(["step", "layer", "statistic"], keep=False)
    if twice.any():
        r = run[twice].iloc[0]
        raise forecast.ForecastError(f"{path}: step {r['step']}, layer {r['layer']}, "
                                     f"{r['statistic']} given more than once")
    used = run[run["statistic"].isin(quantities)]
    bad = ~np.isfinite(pd.to_numeric(used["mean"], errors="coerce").to_numpy(float))
    if bad.any():
        r = used[bad].iloc[0]
        raise forecast.ForecastError(f"{path}: non-finite values ({int(bad.sum())}; first: "
                                     f"step {r['step']}, layer {r['layer']}, "
                                     f"{r['statistic']} = {r['mean']})")
    return run


# prior models no farther than this beyond the closest one are the prior (at least
# CLOSEST_MODELS of them)
CLOSE_MARGIN = 0.25


CLOSEST_MODELS = 3


class ForecastRefused(forecast.ForecastError):
    """The prior does not cover the run: the forecast is refused (one line says why)."""


def run_recipe(series: pd.DataFrame, last_step: int, folder: str | None = None,
               tokens: str | None = None, given: dict | None = None) -> dict:
    """What the forecast knows of the run: its folder's
    (:func:`madyn.measure.run_plan.run_info`), the planned ``last_step``, its eval batch
    (series, ``tokens``), then ``given`` over all."""
    from madyn.measure.run_plan import run_info

    out = run_info(folder) if folder else {}
    out["last_step"] = int(last_step)
    out["eval"] = eval_batch(series, tokens)
    out.update(given or {})
    return out


def closest(distance: dict) -> list[str]:
    """The prior models used: those no farther from the run than CLOSE_MARGIN beyond the
    closest, and at least the CLOSEST_MODELS closest."""
    per = sorted(distance["models"].items(), key=lambda kv: (kv[1]["foreign"], kv[0]))
    best = per[0][1]["foreign"] if per else 0.0
    return [m for i, (m, d) in enumerate(per)
            if d["foreign"] <= best + CLOSE_MARGIN or i < CLOSEST_MODELS]


def _future_steps(seen: np.ndarray, last_step: int, prior_u: np.ndarray) -> np.ndarray:
    """The steps forecast after the last seen one: the run's own checkpoint spacing
    continued to ``last_step`` (when that is at most 400 steps of it), else the prior's
    relative steps on the run's schedule; ``last_step`` always."""
    gap = float(seen[-1] - seen[-2]) if len(seen) > 1 else 0.0
    if gap > 0 and (last_step - seen[-1]) / gap <= 400:
        later = np.arange(seen[-1] + gap, last_step, gap)
    else:
        later = np.round(prior_u * last_step)
    later = later[(later > seen[-1]) & (later < last_step)]
    return np.unique(np.r_[later, float(last_step)])


def forecast_run(run_path: str, last_step: int, out_dir: str,
                 settings: ForecastSettings | None = None,
                 fit_settings: FitSettings | None = None, *, prior: list[str] | None = None,
                 series_paths: list[str] | None = None, run_folder: str | None = None,
                 run_tokens: str | None = None, recipe: dict | None = None,
                 record_refusal: bool = False) -> dict:
    """Forecast a run still training (its series so far: ``run_path``) to its planned
    ``last_step``, on time relative to the schedules (:func:`madyn.predict.forecast.
    forecast_relative`), with the prior ``prior`` (make-prior files; default the committed
    ones: the design prior for a run inside its design space, :func:`_design_choice`) or
    the models of ``series_paths``. Writes ``curves.csv`` (quantity, layer, step,
    seen, mean, lo, hi, prior_mean, prior_lo, prior_hi), ``summary.json`` (per quantity and
    layer: final value, asymptote, peak step, each with its interval, the share of draws
    peaking before ``last_step``; ``prior_distance``: how far the prior is from the run;
    ``design_prior``: whether a design prior was used, and why the run is outside it),
    ``forecast.png``, a copy of the curves under ``archive/from_step<k>/`` (k: the last
    step seen) and ``score.json`` (:func:`score`: the earlier archived forecasts against
    what arrived since). A prior that does not cover the run raises ForecastRefused; with
    ``record_refusal`` any ForecastError but an unreadable prior is recorded instead
    (summary.json ``refused``, an empty curves.csv, a figure saying why) and the score is
    still written."""
    s = settings or ForecastSettings()
    fs = fit_settings or FitSettings()
    check_output_folder(out_dir)
    run = read_run(run_path, s.quantities)
    name = str(run["model"].iloc[0])
    out = Path(out_dir)
    distance = None
    # a prior that cannot be read is bad input, never a recorded refusal
    table, recipes, source = load_prior(prior, series_paths, name, s.quantities)
    info = run_recipe(run, last_step, run_folder, run_tokens, recipe)
    design, note = _design_choice(prior, series_paths, run_folder, last_step, info)
    if design:
        # how far the design prior's models are from the run: recorded, not used to pick
        dm = {m: r for m, r in design["manifest"]["models"].items() if m != name}
        # the run itself is never its own prior (as load_prior leaves it out)
        design = {**design, "table": design["table"][design["table"]["model"] != name],
                  "manifest": {**design["manifest"], "models": dm}}
        distance = forecast.prior_distance(info, dm) if dm else None
        try:
            result = _forecast_design(run, name, last_step, design, info, s, fs)
        except forecast.ForecastError as e:
            if not record_refusal:
                raise
            return refuse(out, run_path, out_dir, name, last_step, str(e), s, distance)
        return write_forecast(out, run_path, out_dir, name, last_step, s, result,
                              str(design["path"]), distance, design_doc={**result[4], **note})
    try:
        distance = forecast.prior_distance(info, recipes) if recipes else None
        if distance is not None:
            table = table[table["model"].isin(closest(distance))]
            distance = forecast.prior_distance(
                info, {m: r for m, r in recipes.items() if m in closest(distance)})
        result = _forecast_all(run, name, last_step, table, distance, s, fs)
    except forecast.ForecastError as e:
        if not record_refusal:
            raise
        return refuse(out, run_path, out_dir, name, last_step, str(e), s, distance)
    return write_forecast(out, run_path, out_dir, name, last_step, s, result, source,
                          distance, design_doc=note)


def _design_choice(prior: list[str] | None, series_paths: list[str] | None,
                   run_folder: str | None, last_step: int, info: dict
                   ) -> tuple[dict | None, dict | None]:
    """(the design prior the run is forecast from, with the run's ``config``, or None;
    the record of that choice, or None when no design prior was in question). Given no
    prior, the committed design prior (the atlas) is used for a run inside its design
    space (:func:`outside_design_space`) whose config.json is found, the relative-time
    priors otherwise; a design prior given with --prior is used whenever the run's
    config.json is found, the reasons it is outside recorded."""
    if series_paths:
        return None, None
    design = design_prior(prior or [str(p) for p in default_design_priors()])
    if design is None:
        return None, None
    config = _run_config(run_folder)
    if config is None:
        why = ["no config.json of the run (give --run-folder)"]
    else:
        why = outside_design_space(design["manifest"], _design_features(config, last_step, info),
                                   info.get("eval", {}), config.get("vocab_size"))
    record = {"path": str(design["path"]), "outside": why}
    if config is None or (why and not prior):
        return None, {**record, "used": False}
    return {**design, "config": config}, {**record, "used": True}


def _design_features(config: dict, last_step: int, info: dict) -> dict:
    """The run's design features (:func:`madyn.predict.design_curves.model_features`) from
    its config.json, planned last step and what the forecast knows of its recipe."""
    from madyn.predict import design_curves as dc

    rec = {k: info[k] for k in DESIGN_RECIPE_KEYS if k in info}
    return dc.model_features(config, float(last_step), rec)


def _run_config(run_folder: str | None) -> dict | None:
    """The run's config.json (its newest checkpoint's, or the folder's own); None when
    there is none or it is not a decoder the architecture reader knows."""
    from madyn.architecture import ArchitectureError, architecture
    from madyn.io import read_json

    if not run_folder:
        return None
    root = Path(run_folder)
    cands = [root / "config.json"]
    try:
        from madyn.measure.runs import scan

        cands.insert(0, scan(root).last() / "config.json")
    except Exception:  # noqa: BLE001 - any unreadable run folder: no config
        pass
    for c in cands:
        if c.is_file():
            try:
                cfg = read_json(c)
                architecture(cfg)
                return cfg
            except (OSError, ValueError, ArchitectureError):
                continue
    return None


def _seen_curves(run: pd.DataFrame, quantity: str, last_step: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's ``quantity`` per layer as seen so far (:func:`madyn.predict.forecast.
    layer_curves`: steps (k,), depths (L,), values (L x k)); ForecastError when
    ``last_step`` is not after its last checkpoint."""
    steps_seen, depths, vals = forecast.layer_curves(run, quantity)
    if last_step <= steps_seen[-1]:
        raise forecast.ForecastError(f"--last-step {last_step} is not after the run's "
                                     f"last checkpoint ({int(steps_seen[-1])})")
    return steps_seen, depths, vals


def _forecast_design(run: pd.DataFrame, name: str, last_step: int, design: dict,
                     info: dict, s: ForecastSettings, fs: FitSettings) -> tuple:
    """Every quantity's and layer's forecast from the run's design's predicted curve
    (:mod:`madyn.predict.design_forecast`; ``design``: :func:`_design_choice`'s, with the
    run's ``config``): (curve rows, summary per quantity and layer,
    the figure's layers, the last step seen, the design prior's record)."""
    from madyn.predict import design_curves as dc
    from madyn.predict import design_forecast as dfc
    from madyn.predict import design_predictors as dpred

    man = design["manifest"]
    dp = man["design_prior"]
    feats = _design_features(design["config"], last_step, info)
    rows, summary, figs, record = [], {}, {}, {"quantities": {}}
    k_step = None
    for q in s.quantities:
        steps_seen, depths, vals = _seen_curves(run, q, last_step)
        k_step = int(steps_seen[-1])
        if q not in dp["quantities"]:
            raise ForecastRefused(f"the design prior has no {q!r}")
        cfg_q = dp["quantities"][q]
        data = design_data(design["table"], man, q)
        pred = dpred.Predictor(cfg_q["kind"]).fit(data)
        row = {c: feats.get(c, float("nan")) for c in data.X.columns}
        imputed = [c for c in pred.cols if not np.isfinite(row[c])]
        for c in imputed:
            row[c] = float(np.median(data.X[c].to_numpy(float)))
        same = [m for m in sorted(set(data.models.tolist()))
                if all(np.isclose(data.X.loc[m, c], row[c]) for c in pred.cols)]
        if same:
            prior_grid = dpred.mean_log_curves(data.subset(np.isin(data.models, same)), depths)
            source = f"the mean of {len(same)} model(s) of the run's design: {same}"
        else:
            prior_grid = pred.predict(pd.DataFrame([row] * len(depths)), depths)
            source = f"{cfg_q['kind']} prediction for the run's design"
        prior_u = np.unique(np.concatenate([c[0] / c[0].max() for c in data.curves.values()]))
        steps = np.r_[steps_seen, _future_steps(steps_seen, last_step, prior_u)]
        u = steps / last_step
        k = len(steps_seen)
        frac = float(steps_seen[-1]) / last_step
        qf = dfc.calibrated_q(cfg_q["calibration"]["forecast"], frac)
        qp = max(cfg_q["calibration"]["prior"].values())
        weights = dfc.calibrated_weights(cfg_q.get("weights"), frac)
        record["quantities"][q] = {"prior": source, "kind": cfg_q["kind"],
                                   "imputed_features": imputed, "seen_fraction": frac,
                                   "q_final": qf, "weights": {"offset": weights[0],
                                                              "last_value": weights[1]},
                                   "lodo": cfg_q.get("lodo")}
        summary[q] = {}
        for layer in range(len(depths)):
            prior_log = np.interp(forecast.rel_axis(u), dc.GRID_V, prior_grid[layer])
            mean = dfc.blend_forecast(u, vals[layer], prior_log, weights)
            hw = dfc.half_widths(u, k, qf)
            lo, hi, mid = np.exp(mean - hw), np.exp(mean + hw), np.exp(mean)
            fitted = [_asymptote(steps, c, fs) for c in (lo, mid, hi)]
            a = sorted(fitted)
            peaks = sorted(float(steps[int(np.argmax(c))]) for c in (lo, mid, hi))
            summary[q][str(layer)] = {
                "final": {"value": float(mid[-1]), "lo": float(lo[-1]), "hi": float(hi[-1])},
                "last_seen": float(vals[layer][-1]),
                "asymptote": {"value": fitted[1], "lo": a[0], "hi": a[-1]},
                "peak_step": {"value": float(steps[int(np.argmax(mid))]), "lo": peaks[0],
                              "hi": peaks[-1]},
                "peak_before_last_step": float(np.argmax(mid) < len(steps) - 1)}
            rows.append(pd.DataFrame({
                "quantity": q, "layer": layer, "step": steps.astype(int),
                "seen": np.arange(len(steps)) < k, "mean": mid, "lo": lo, "hi": hi,
                "prior_mean": np.exp(prior_log), "prior_lo": np.exp(prior_log - qp),
                "prior_hi": np.exp(prior_log + qp)}))
            if layer == len(depths) // 2:
                fc = forecast.Forecast(steps=steps, mean=mid, lo=lo, hi=hi, observed=k,
                                       final=(float(mid[-1]), float(lo[-1]), float(hi[-1])),
                                       peak_step=tuple(peaks), peak_before_end=0.0,
                                       prior_mean=np.exp(prior_log),
                                       prior_lo=np.exp(prior_log - qp),
                                       prior_hi=np.exp(prior_log + qp))
                figs[q] = (fc, f"{name} layer {layer}: {q} to step {last_step} "
                               "(design prior)")
    return rows, summary, figs, k_step, record


def _forecast_all(run: pd.DataFrame, name: str, last_step: int, table: pd.DataFrame,
                  distance: dict | None, s: ForecastSettings, fs: FitSettings) -> tuple:
    """Every quantity's and layer's forecast: (curve rows, summary per quantity and layer,
    the figure's layers, the last step seen). ForecastRefused when the prior does not
    cover the run."""
    foreign = distance["foreign"] if distance else forecast.UNKNOWN_DISTANCE
    rows, summary, figs = [], {}, {}
    k_step = None
    for q in s.quantities:
        steps_seen, depths, vals = _seen_curves(run, q, last_step)
        k_step = int(steps_seen[-1])
        prior = prior_curves(table, q)
        if len(prior) < forecast.MIN_PRIOR_MODELS:
            raise ForecastRefused(f"the prior has {len(prior)} model(s) with {q!r}; a "
                                  f"forecast needs at least {forecast.MIN_PRIOR_MODELS}")
        prior_u = np.unique(np.concatenate([c[0] for c in prior.values()]))
        steps = np.r_[steps_seen, _future_steps(steps_seen, last_step, prior_u)]
        u = steps / last_step
        summary[q] = {}
        for layer, depth in enumerate(depths):
            samples = forecast.relative_samples(list(prior.values()), float(depth), u)
            if len(samples) < forecast.MIN_PRIOR_MODELS:
                raise ForecastRefused(
                    f"{len(samples)} prior model(s) span the run's relative steps "
                    f"{u[0]:.3g}-1 ({q}, layer {layer}); a forecast needs at least "
                    f"{forecast.MIN_PRIOR_MODELS}")
            fc = forecast.forecast_relative(steps, u, vals[layer], samples, foreign,
                                            s.level)
            fitted = [_asymptote(steps, c, fs) for c in (fc.lo, fc.mean, fc.hi)]
            a = sorted(fitted)
            summary[q][str(layer)] = {
                "final": dict(zip(("value", "lo", "hi"), fc.final, strict=True)),
                "last_seen": float(vals[layer][-1]),
                "asymptote": {"value": fitted[1], "lo": a[0], "hi": a[-1]},
                "peak_step": dict(zip(("value", "lo", "hi"), fc.peak_step, strict=True)),
                "peak_before_last_step": fc.peak_before_end}
            rows.append(pd.DataFrame({
                "quantity": q, "layer": layer, "step": steps.astype(int),
                "seen": np.arange(len(steps)) < fc.observed, "mean": fc.mean, "lo": fc.lo,
                "hi": fc.hi, "prior_mean": fc.prior_mean, "prior_lo": fc.prior_lo,
                "prior_hi": fc.prior_hi}))
            if layer == len(depths) // 2:
                figs[q] = (fc, f"{name} layer {layer}: {q} to step {last_step}")
    return rows, summary, figs, k_step


def record_refusal(run_path: str, out_dir: str, reason: str) -> dict:
    """A run's forecast refused before any forecasting (its planned last step unknown),
    recorded as :func:`forecast_run` records a refusal (``--record-refusal``), and the
    archived forecasts still scored. Returns the summary."""
    check_output_folder(out_dir)
    name = str(read_run(run_path, [])["model"].iloc[0])
    out = Path(out_dir)
    mark_output_folder(out, "madyn forecast --run")
    summary = write_refusal(out, name, None, reason, ForecastSettings().level, None)
    score(run_path, out_dir)
    return summary
