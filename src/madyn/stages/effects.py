"""Effects stage: each design against the base design, and kurtosis vs cos_sim."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from madyn.io import atomic_path, jsonable, write_json
from madyn.predict.effects import (
    QUANTITIES,
    TABLE_COLUMNS,
    effect_table,
    effects_json,
    kurtosis_cos_association,
    model_quantities,
)


def _by_stem(paths: list[str], what: str) -> dict[str, str]:
    """model (file stem) -> path; ValueError naming a repeated model."""
    out: dict[str, str] = {}
    for p in paths:
        stem = Path(p).stem
        if stem in out:
            raise ValueError(f"{what}: model {stem!r} given twice ({out[stem]}, {p})")
        out[stem] = p
    return out


def _write_csv(table: pd.DataFrame, path: str) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def run(series_paths: list[str], fit_paths: list[str], designs: dict[str, str],
        base: str | None, out_json: str, out_csv: str, out_png: str | None,
        n_boot: int, seed: int) -> dict:
    """Read the series and fit Parquet files (model name = file stem), write the effect
    summary JSON, the effect table CSV (:data:`madyn.predict.effects.TABLE_COLUMNS`) and the
    forest figure PNG, each atomically; returns the JSON object (that of
    :func:`madyn.predict.effects.effects_json` plus ``per_model``: model -> quantity -> value).

    ``designs``: model -> design label, for every model given. ``base`` None (a suite
    without a base design): only the kurtosis-cos_sim association is computed; the JSON
    says why the effects were skipped, the CSV has only its header, no figure is drawn.
    ValueError naming the file, model or label at fault.
    """
    series_files = _by_stem(series_paths, "--series")
    series = {m: pd.read_parquet(p) for m, p in series_files.items()}
    association = kurtosis_cos_association(series)
    if base is None:
        out = {"base_design": None,
               "skipped": "no base_design: effects need a base design to compare with",
               "association": association}
        write_json(out_json, out)
        _write_csv(pd.DataFrame(columns=TABLE_COLUMNS), out_csv)
        return out
    fit_files = _by_stem(fit_paths, "--fits")
    if set(fit_files) != set(series_files):
        odd = sorted(set(fit_files) ^ set(series_files))
        raise ValueError(f"series and fits name different models: {', '.join(odd)}")
    rows = []
    for m, s in series.items():
        try:
            rows.append({"model": m, **model_quantities(s, pd.read_parquet(fit_files[m]))})
        except ValueError as e:
            raise ValueError(f"{m}: {e}") from None
    per_model = pd.DataFrame(rows, columns=["model", *QUANTITIES])
    table = effect_table(per_model, designs, base, n_boot=n_boot, seed=seed)
    out = effects_json(table, association, base, designs)
    out["per_model"] = jsonable(per_model.set_index("model").to_dict("index"))
    write_json(out_json, out)
    _write_csv(table, out_csv)
    if out_png:
        from madyn.report.plots_effects import plot_effects

        plot_effects(table, out_png, base=base)
    return out


def summary_line(out: dict, out_json: str) -> str:
    """The line ``madyn effects`` prints: the kurtosis-cos_sim association of ``out`` (the
    object :func:`run` returns) and where the effects went."""
    a = out["association"]
    rho = "n/a" if a["rho"] is None or a["rho"] != a["rho"] else f"{a['rho']:.3f}"
    return (f"kurtosis vs cos_sim: Spearman rho {rho} over {a['n']} (model, layer) "
            f"pairs; effects -> {out_json}")
