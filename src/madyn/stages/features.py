"""Features stage: fit tables + per-model config.json -> the feature table."""

from __future__ import annotations

import pandas as pd

from madyn.features import build_feature_table, write_feature_table
from madyn.io import read_json
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
