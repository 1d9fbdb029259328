"""Features stage: each model's config.json (with its design record), then fit tables +
the config.json files -> the feature table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from madyn.io import read_json, write_json
from madyn.predict.features import build_feature_table, write_feature_table
from madyn.settings import PredictSettings


def run(fit_paths: list[str], config_paths: dict[str, str], out_parquet: str, out_csv: str,
        settings: PredictSettings | None = None) -> pd.DataFrame:
    """Build the feature table of ``settings.parametrisation`` / ``settings.quantity`` from
    fit tables (Parquet) and ``{model: config.json path}``; write Parquet and CSV; return
    it."""
    s = settings or PredictSettings()
    fit = pd.concat([pd.read_parquet(p) for p in fit_paths], ignore_index=True)
    configs = {m: read_json(p) for m, p in config_paths.items()}
    table = build_feature_table(fit, configs, s.parametrisation, s.quantity)
    write_feature_table(table, out_parquet, out_csv)
    return table


def config_json(out: str, source: str | None = None, revision: str | None = None,
                arch: dict | None = None, design: dict | None = None) -> dict:
    """Write a model's ``config.json`` to ``out`` and return it: that of checkpoint folder
    or hub repo id ``source`` (at ``revision``), or, for a released model without one, the
    GPT-NeoX config of its suite entry ``arch`` (name, layers, width, heads, vocab_size[,
    ff_mult, rotary_pct]). The design record ``design`` (label and known recipe), updated by
    a madyn checkpoint's own record of its recipe, is kept under
    :data:`madyn.architecture.DESIGN_KEY`. ValueError when neither source nor arch is
    given."""
    from madyn.architecture import DESIGN_KEY
    from madyn.measure.checkpoints import model_config
    from madyn.train import training

    if arch is not None:  # a released model without config.json: its suite entry
        spec = {k: v for k, v in arch.items() if k in training.ModelSpec.__dataclass_fields__}
        cfg = training.model_config(training.ModelSpec(**spec), arch["vocab_size"], 2048,
                                    0).to_dict()
    elif source:
        cfg = model_config(source, revision)
    else:
        raise ValueError("give SOURCE (checkpoint folder or hub repo id) or --arch-json")
    record = dict(design or {})
    if source and Path(source, "madyn_checkpoint.json").is_file():
        record.update(training.trained_recipe(Path(source, "madyn_checkpoint.json")))
    if record:
        cfg[DESIGN_KEY] = record
    write_json(out, cfg)
    return cfg
