"""Cost of one new checkpoint in a run suite, measured side by side in one run.

Trains a tiny GPT-NeoX with the real Hugging Face ``Trainer`` (140 steps, a checkpoint every
20: tests/trainer_run.py), makes a git + DVC project whose run suite reads it, runs
`snakemake` once (the full run, which records itself in DVC), then adds one checkpoint and
times `snakemake`, adds another and times `dvc repro` stage by stage, then a third and times
`dvc repro` whole, and checks after each that both tools have nothing left to do. Prints
wall and CPU seconds (the CPU time of a chain of one-core jobs is about its wall time on an
idle machine, so a busy machine still shows what an idle one would take).

    python benchmarks/run_increment.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd: list[str], cwd: Path) -> tuple[tuple[float, float], str]:
    """(wall, CPU) seconds and output of ``cmd`` (CPU: its processes' user + system time,
    about the wall time of its job chain on an idle machine); raises on failure."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return (dt, dc), r.stdout + r.stderr


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

    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'':40s} {'wall s':>7s} {'CPU s':>7s}  (fraction of the full run's wall)")
    print(f"{'full snakemake run':40s} {full[0]:7.1f} {full[1]:7.1f}")
    for what, (wall, cpu) in (("one new checkpoint, snakemake", t_snake),
                              ("one new checkpoint, dvc repro", t_repro)):
        print(f"{what:40s} {wall:7.1f} {cpu:7.1f}  ({wall / full[0]:.2f})")
    for s, (wall, cpu) in per_stage.items():
        print(f"{'  dvc repro --single-item ' + s:40s} {wall:7.1f} {cpu:7.1f}")
    print("after each: snakemake -n nothing to do, dvc status up to date")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
