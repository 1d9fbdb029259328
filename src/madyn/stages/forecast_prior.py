"""The forecast's priors: a suite's models as a compact prior file (make-prior), reading
priors back (committed, given or a suite's series), and the design prior (a suite's
design_lodo choice stored with its models' design features)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.io import atomic_path, write_json
from madyn.predict import forecast

# the committed priors, read when --prior is not given: a design prior (the atlas's) for a
# run inside its design space, every other one (the relative-time priors) otherwise
DEFAULT_PRIOR_DIR = Path(__file__).resolve().parents[3] / "data" / "prior"


PRIOR_COLUMNS = ["model", "quantity", "layer", "depth", "step", "u", "value"]


def prior_rows(series: pd.DataFrame, quantities, last_step: int | None = None
                ) -> pd.DataFrame:
    """A model's series (long layout) as prior rows: quantity, layer, relative depth
    (layer + 1) / L, step, relative step u = step / last step, value (the mean)."""
    d = series[series["statistic"].isin(list(quantities))]
    n_layers = int(series["layer"].max()) + 1
    last = float(last_step or series["step"].max())
    return pd.DataFrame({
        "model": str(series["model"].iloc[0]), "quantity": d["statistic"].to_numpy(),
        "layer": d["layer"].to_numpy(int), "depth": (d["layer"].to_numpy(float) + 1) / n_layers,
        "step": d["step"].to_numpy(int), "u": d["step"].to_numpy(float) / last,
        "value": d["mean"].to_numpy(float)})


def eval_batch(series: pd.DataFrame, tokens: str | None = None) -> dict:
    """The evaluation batch of a series: ``n_seqs`` (the most sequences of a row),
    ``seq_len`` and ``tokens_sha256`` (from the tokens ``.npy``, when given)."""
    from madyn.io import sha256_file

    out: dict = {}
    if "n" in series:
        out["n_seqs"] = int(series["n"].max())
    if tokens:
        arr = np.load(tokens, mmap_mode="r", allow_pickle=False)
        out["n_seqs"], out["seq_len"] = int(arr.shape[0]), int(arr.shape[1])
        out["tokens_sha256"] = sha256_file(tokens)
    return out


def make_prior(series_paths: list[str], out: str, config_paths: list[str] | None = None,
               tokens: str | None = None, train: dict | None = None,
               models: list[dict] | None = None, suite: str | None = None,
               quantities=forecast.FORECAST_QUANTITIES, evaluation: dict | None = None,
               design_lodo: str | None = None) -> dict:
    """Write a compact prior (``out``, Parquet: one row per model, quantity, layer and
    step with relative depth and relative step u = step / last step) and its manifest
    (``out`` with ``.json``: per model its family, vocab_size, n_layers (from
    ``config_paths``, matched by file stem), last_step, schedule and peak lr (from
    ``train``, a suite's train section, and ``models``, its entries), eval batch (the
    series' sequences, ``tokens``' shape and sha256, then ``evaluation``'s keys n_seqs,
    seq_len); the suite and package versions). With ``design_lodo`` (a suite's
    design_lodo.json): per model also its ``design`` label and design ``features``
    (:func:`madyn.predict.design_curves.model_features`), and ``design_prior``: per
    quantity the predictor the nested leave-one-design-out chose and the intervals'
    conformal calibration, so that a run is forecast from its design's predicted curve.
    Returns the manifest."""
    import importlib.metadata as md

    from madyn.io import read_json

    configs = {Path(p).stem: read_json(p) for p in config_paths or []}
    entries = {str(e.get("name")): e for e in models or []}
    train = dict(train or {})
    rows, recipes = [], {}
    for p in series_paths:
        s = pd.read_parquet(p)
        name = str(s["model"].iloc[0])
        cfg, entry = configs.get(name, {}), entries.get(name, {})
        last = int(s["step"].max())
        rows.append(prior_rows(s, quantities, last))
        r = {"family": cfg.get("model_type"), "vocab_size": cfg.get("vocab_size"),
             "n_layers": int(s["layer"].max()) + 1, "last_step": last,
             "schedule": entry.get("schedule", train.get("schedule", "cosine" if train
                                                         else None)),
             "lr": entry.get("lr", train.get("lr")),
             "optimizer": entry.get("optimizer", "adamw" if train else None),
             "eval": {**eval_batch(s, tokens), **{
                 k: v for k, v in (evaluation or {}).items() if k in ("n_seqs", "seq_len")}}}
        recipes[name] = {k: v for k, v in r.items() if v is not None}
        if design_lodo and cfg:
            from madyn.predict.design_curves import model_features
            from madyn.stages.design_lodo import suite_recipes
            from madyn.workflow.params_values import design_label

            rec = suite_recipes({"train": train, "models": [entry or {"name": name}]})
            recipes[name]["design"] = design_label(entry) if entry else name
            recipes[name]["features"] = model_features(cfg, last, rec.get(name))
    table = pd.concat(rows, ignore_index=True)[PRIOR_COLUMNS]
    manifest = {"made_by": "madyn step make-prior", "suite": suite,
                "made_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "quantities": list(quantities), "models": recipes,
                "train": train, "rows": len(table),
                "versions": {k: md.version(k) for k in ("madyn", "torch", "transformers")
                             if _installed(k)}}
    if design_lodo:
        doc = read_json(design_lodo)
        fc = doc.get("forecast", {})
        manifest["design_prior"] = {
            "level": fc.get("level"),
            "quantities": {q: {"kind": v["winner"],
                               "lodo": v["per_kind"][v["winner"]],
                               "calibration": fc.get(q, {}).get("calibration", {}),
                               "weights": fc.get(q, {}).get("weights", {})}
                           for q, v in doc["quantities"].items()}}
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    write_json(Path(out).with_suffix(".json"), manifest)
    return manifest


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def load_prior(prior: list[str] | None, series_paths: list[str] | None, exclude: str,
               quantities) -> tuple[pd.DataFrame, dict, str]:
    """The prior's rows (PRIOR_COLUMNS), per model its recipe, and where it came from:
    ``series_paths`` (series Parquets; recipes know only their last step) when given, else
    the make-prior files ``prior`` (default: the committed relative-time ones,
    :func:`default_priors`) and
    their manifests (a model name two of them share is prefixed with its file's stem).
    The run itself (``exclude``) is left out."""
    from madyn.io import read_json

    if series_paths:
        frames = [pd.read_parquet(p) for p in series_paths]
        frames = [f for f in frames if str(f["model"].iloc[0]) != exclude]
        rows = [prior_rows(f, quantities) for f in frames]
        table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
            columns=PRIOR_COLUMNS)
        recipes = {str(f["model"].iloc[0]): {"last_step": int(f["step"].max()),
                                             "eval": eval_batch(f)} for f in frames}
        return table, recipes, f"{len(frames)} series files"
    paths = [Path(p) for p in prior] if prior else default_priors()
    if not paths:
        raise forecast.ForecastError(f"no prior in {DEFAULT_PRIOR_DIR} (make one with madyn "
                                     "step make-prior, or pass --series)")
    tables, recipes = [], {}
    for path in paths:
        if not path.is_file():
            raise forecast.ForecastError(f"--prior {path}: no such file (make one with madyn "
                                         "step make-prior, or pass --series)")
        table = pd.read_parquet(path)
        missing = [c for c in PRIOR_COLUMNS if c not in table]
        if missing:
            raise forecast.ForecastError(f"--prior {path}: not a madyn prior (no column(s) "
                                         f"{missing})")
        man = path.with_suffix(".json")
        models = dict(read_json(man).get("models", {})) if man.is_file() else {}
        if set(table["model"].unique()) & set(recipes):  # a name in two priors
            table = table.assign(model=path.stem + "/" + table["model"].astype(str))
            models = {f"{path.stem}/{m}": r for m, r in models.items()}
        tables.append(table[PRIOR_COLUMNS])
        recipes.update(models)
    table = pd.concat(tables, ignore_index=True)
    table = table[table["model"] != exclude]
    return table, {m: r for m, r in recipes.items() if m != exclude}, ", ".join(
        map(str, paths))


def prior_curves(table: pd.DataFrame, quantity: str) -> dict:
    """model -> (relative steps, relative depths, L x S values) of ``quantity``."""
    out = {}
    for m, d in table[table["quantity"] == quantity].groupby("model", sort=True):
        wide = d.pivot_table(index="depth", columns="u", values="value").sort_index()
        out[str(m)] = (wide.columns.to_numpy(float), wide.index.to_numpy(float),
                       wide.to_numpy(float))
    return out


def _committed(design: bool) -> list[Path]:
    """The ``DEFAULT_PRIOR_DIR`` parquets that are (``design``) or are not design priors
    (make-prior --design-lodo: their manifest carries ``design_prior``)."""
    from madyn.io import read_json

    return [p for p in sorted(DEFAULT_PRIOR_DIR.glob("*.parquet"))
            if design == bool(p.with_suffix(".json").is_file()
                              and read_json(p.with_suffix(".json")).get("design_prior"))]


def default_priors() -> list[Path]:
    """The committed relative-time priors (every ``DEFAULT_PRIOR_DIR`` parquet but the
    design priors): a forecast given no prior reads them for a run outside the committed
    design prior's design space (:func:`outside_design_space`)."""
    return _committed(design=False)


def default_design_priors() -> list[Path]:
    """The committed design priors (the atlas's): a forecast given no prior uses the first
    for a run inside its design space."""
    return _committed(design=True)


# a design feature as a person states it: feature -> (name, its value from the feature's)
FEATURE_NAMES = {
    "x_log2_width": ("width", lambda v: 2 ** v), "x_log2_layers": ("layers", lambda v: 2 ** v),
    "x_log_params": ("parameters", lambda v: 10 ** v), "x_log_lr": ("peak lr", lambda v: 10 ** v),
    "x_log_eps": ("Adam eps", lambda v: 10 ** v), "x_log_steps": ("steps", lambda v: 10 ** v),
    "x_log_1m_beta2": ("beta2", lambda v: 1 - 10 ** v),
    "x_log2_batch": ("batch size", lambda v: 2 ** v)}
RANGE_TOL = 1e-6  # a feature this far beyond the prior's range (in its own units) is inside


def _named(feature: str, v: float) -> tuple[str, float]:
    """(what a design feature is called, its value as a person states it)."""
    name, back = FEATURE_NAMES.get(feature, (feature.removeprefix("x_"), float))
    return name, float(back(v))


def outside_design_space(manifest: dict, features: dict, run_eval: dict,
                         vocab_size: int | None) -> list[str]:
    """Why a run is outside a design prior's design space, one short reason each (empty:
    inside): it was measured on another evaluation batch than the prior's models (n_seqs
    x seq_len; unknown counts as another: the absolute levels depend on it), its
    vocabulary size is not theirs, or one of its design ``features``
    (:func:`madyn.predict.design_curves.model_features`) lies outside the range the
    prior's models span (each feature all of them state; one the run does not state is
    imputed by the forecast, not judged here)."""
    models = list(manifest["models"].values())
    out = []
    keys = ("n_seqs", "seq_len")
    batches = {tuple((m.get("eval") or {}).get(k) for k in keys) for m in models}
    mine = tuple(run_eval.get(k) for k in keys)
    # a component the prior does not state constrains nothing
    if not any(all(b is None or b == r for b, r in zip(batch, mine, strict=True))
               for batch in batches):
        def said(b: tuple) -> str:
            return " x ".join("?" if x is None else str(x) for x in b)

        theirs = " or ".join(sorted(map(said, batches)))
        tell = " (give --run-tokens)" if None in mine else ""
        out.append(f"evaluation batch {said(mine)}, the prior's {theirs} (sequences x "
                   f"tokens){tell}")
    vocabs = sorted({m.get("vocab_size") for m in models} - {None})
    if vocabs and vocab_size not in vocabs:
        out.append(f"vocabulary {vocab_size}, the prior's {', '.join(map(str, vocabs))}")
    table = pd.DataFrame([m["features"] for m in models], dtype=float)
    for c in table.columns:
        col = table[c].to_numpy(float)
        v = features.get(c)
        if (v is None or not np.isfinite(v) or not np.isfinite(col).all()
                or (c == "x_log_eps" and features.get("x_sgd") == 1.0)):  # SGD: no eps
            continue
        lo, hi = float(col.min()), float(col.max())
        if v < lo - RANGE_TOL or v > hi + RANGE_TOL:
            name, x = _named(c, v)
            a, b = sorted((_named(c, lo)[1], _named(c, hi)[1]))
            out.append(f"{name} {x:.4g}, the prior's {a:.4g}" + (f"-{b:.4g}" if b > a else ""))
    return out


def design_prior(prior: list[str] | None) -> dict | None:
    """The first of the priors ``prior`` whose manifest carries a ``design_prior``
    (make-prior --design-lodo): {path, manifest, table}; None if none."""
    from madyn.io import read_json

    for path in [Path(p) for p in prior or []]:
        man = path.with_suffix(".json")
        if not (path.is_file() and man.is_file()):
            continue
        doc = read_json(man)
        if doc.get("design_prior") and all("features" in m for m in doc["models"].values()):
            return {"path": path, "manifest": doc, "table": pd.read_parquet(path)}
    return None


def design_data(table: pd.DataFrame, manifest: dict, quantity: str):
    """A design prior's rows of ``quantity`` (:class:`madyn.predict.design_curves.
    DesignData`) from its table and manifest."""
    from madyn.predict import design_curves as dc

    curves = {}
    for m, d in table[table["quantity"] == quantity].groupby("model", sort=True):
        wide = d.pivot_table(index="layer", columns="step", values="value").sort_index()
        n = int(wide.index.max()) + 1
        curves[str(m)] = (wide.columns.to_numpy(float), (wide.index.to_numpy(float) + 1) / n,
                          wide.to_numpy(float))
    models = manifest["models"]
    feats = pd.DataFrame.from_dict({m: models[m]["features"] for m in curves}, orient="index")
    return dc.design_data(curves, {m: models[m].get("design", m) for m in curves}, feats)
