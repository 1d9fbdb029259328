"""The main job, ``madyn run`` (``make run`` calls it): the active suite through DVC, one
stage at a time (each stage calls its Snakemake target), so that afterwards ``dvc status``
is clean; beside it, at the lowest CPU priority, the extra suites (the committed
first-token reference by default) with plain Snakemake, their results outside DVC. Phase
times are printed and kept in ``results/<suite>/logs/phase_times.tsv``; an extra suite
that fails fails the run, naming its log. ``suite=NAME`` runs that one suite with plain
Snakemake phase by phase instead (DVC follows params.yaml's ``suite``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from madyn.io import atomic_path
from madyn.workflow.params_values import results_dir

STAGES = ("source", "suite", "extract", "fit", "features", "predict", "report")
PHASES = ("suite", "extract", "fit", "features", "predict", "report")  # Snakemake <phase>_all


class RunError(RuntimeError):
    """A stage or an extra suite failed: one line naming it (and its log)."""


def tool(name: str) -> str:
    """A console script installed beside this Python (``.venv/bin/dvc`` when madyn runs
    from an inactive venv), else ``name`` as found on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


@dataclass
class PhaseTimes:
    """(phase, wall seconds) in the order they finished."""

    rows: list[tuple[str, int]] = field(default_factory=list)

    def add(self, phase: str, since: float) -> None:
        self.rows.append((phase, round(time.monotonic() - since)))

    def tsv(self) -> str:
        return "phase\twall_s\n" + "".join(f"{p}\t{s}\n" for p, s in self.rows)

    def lines(self) -> list[str]:
        width = max(len(p) for p, _ in self.rows)
        return [f"  {p:<{width}} {s:>5} s" for p, s in self.rows]


@dataclass
class ExtraSuites:
    """The extra suites, one after another with plain Snakemake at nice 19, in a
    background thread; ``results`` holds (suite, exit code, seconds, log) as each ends."""

    root: Path
    suites: tuple[str, ...]
    cores: int
    results: list[tuple[str, int, int, Path]] = field(default_factory=list)
    _proc: subprocess.Popen | None = None
    _stop: bool = False

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        return t

    def _run(self) -> None:
        for name in self.suites:
            if self._stop:
                return
            log = _results(self.root, name) / "logs" / "make_run.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            t = time.monotonic()
            with open(log, "w") as out:
                self._proc = subprocess.Popen(
                    [tool("snakemake"), "--cores", str(self.cores), "--config",
                     f"suite={name}"], cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                    preexec_fn=lambda: os.nice(19))
                rc = self._proc.wait()
            self.results.append((name, rc, round(time.monotonic() - t), log))

    def stop(self) -> None:
        self._stop = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait()


def _results(root: Path, suite: str) -> Path:
    return root / results_dir({"suite": suite})


def _call(cmd: list[str], root: Path) -> int:
    return subprocess.call(cmd, cwd=root)


def _tail(path: Path, n: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def run_dvc(root: Path, suite: str, extra: tuple[str, ...], cores: int,
            say: Callable[[str], None]) -> PhaseTimes:
    """The active suite ``suite`` through DVC stage by stage, ``extra`` beside it; the
    phase times (also written to results/<suite>/logs/phase_times.tsv). RunError naming
    the failed stage, or the failed extra suite and its log."""
    start, times = time.monotonic(), PhaseTimes()
    extras = ExtraSuites(root, extra, cores)
    thread = extras.start()
    try:
        for stage in STAGES:
            t = time.monotonic()
            rc = _call([tool("dvc"), "repro", "--single-item", stage], root)
            if rc:
                raise RunError(f"DVC stage {stage} failed (exit {rc}); its Snakemake log is "
                               f"under {results_dir({'suite': suite})}/logs/")
            times.add(stage, t)
        t = time.monotonic()
        thread.join()
        times.add("wait", t)
    finally:
        extras.stop()
    for name, rc, secs, log in extras.results:
        times.rows.append((f"suite={name}", secs))
        if rc:
            say(_tail(log))
            raise RunError(f"suite {name} failed (exit {rc}): {log.relative_to(root)}")
    times.add("total", start)
    _write_times(_results(root, suite) / "logs" / "phase_times.tsv", times)
    return times


def run_snakemake(root: Path, suite: str, cores: int) -> PhaseTimes:
    """Suite ``suite`` with plain Snakemake, phase by phase, then the whole workflow (what
    remains: the report's figures); the phase times. RunError naming a failed phase."""
    start, times = time.monotonic(), PhaseTimes()
    for phase in PHASES:
        t = time.monotonic()
        rc = _call([tool("snakemake"), f"{phase}_all", "--cores", str(cores), "--config",
                    f"suite={suite}"], root)
        if rc:
            raise RunError(f"phase {phase} of suite {suite} failed (exit {rc})")
        times.add(phase, t)
    rc = _call([tool("snakemake"), "--cores", str(cores), "--config", f"suite={suite}"], root)
    if rc:
        raise RunError(f"suite {suite} failed (exit {rc})")
    times.add("total", start)
    _write_times(_results(root, suite) / "logs" / "phase_times.tsv", times)
    return times


def _write_times(path: Path, times: PhaseTimes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(times.tsv())
