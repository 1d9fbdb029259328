"""Cost of reruns on a finished smoke run, measured side by side in one run.

Copies the workflow into a fresh git + DVC repository (suite: smoke), runs `dvc repro` once
(the full run), then times `snakemake -n` and `dvc status` (both with nothing to do), and
`dvc repro` after changing one predictor param (`predict.xgb_max_depth`), which should rerun
only the predict and report stages. Prints each time and its fraction of the full run.

    python benchmarks/rerun.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from madyn.workflow.scratch_project import copy_workflow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
       "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@madyn",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@madyn"}


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds and output of ``cmd``; raises on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return dt, r.stdout + r.stderr


def setup(dst: Path) -> None:
    copy_workflow(ROOT, dst, "smoke")
    run(["git", "init", "-q"], dst)
    run([str(BIN / "dvc"), "init", "-q"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-qm", "bench"], dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="run in this (new) folder and keep it")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="madyn-rerun-"))
    work.mkdir(parents=True, exist_ok=True)
    dvc, smk = [str(BIN / "dvc")], [sys.executable, "-m", "snakemake"]
    try:
        setup(work)
        full, _ = run([*dvc, "repro"], work)
        dry, out = run([*smk, "--cores", "2", "-n"], work)
        assert "Nothing to be done" in out, out[-1000:]
        status, out = run([*dvc, "status"], work)
        cfg = yaml.safe_load((work / "params.yaml").read_text())
        cfg["predict"]["xgb_max_depth"] = cfg["predict"]["xgb_max_depth"] + 1
        (work / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        again, out = run([*dvc, "repro"], work)
        stages = sorted(set(re.findall(r"Running stage '([^']+)'", out)))
        print(f"full `dvc repro` (smoke suite, all six stages): {full:7.1f} s  (1.000)")
        print(f"`snakemake -n` after it (nothing to do):          {dry:7.1f} s  "
              f"({dry / full:.3f})")
        print(f"`dvc status` after it (up to date):               {status:7.1f} s  "
              f"({status / full:.3f})")
        print(f"`dvc repro` after a predictor param change:       {again:7.1f} s  "
              f"({again / full:.3f}); stages run: {', '.join(stages)}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
