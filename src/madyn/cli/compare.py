"""Compare and report: ``madyn compare`` (the readable ``dvc exp show``) and ``madyn
effects`` (each design against the base design, bootstrap over seeds)."""

from __future__ import annotations

import argparse

from madyn.cli.common import add, model_map, outs, positive_int, say

GROUP = "compare and report"


def _cmd_compare(args: argparse.Namespace) -> int:
    import subprocess

    from madyn.workflow import params_file
    from madyn.workflow.dvc_stages import compare_drop
    from madyn.workflow.run import tool

    suite = params_file.load(args.params)["suite"]
    flags = [f"--{f.replace('_', '-')}" for f in ("only_changed", "csv", "md")
             if getattr(args, f)]
    return subprocess.call([tool("dvc"), "exp", "show", "--drop", compare_drop(suite),
                            *flags])


def _cmd_effects(args: argparse.Namespace) -> int:
    from madyn.stages import effects

    out = effects.run(args.series, args.fits, model_map(args.design, "--design"), args.base,
                      args.out_json, args.out_csv, args.out_png, args.n_boot, args.seed)
    say(effects.summary_line(out, args.out_json))
    return 0


def register(sub) -> list[tuple[str, str]]:
    """Add ``compare`` and ``effects``; their (name, one-line help)."""
    c = add(sub, "compare", _cmd_compare, "dvc exp show: headline metrics and the params "
             "a researcher changes",
             "Run `dvc exp show` without the dependency columns (code and data hashes) and "
             "without the params of the suites that are not active (DVC shows the whole "
             "params.yaml): the headline metrics and the active suite's and phases' params.",
             example="madyn compare --only-changed")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--only-changed", action="store_true",
                   help="only the columns that differ between the rows (dvc's option)")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV (dvc's option)")
    fmt.add_argument("--md", action="store_true", help="Markdown table (dvc's option)")

    c = add(sub, "effects", _cmd_effects, "each design against the base design (bootstrap "
             "over seeds) and the kurtosis-cos_sim association",
             "Reduce every model to final_ratio, asymptote, peak_step (winning ratio fit) and "
             "final kurtosis, sink mass, cos_sim (series), each the median over layers; "
             "compare each design's seed mean with the base design's (difference and ratio, "
             "percentile bootstrap over seeds). Writes JSON, CSV and a forest figure. "
             "Without --base only the association is computed.",
             example="madyn effects --series results/interventions/series/*.parquet "
             "--design m1=base m2=bos --base base --out-json e.json --out-csv e.csv")
    c.add_argument("--series", nargs="+", required=True, help="series .parquet (model = stem)")
    c.add_argument("--fits", nargs="*", default=[], help="fit tables .parquet (model = stem)")
    c.add_argument("--design", nargs="*", default=[], metavar="MODEL=LABEL",
                   help="design label of every model")
    c.add_argument("--base", default=None, help="label of the base design")
    outs(c, "--out-json", "--out-csv")
    c.add_argument("--out-png", default=None)
    c.add_argument("--n-boot", type=positive_int, default=10000)
    c.add_argument("--seed", type=int, default=0)
    return [("compare", "dvc exp show: the headline metrics and the params you change"),
            ("effects", "each design against the base design, bootstrap over seeds")]
