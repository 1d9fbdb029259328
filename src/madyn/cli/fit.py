"""Fit: ``madyn fit`` (every hypothesis on one model's per-layer series, chosen by AICc)."""

from __future__ import annotations

import argparse

from madyn.cli.common import add, json_arg, say

GROUP = "fit"


def _cmd_fit(args: argparse.Namespace) -> int:
    from madyn.settings import FitSettings
    from madyn.stages import fit

    table = fit.run(args.series, args.params_dir, args.out,
                    FitSettings.from_dict(json_arg(args.settings_json)))
    say(f"fit table: {len(table)} rows -> {args.out}")
    return 0


def register(sub) -> list[tuple[str, str]]:
    """Add ``fit``; its (name, one-line help)."""
    c = add(sub, "fit", _cmd_fit, "fit every hypothesis to one model's per-layer series",
            "Fit each layer's ratio/top1/median series with every hypothesis (trust-region "
            "least squares, grid starts), select by AICc. Writes the released layout "
            "params/layer_fit_params_{quantity}.json and a tidy table.",
            example="madyn fit --series results/embedded/series/l2-w32-h2.parquet "
            "--params-dir fits/l2 --out fits/l2.parquet")
    c.add_argument("--series", required=True, help="the model's series Parquet")
    c.add_argument("--params-dir", required=True, help="folder for layer_fit_params_*.json")
    c.add_argument("--out", required=True, help="tidy fit table (Parquet)")
    c.add_argument("--settings-json", help="FitSettings as JSON (params.yaml: fit)")
    return [("fit", "fit every curve hypothesis to a model's series, choose by AICc")]
