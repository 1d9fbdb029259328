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

# the committed priors (every make-prior file there is read when --prior is not given)
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
    the make-prior files ``prior`` (default: every committed one in DEFAULT_PRIOR_DIR) and
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


def default_priors() -> list[Path]:
    """The committed priors a forecast uses when given none: every ``DEFAULT_PRIOR_DIR``
    parquet except design priors (make-prior --design-lodo: the atlas's). Those are opt-in
    (``--prior data/prior/atlas.parquet``): on a 600-step cosine Llama and a 400-step linear
    Qwen3 forecast from 25 %, the atlas design prior's final error was 38 % and 33 %
    against the last value's 26 % and 12 %, while these carry the last value
    (tests/test_forecast_run.py's slow acceptance scenario); on the 27 interventions runs
    its median forecasts were 2-3x off with 68 % coverage (benchmarks/prior_transfer.py;
    docs/forecasting.md)."""
    from madyn.io import read_json

    return [p for p in sorted(DEFAULT_PRIOR_DIR.glob("*.parquet"))
            if not (p.with_suffix(".json").is_file()
                    and read_json(p.with_suffix(".json")).get("design_prior"))]


def design_prior(prior: list[str] | None) -> dict | None:
    """The first of the priors ``prior`` (given explicitly: design priors are opt-in, see
    :func:`default_priors`) whose manifest carries a ``design_prior`` (make-prior
    --design-lodo): {path, manifest, table}; None if none."""
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
