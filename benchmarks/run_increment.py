"""Cost of one new checkpoint in a run suite, measured side by side in one run.

Trains a tiny GPT-NeoX with the real Hugging Face ``Trainer`` (140 steps, a checkpoint every
20: tests/trainer_run.py), makes a git + DVC project whose run suite reads it, runs
`snakemake` once (the full run, which records itself in DVC), then adds one checkpoint and
times `snakemake`, adds another and times `dvc repro` stage by stage, and checks after each
that both tools have nothing left to do. Prints each time and its fraction of the full run.

    python benchmarks/run_increment.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from madyn.train.corpus import build_corpus
from madyn.workflow.scratch_project import copy_workflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
       "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@madyn",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@madyn"}
STAGES = ("source", "suite", "extract", "fit", "features", "predict", "report")


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds and output of ``cmd``; raises on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return dt, r.stdout + r.stderr


def add_checkpoint(run_folder: Path, step: int) -> None:
    """A new ``checkpoint-<step>`` (the last checkpoint's weights, its state at ``step``)."""
    last = max(run_folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    new = run_folder / f"checkpoint-{step}"
    shutil.copytree(last, new)
    state = json.loads((new / "trainer_state.json").read_text())
    (new / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))


def setup(work: Path) -> tuple[Path, Path]:
    """The trained run folder and the git + DVC project reading it."""
    from tests.trainer_run import train

    corpus = work / "corpus"
    build_corpus(corpus, max_mb=0.4, heldout_fraction=0.1, vocab_size=300)
    run_folder = work / "trainer" / "out"
    train(corpus, run_folder, steps=140, save_steps=20, every=20)
    (work / "proj").mkdir()
    proj = copy_workflow(ROOT, work / "proj")
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["mine"] = {"source": "run",
                             "models": [{"name": "trainer", "path": str(run_folder)}]}
    cfg["suite"] = "mine"
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        run(cmd, proj)
    return run_folder, proj


def clean(proj: Path) -> None:
    """Both tools have nothing to do, or this exits naming which."""
    _, out = run([str(BIN / "snakemake"), "--cores", "2", "-n"], proj)
    if "Nothing to be done" not in out:
        raise SystemExit("snakemake -n has work left:\n" + out[-2000:])
    _, out = run([str(BIN / "dvc"), "status"], proj)
    if "up to date" not in out:
        raise SystemExit("dvc status is not clean:\n" + out[-2000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="madyn-increment-"))
    work.mkdir(parents=True, exist_ok=True)
    run_folder, proj = setup(work)
    snake = [str(BIN / "snakemake"), "--cores", "2"]

    full, _ = run(snake, proj)
    clean(proj)
    add_checkpoint(run_folder, 160)
    t_snake, _ = run(snake, proj)
    clean(proj)
    add_checkpoint(run_folder, 180)
    per_stage = {s: run([str(BIN / "dvc"), "repro", "--single-item", s], proj)[0]
                 for s in STAGES}
    clean(proj)
    add_checkpoint(run_folder, 200)
    t_repro, _ = run([str(BIN / "dvc"), "repro"], proj)
    clean(proj)

    print(f"full snakemake run:                     {full:6.1f} s")
    print(f"one new checkpoint, snakemake:          {t_snake:6.1f} s  "
          f"({t_snake / full:.2f} of the full run)")
    print(f"one new checkpoint, dvc repro:          {t_repro:6.1f} s  "
          f"({t_repro / full:.2f} of the full run)")
    for s, dt in per_stage.items():
        print(f"  dvc repro --single-item {s:<9} {dt:6.1f} s")
    print("after each: snakemake -n nothing to do, dvc status up to date")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
