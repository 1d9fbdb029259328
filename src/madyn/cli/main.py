"""``madyn``: the parser, grouped help and dispatch. The user commands come from one
module per group; the workflow's steps sit under ``madyn step``, hidden from the
top-level help (``madyn step --help`` lists them)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from madyn.cli import (
    compare,
    fit,
    measure,
    predict,
    run,
    steps_analysis,
    steps_measure,
    steps_suite,
)
from madyn.cli.common import add

USER_GROUPS = (run, measure, fit, predict, compare)  # in the order the help lists them
STEP_GROUPS = (steps_suite, steps_measure, steps_analysis)

DESCRIPTION = """\
Massive-activation dynamics: measure how massive activations emerge while a transformer
trains, fit each layer's trajectory, predict it from the design and forecast a run.
`madyn COMMAND --help` shows a command's options and an example."""

EPILOG_TAIL = """\
The whole workflow also runs with `snakemake --cores N` or `dvc repro`; its own steps
(called by Snakemake) are under `madyn step` (`madyn step --help`)."""


def _grouped(listing: list[tuple[str, list[tuple[str, str]]]]) -> str:
    width = max(len(name) for _, cmds in listing for name, _ in cmds)
    blocks = ["\n".join([f"{title}:"] + [f"  {name:<{width}}  {text}" for name, text in cmds])
              for title, cmds in listing]
    return "\n\n".join(blocks + [EPILOG_TAIL])


def _cmd_step_help(args: argparse.Namespace) -> int:
    args.step_parser.print_help()
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``madyn`` parser: the user commands, grouped, and the hidden ``step`` group."""
    p = argparse.ArgumentParser(prog="madyn", usage="madyn COMMAND [options]",
                                description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="madyn",
                           help=argparse.SUPPRESS)
    listing = [(group.GROUP, group.register(sub)) for group in USER_GROUPS]
    p.epilog = _grouped(listing)
    s = add(sub, "step", _cmd_step_help, None,
            "The workflow's own steps, each called by a Snakemake rule (or a DVC stage). "
            "For maintainers; a user runs the commands of `madyn --help`.")
    steps = s.add_subparsers(dest="step", metavar="STEP", prog="madyn step")
    s.set_defaults(step_parser=s)
    for group in STEP_GROUPS:
        group.register(steps)
    return p


# single-file outputs of each subcommand (argparse dests): an existing folder there is
# refused before any work (io.atomic_path refuses it again when writing)
FILE_OUTS = {
    "heldout-manifest": ("out",), "train": ("timing_out",), "train-summary": ("out",),
    "eval-tokens": ("out",), "extract": ("out",), "extract-model": ("outs",),
    "extract-run": ("outs",),
    "download": ("out",), "series": ("out", "integrity"), "growth": ("out",),
    "plot-series": ("out_series", "out_first_last"), "config-json": ("out",),
    "fit": ("out",), "plot-fit": ("out_examples", "out_quality"),
    "fit-summary": ("out_table", "out"), "features": ("out", "out_csv"),
    "evaluate": ("out",), "effects": ("out_json", "out_csv", "out_png"),
    "forecast": ("out_json", "out_csv", "out_png"),
    "run-summary": ("out_csv", "out_json", "out_txt"), "run-headline": ("out",),
}


def check_file_outs(args: argparse.Namespace) -> None:
    """Refuse a single-file output that is an existing folder, or one file given twice
    (OutputError naming the option and the path)."""
    from madyn.io import OutputError, refuse_folder

    seen: dict[Path, str] = {}
    for dest in FILE_OUTS.get(args.name, ()):
        flag = "--" + dest.replace("_", "-")
        value = getattr(args, dest, None)
        for path in value if isinstance(value, list) else [value] if value else []:
            try:
                refuse_folder(path)
            except OutputError as e:
                raise OutputError(f"{flag} {e}") from None
            key = Path(os.path.abspath(path))
            if key in seen:
                raise OutputError(f"{flag} {path}: given twice (also as {seen[key]}); "
                                  "each output needs its own file")
            seen[key] = flag


def main(argv: list[str] | None = None) -> int:
    from madyn import kernels

    kernels.pin_environment(strict=False)  # before torch is imported: the same floats on every CPU
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = "madyn step " + args.name if args.command == "step" and args.step else \
        f"madyn {args.name}"
    if args.name == "train" and not (args.model or args.spec_json):
        parser.error("step train: give a MODEL name or --spec-json/--train-json")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        check_file_outs(args)
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input: one line naming it, exit 2
        if os.environ.get("MADYN_DEBUG"):
            raise
        print(f"{prog}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
