"""Predict stage: evaluate the predictors on the feature table, and predict a new
architecture's curves; plus the checks of a user's architecture input (``madyn predict``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.architecture import (
    DESIGN_KEY,
    MAX_LAYERS,
    MAX_WIDTH,
    MIN_WIDTH,
    ArchitectureError,
    architecture,
    check_shape,
    is_architecture,
)
from madyn.io import atomic_path, read_json, write_json
from madyn.predict.evaluation import evaluate as evaluate_table
from madyn.predict.evaluation import feature_importance, ols_summaries, showcase_model
from madyn.predict.features import read_feature_table
from madyn.predict.prediction import predict_architecture
from madyn.settings import PredictSettings

SHAPE_BOUNDS = (f"layers 1-{MAX_LAYERS}, width {MIN_WIDTH}-{MAX_WIDTH} with heads dividing "
                "width, heads 1-width")


class InputError(ValueError):
    """A user's input to the predict stage is unreadable or implausible (one-line message)."""


# ----------------------------------------------------------------------------- inputs

def load_config(path: str) -> dict:
    """A Hugging Face config.json as a dict, its shape checked (InputError naming the file)."""
    try:
        cfg = read_json(path)
    except (OSError, ValueError) as e:
        raise InputError(str(e)) from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: must hold a JSON object (a config.json), got "
                         f"{type(cfg).__name__}")
    try:
        architecture(cfg)
    except ArchitectureError as e:
        raise InputError(f"{path}: {e}") from None
    return cfg


def config_from_shape(layers: int, width: int, heads: int, ff_mult: int | None = None,
                      rotary_pct: float | None = None, vocab_size: int = 512,
                      family: str | None = None, parallel_residual: bool = True) -> dict:
    """A config dict of this shape and block layout (``family``: madyn's trainer families,
    default GPT-NeoX as Pythia); InputError outside the plausible bounds
    (:data:`SHAPE_BOUNDS`), before anything is built."""
    try:
        check_shape(layers, width, heads, explicit_head_dim=False)
    except ArchitectureError as e:
        raise InputError(f"--layers/--width/--heads: {e} (allowed: {SHAPE_BOUNDS})") from None
    if ff_mult is not None and not 1 <= ff_mult <= 64:
        raise InputError(f"--ff-mult {ff_mult} outside 1..64")
    if rotary_pct is not None and not (0 < rotary_pct <= 1):
        raise InputError(f"--rotary-pct {rotary_pct} outside (0, 1]")
    if not 1 <= vocab_size <= 10_000_000:
        raise InputError(f"--vocab-size {vocab_size} outside 1..10000000")
    family = family or "neox"
    if family != "neox" and (rotary_pct or not parallel_residual):
        raise InputError(f"--rotary-pct and --sequential apply to family neox, not {family}")
    from madyn.train.training import ModelSpec, model_config

    spec = ModelSpec(name="query", layers=layers, width=width, heads=heads, family=family,
                     parallel_residual=parallel_residual,
                     **({"ff_mult": ff_mult} if ff_mult else {}),
                     **({"rotary_pct": rotary_pct} if rotary_pct else {}))
    return model_config(spec, vocab_size, 2048, 0).to_dict()


def with_recipe(config: dict, optimizer: str | None, lr: float | None, eps: float | None
                ) -> dict:
    """``config`` with the given training recipe added to its design record
    (:data:`madyn.architecture.DESIGN_KEY`); InputError for an implausible lr or eps."""
    if lr is not None and not (math.isfinite(lr) and 0 < lr <= 10):
        raise InputError(f"--lr {lr} outside (0, 10]")
    if eps is not None and not (math.isfinite(eps) and 0 < eps <= 1):
        raise InputError(f"--eps {eps} outside (0, 1]")
    if eps is not None and optimizer == "sgd":
        raise InputError("--eps applies to AdamW, not --optimizer sgd")
    given = {k: v for k, v in (("optimizer", optimizer), ("lr", lr), ("eps", eps))
             if v is not None}
    if not given:
        return config
    return {**config, DESIGN_KEY: {**(config.get(DESIGN_KEY) or {}), **given}}


def parse_steps(text: str) -> list[int]:
    """Comma-separated non-negative integer steps (InputError naming the bad item)."""
    out = []
    for item in text.split(","):
        try:
            v = int(item.strip())
        except ValueError:
            raise InputError(f"--steps: {item.strip()!r} is not an integer step") from None
        if v < 0:
            raise InputError(f"--steps: {v} is negative")
        out.append(v)
    return out


@dataclass(frozen=True)
class Query:
    """What ``madyn predict`` predicts: the feature table, the architecture (a config
    dict with its design record), the steps (None: :func:`default_steps`), the settings,
    and the design options given (``--family`` ... ``--sequential``), for
    :func:`design_note`."""

    features: str
    config: dict
    steps: list[int] | None
    settings: PredictSettings
    design_options: tuple[str, ...] = ()
    suite: dict | None = None


def query(*, params: str = "params.yaml", settings_json: str | None = None,
          features: str | None = None, config: str | None = None,
          layers: int | None = None, width: int | None = None, heads: int | None = None,
          ff_mult: int | None = None, rotary_pct: float | None = None,
          vocab_size: int = 512, family: str | None = None, sequential: bool = False,
          optimizer: str | None = None, lr: float | None = None, eps: float | None = None,
          steps: str | None = None, suite_json: str | None = None) -> Query:
    """Assemble and check a ``madyn predict`` query from its options: the settings from
    ``settings_json`` (JSON text; then ``features`` is required) or the params file
    ``params`` (``features`` defaulting to its active suite's feature table); the
    architecture from the config.json ``config`` or the shape ``layers``/``width``/``heads``
    (:func:`config_from_shape`), with the recipe added (:func:`with_recipe`); ``steps``
    comma-separated (:func:`parse_steps`). InputError, one line, for any bad or missing
    input, before anything is computed."""
    import json

    from madyn.workflow import params_file, params_values

    suite = None
    if suite_json:
        try:
            suite = json.loads(suite_json)
        except ValueError as e:
            raise InputError(f"--suite-json: {e}") from None
    if settings_json:
        if not features:
            raise InputError("--features is required with --settings-json")
        try:
            settings = PredictSettings.from_dict(json.loads(settings_json))
        except (TypeError, ValueError) as e:
            raise InputError(f"--settings-json: {e}") from None
    else:
        cfg = params_file.load(params)
        settings = PredictSettings.from_dict(params_values.predict_settings(cfg))
        features = features or params_values.feature_table(cfg)
        suite = suite or params_values.active(cfg)
    shape = (layers, width, heads)
    if config:
        arch = load_config(config)
    elif any(v is not None for v in shape):
        if any(v is None for v in shape):
            raise InputError("give all of --layers, --width and --heads")
        arch = config_from_shape(*shape, ff_mult, rotary_pct, vocab_size, family,
                                 not sequential)
    else:
        raise InputError("give --config config.json, or --layers, --width and --heads")
    arch = with_recipe(arch, optimizer, lr, eps)
    step_list = parse_steps(steps) if steps else None
    if not Path(features).exists():
        raise InputError(f"no feature table at {features}: run the workflow first "
                         "(snakemake --cores N), or pass --features")
    given = tuple(f"--{k}" for k, v in (("family", family), ("optimizer", optimizer),
                                        ("lr", lr), ("eps", eps)) if v)
    return Query(features, arch, step_list, settings,
                 given or (("--sequential",) if sequential else ()), suite)


def design_note(q: Query, summary: dict) -> str | None:
    """A note when design options were given but the predictor ignores them (a
    ``predict_model`` on relative depth alone: the summary records no features)."""
    if not q.design_options or summary.get("features"):
        return None
    return (f"predict_model {q.settings.predict_model} uses relative depth alone; "
            f"{' '.join(q.design_options)} did not change the prediction (set "
            "predict.predict_model to a regressor, e.g. xgb)")


def default_steps(feature_table_path: str) -> list[int]:
    """0 and 60 log-spaced steps up to the training data's last step."""
    last = int(pd.read_parquet(feature_table_path, columns=["last_step"])["last_step"].max())
    return sorted({0, *np.unique(np.round(np.geomspace(1, last, 60))).astype(int).tolist()})


# ----------------------------------------------------------------------------- outputs

def _read_series(paths: list[str]) -> pd.DataFrame:
    """Observed series from Parquet files: fit-input form, or measured series (converted)."""
    from madyn.measure.series import fit_input

    frames = []
    for p in paths:
        df = pd.read_parquet(p)
        frames.append(df if "quantity" in df.columns else fit_input(df))
    return pd.concat(frames, ignore_index=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")


def evaluate(feature_table_path: str, series_paths: list[str],
             settings: PredictSettings | None, out_metrics: str, out_dir: str,
             figures: bool = True, workers: int = 1) -> dict:
    """Evaluate the predictors (the held-out groups in ``workers`` processes) and write:
    the metrics JSON ``out_metrics``; in ``out_dir``
    ``ols_summary.txt``, ``study_predictions.csv``, ``lomo_predictions.csv``,
    ``lomo_curves.csv``, ``feature_importance.csv`` and (``figures``) the PNG figures of
    :mod:`madyn.report.plots_predict`. Returns the metrics."""
    s = settings or PredictSettings()
    table = read_feature_table(feature_table_path)
    series = _read_series(series_paths) if series_paths else None
    metrics, extras = evaluate_table(table, series, s, return_extras=True,
                                     workers=workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "ols_summary.txt") as tmp:
        tmp.write_text(ols_summaries(table))
    imp = feature_importance(table, s)
    _write_csv(imp, out / "feature_importance.csv")
    for name in ("study_predictions", "lomo_predictions", "lomo_curves"):
        _write_csv(extras.get(name, pd.DataFrame()), out / f"{name}.csv")
    if figures:
        from madyn.report import plots_predict as pp

        if "lomo_predictions" in extras:
            pp.plot_pred_vs_fitted(extras["lomo_predictions"], out / "lomo_pred_vs_fitted.png")
        pp.plot_feature_importance(imp, out / "feature_importance.png")
        if "lomo_curves" in extras and not extras["lomo_curves"].empty:
            pp.plot_heldout_curves(extras["lomo_curves"], showcase_model(table),
                                   out / "lomo_heldout_curves.png")
    write_json(out_metrics, metrics)
    return metrics


# A query's shape axes, checked against the range of the models the feature table holds.
RANGE_AXES = {"layers": "num_hidden_layers", "width": "hidden_size",
              "heads": "num_attention_heads"}


def outside_training_range(table: pd.DataFrame, arch: dict) -> dict[str, dict]:
    """The axes (layers, width, heads) on which architecture ``arch`` (from
    :func:`madyn.architecture.architecture`) lies outside the range of the feature table's
    models: ``{axis: {"query", "min", "max"}}``, empty when it lies inside on every axis."""
    out = {}
    for axis, col in RANGE_AXES.items():
        if col not in table.columns or table.empty:
            continue
        lo, hi, q = int(table[col].min()), int(table[col].max()), int(arch[col])
        if not lo <= q <= hi:
            out[axis] = {"query": q, "min": lo, "max": hi}
    return out


def extrapolation_warning(outside: dict[str, dict]) -> str | None:
    """One line naming each axis outside the training range and by how much (None if none)."""
    if not outside:
        return None
    parts = []
    for axis, r in outside.items():
        span = f"{r['min']}" if r["min"] == r["max"] else f"{r['min']}-{r['max']}"
        far = (f"{r['query'] / r['max']:.3g}x the largest" if r["query"] > r["max"]
               else f"{r['min'] / r['query']:.3g}x below the smallest")
        parts.append(f"{axis} {r['query']} (trained on {span}: {far})")
    return ("outside the training range of the feature table: " + ", ".join(parts)
            + "; the prediction extrapolates")


LAYOUT_AXES = ("f_parallel_residual", "f_gated_mlp", "f_qk_norm", "f_post_norm")


def recipe_coverage(table: pd.DataFrame, config: dict, last_step: int | None) -> dict:
    """Whether the training models of the feature table cover the query's recipe:
    ``outside`` (axis -> {query, min, max} or, for the block layout, {query, trained}):
    its family's block layout (parallel residual, gated MLP, qk-norm, post-norm) among
    theirs, its peak lr within their range, its planned ``last_step`` within their last
    steps, its vocabulary within theirs; ``unknown``: the axes the query does not state
    (lr without --lr or a recipe in the config; the last step without --last-step)."""
    from madyn.architecture import design
    from madyn.predict.features import design_features

    out: dict = {"outside": {}, "unknown": []}
    if table.empty or "model" not in table:
        return out
    models = table.groupby("model").first()
    feats = design_features(design(config))
    layout = tuple(feats[k] for k in LAYOUT_AXES)
    trained = {tuple(float(r[k]) for k in LAYOUT_AXES) for _, r in models.iterrows()
               if all(k in r for k in LAYOUT_AXES)}
    if trained and layout not in trained:
        out["outside"]["block_layout"] = {
            "query": dict(zip(LAYOUT_AXES, layout, strict=True)),
            "trained": [dict(zip(LAYOUT_AXES, t, strict=True)) for t in sorted(trained)]}
    query = {"lr": 10 ** feats["f_log_lr"] if np.isfinite(feats["f_log_lr"]) else None,
             "last_step": last_step,
             "vocab_size": config.get("vocab_size")}
    cols = {"lr": 10 ** models["f_log_lr"] if "f_log_lr" in models else None,
            "last_step": models.get("last_step"), "vocab_size": models.get("vocab_size")}
    for axis, q in query.items():
        col = cols[axis]
        if col is None or not np.isfinite(np.asarray(col, float)).any():
            continue
        if q is None:
            out["unknown"].append(axis)
            continue
        lo, hi = float(np.nanmin(col)), float(np.nanmax(col))
        if not lo * (1 - 1e-9) <= float(q) <= hi * (1 + 1e-9):
            out["outside"][axis] = {"query": float(q), "min": lo, "max": hi}
    return out


def recipe_warning(cov: dict) -> str | None:
    """One line naming what of the query's recipe its training models do not cover."""
    parts = []
    for axis, r in cov.get("outside", {}).items():
        if axis == "block_layout":
            on = [k[2:] for k, v in r["query"].items() if v == 1.0]
            parts.append(f"block layout ({', '.join(on) or 'plain'}) not among the "
                         f"training models' ({len(r['trained'])} layout(s))")
        else:
            parts.append(f"{axis} {r['query']:.4g} (trained on {r['min']:.4g}-"
                         f"{r['max']:.4g})")
    if not parts:
        return None
    return "the training models do not cover the query's recipe: " + "; ".join(parts)


def suite_files(feature_table_path: str) -> dict[str, list[str] | str]:
    """The files beside a suite's feature table (``<results>/features/...``): its series,
    configs and design_lodo metrics."""
    root = Path(feature_table_path).resolve().parents[1]
    return {"series": sorted(map(str, (root / "series").glob("*.parquet"))),
            "configs": sorted(map(str, (root / "configs").glob("*.json"))),
            "design_lodo": str(root / "metrics" / "design_lodo.json")}


def _predict_auto(feature_table_path: str, config: dict, steps: list[int],
                  s: PredictSettings, suite: dict | None, last_step: int | None
                  ) -> tuple[pd.DataFrame | None, dict]:
    """``predict_model: auto``: the curve-space predictor the suite's nested
    leave-one-design-out chose (its design_lodo.json; else a leave-one-design-out run
    now), trained on the suite's series beside the feature table, on time relative to
    ``last_step`` (default: the suite's last step). (None, {fallback: why}) when the
    series or configs are not there."""
    from madyn.predict.design_predictors import KINDS
    from madyn.stages import design_lodo
    from madyn.workflow.params_values import design_labels

    files = suite_files(feature_table_path)
    if len(files["series"]) < 3 or not files["configs"]:
        return None, {"fallback": "predict_model auto needs the suite's series and configs "
                      f"beside the feature table ({Path(files['design_lodo']).parents[1]}); "
                      "used mean_curve"}
    kind, measured = None, None
    if Path(files["design_lodo"]).is_file():
        doc = read_json(files["design_lodo"]).get("quantities", {}).get(s.quantity)
        if doc and doc.get("winner") in KINDS:
            kind = doc["winner"]
            # the honest error of the choice: the nested selection's, on unseen designs
            measured = {**(doc["per_kind"].get("nested") or doc["per_kind"][kind]),
                        "winner_own_lodo": doc["per_kind"][kind],
                        "mean_log": doc["per_kind"].get("mean_log")}
    designs = design_labels(suite) if suite else {}
    recipes = design_lodo.suite_recipes(suite) if suite else {}
    arch_cfg = config if not is_architecture(config) else None
    if arch_cfg is None:
        return None, {"fallback": "predict_model auto needs a config, not an architecture"}
    from madyn.architecture import DESIGN_KEY

    last = float(last_step or max(steps))
    try:
        curves, summary = design_lodo.predict_design(
            files["series"], files["configs"], designs, recipes, arch_cfg,
            dict(arch_cfg.get(DESIGN_KEY) or {}), np.asarray(steps, float), last,
            s.quantity, kind, measured, level=(s.interval[1] - s.interval[0]) / 100,
            seed=s.seed)
    except ValueError as e:
        raise InputError(str(e)) from None
    summary["architecture"] = architecture(arch_cfg)
    for la in summary["layers"]:  # the keys madyn predict prints
        la["final_ratio"] = la.get(f"final_{s.quantity}")
        la["final_ratio_lo"] = la.get(f"final_{s.quantity}_lo")
        la["final_ratio_hi"] = la.get(f"final_{s.quantity}_hi")
    return curves, summary


def model_line(summary: dict) -> str:
    """Which predictor ``madyn predict`` used and its measured error on unseen designs."""
    m = summary.get("measured_lodo") or {}

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f} %"

    if not m:
        return f"model {summary.get('model_type')}"
    r2 = m.get("r2_median")
    return (f"model {summary.get('model_type')} (chosen by {summary.get('chosen_by')}; "
            f"on unseen designs: median curve R² {r2:.3f}, final-value error "
            f"{pct(m.get('final_rel_err_mean'))} mean, over {m.get('n_designs')} designs)")


def predict(feature_table_path: str, config: dict, steps: list[int] | None,
             settings: PredictSettings | None, out_dir: str,
             last_step: int | None = None, suite: dict | None = None) -> dict:
    """Predict a new architecture (``config``: a HF config dict or an architecture dict)
    at ``steps`` (None: :func:`default_steps`); write ``curves.csv``, ``summary.json`` and
    ``prediction.png`` in ``out_dir``, all at once (:func:`madyn.io.output_folder`:
    ``out_dir`` new, empty, or madyn's own); returns the summary. A query outside the training
    range (:func:`outside_training_range`) is recorded in the summary's ``extrapolation``
    and ``warning``; one whose recipe (block layout, peak lr, schedule length, vocabulary)
    the training models do not cover (:func:`recipe_coverage`) in ``recipe_coverage`` and
    ``recipe_warning``."""
    from madyn.io import check_output_folder, output_folder

    s = settings or PredictSettings()
    check_output_folder(out_dir)
    table = read_feature_table(feature_table_path)
    steps = default_steps(feature_table_path) if steps is None else steps
    curves = None
    if s.predict_model == "auto":
        curves, summary = _predict_auto(feature_table_path, config, steps, s, suite,
                                        last_step)
    if curves is None:
        fallback = summary.get("fallback") if s.predict_model == "auto" else None
        if fallback:
            s = dataclasses.replace(s, predict_model="mean_curve")
        curves, summary = predict_architecture(table, config, steps, s)
        if fallback:
            summary["fallback"] = fallback
    arch = config if is_architecture(config) else architecture(config)
    summary["extrapolation"] = outside_training_range(table, arch)
    warning = extrapolation_warning(summary["extrapolation"])
    if warning:
        summary["warning"] = warning
    summary["recipe_coverage"] = recipe_coverage(table, config, last_step)
    note = recipe_warning(summary["recipe_coverage"])
    if note:
        summary["recipe_warning"] = note
    from madyn.report import plots_predict as pp

    with output_folder(out_dir, "madyn predict") as out:
        _write_csv(curves, out / "curves.csv")
        write_json(out / "summary.json", summary)
        pp.plot_prediction(curves, summary, out / "prediction.png")
    return summary


def summary_lines(summary: dict) -> list[str]:
    """One line per layer of a prediction summary (what ``madyn predict`` prints)."""
    def num(x: float | None) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"

    return [f"layer {r['layer']}: final ratio {num(r['final_ratio'])} "
            f"[{num(r['final_ratio_lo'])}, {num(r['final_ratio_hi'])}], peak step "
            f"{num(r['peak_step'])}" for r in summary.get("layers", [])]
