"""Run and check: ``madyn run`` (the main job) and ``madyn check`` (params.yaml)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from madyn.cli.common import add, positive_int, say

GROUP = "run and check"
DEFAULT_EXTRA_SUITES = ("firsttoken-reference",)


def _cmd_check(args: argparse.Namespace) -> int:
    from madyn.stages import suite

    print(suite.check(args.params, args.suite))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import subprocess

    from madyn.stages import suite
    from madyn.workflow import params_file, params_values, run

    root = Path.cwd()
    say(suite.check(args.params))  # a bad params.yaml stops here, before DVC parses it
    name = args.suite or params_file.load(args.params)["suite"]
    try:
        if args.suite:
            times = run.run_snakemake(root, args.suite, args.cores)
        else:
            times = run.run_dvc(root, name, tuple(args.extra_suites), args.cores, say)
    except run.RunError as e:
        say(f"madyn run: {e}")
        return 1
    print(f"phase times (wall s; --cores {args.cores}):" if args.suite else
          "phase times (wall s; DVC stages use every core; extra suites beside them):")
    print("\n".join(times.lines()))
    if not args.suite:
        subprocess.call([run.tool("dvc"), "status"], cwd=root)
    from madyn.workflow.answer import against_committed, answer_lines

    results = params_values.results_dir({"suite": name})
    print("\n".join(answer_lines(results)))  # cwd: root
    if not args.suite and (line := against_committed(root, results)):
        print(line)
    return 0


def register(sub) -> list[tuple[str, str]]:
    """Add ``run`` and ``check``; their (name, one-line help)."""
    c = add(sub, "run", _cmd_run, "the main job: the active suite through DVC, the "
            "reference suites beside it, phase times",
            "Run the active suite of params.yaml through `dvc repro`, one stage at a time "
            "(each calls its Snakemake target), so that `dvc status` is clean afterwards; "
            "beside it, at the lowest CPU priority, the extra suites with plain Snakemake "
            "(their log: results/<suite>/logs/make_run.log; one that fails fails the run). "
            "Prints and keeps the phase times (results/<suite>/logs/phase_times.tsv), "
            "`dvc status` and the headline. With --suite: that suite with plain Snakemake, "
            "phase by phase.",
            example="madyn run --cores 2        # what `make run` does")
    c.add_argument("--cores", type=positive_int, default=os.cpu_count() or 1,
                   help="cores for Snakemake (default: all)")
    c.add_argument("--suite", help="run this suite with plain Snakemake instead of DVC")
    c.add_argument("--extra-suites", nargs="*", default=list(DEFAULT_EXTRA_SUITES),
                   metavar="SUITE", help="suites run beside the DVC pipeline (default: "
                   f"{' '.join(DEFAULT_EXTRA_SUITES)}; none: give the option alone)")
    c.add_argument("--params", default="params.yaml")

    c = add(sub, "check", _cmd_check, "validate params.yaml and summarise a suite",
            "Validate params.yaml (a bad value: one line naming its key, exit 2) and "
            "summarise the active suite, or --suite NAME; a released or run suite's folder "
            "is read as the workflow reads it: each model's checkpoints, what is skipped "
            "and why, and a run's planned last step.",
            example="madyn check --suite mine")
    c.add_argument("params", nargs="?", default="params.yaml")
    c.add_argument("--suite", help="the suite to summarise (default: params.yaml's suite)")
    return [("run", "the main job: the DVC pipeline and the reference suites, timed"),
            ("check", "validate params.yaml and summarise the active suite")]
