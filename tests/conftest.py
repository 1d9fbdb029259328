"""Shared fixtures: a tiny corpus and a tiny trained model, built once per session
(constants and builders shared by test modules are in tests/helpers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

from madyn import kernels

# the kernel paths madyn's own jobs run, before anything imports torch: the tests compute
# the same floats on every x86-64 machine (madyn.kernels; a user's opt-out does not apply)
os.environ[kernels.MODE] = "pinned"
kernels.pin_environment()

from madyn.train.corpus import build_corpus  # noqa: E402
from tests.helpers import CLUSTER_SH, SLURM_STOP_FILE, TINY_MODEL, TINY_TRAIN  # noqa: E402


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, max_mb=0.4, heldout_fraction=0.1, vocab_size=300)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(corpus_dir, tmp_path_factory) -> Path:
    from madyn.train.training import train_model

    out = tmp_path_factory.mktemp("tiny")
    train_model(TINY_MODEL, TINY_TRAIN, corpus_dir, out, threads=1)
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke suite through `madyn run` in a fresh git + DVC repository, built once per
    session and shared by every module (tests/test_workflow.py's ``make_smoke_run``):
    tests given it only read it (a test that runs a command in the project takes
    ``smoke_copy``), so no test depends on which ran before it. Under pytest-xdist the
    workers share one: the first to ask builds it, the others wait on a file lock."""
    from tests.test_workflow import make_smoke_run

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make_smoke_run(tmp_path_factory)
    shared = tmp_path_factory.getbasetemp().parent  # the workers' common base folder
    done = shared / "smoke_run.json"
    with FileLock(str(shared / "smoke_run.lock")):
        if not done.is_file():
            proj, r = make_smoke_run(tmp_path_factory)
            done.write_text(json.dumps({"proj": str(proj), "args": r.args,
                                        "returncode": r.returncode, "stdout": r.stdout,
                                        "stderr": r.stderr}))
    d = json.loads(done.read_text())
    return Path(d["proj"]), subprocess.CompletedProcess(d["args"], d["returncode"],
                                                        d["stdout"], d["stderr"])


@pytest.fixture
def smoke_copy(smoke_run, tmp_path) -> Path:
    """A private copy of the finished smoke project (git, DVC cache, Snakemake metadata and
    file times included) for a test that edits its params, results or weights."""
    import shutil

    proj, _ = smoke_run
    return Path(shutil.copytree(proj, tmp_path / "proj", symlinks=True))


def pytest_configure(config) -> None:
    """The session's SLURM stop file, named before pytest-xdist starts its workers (they
    inherit the environment)."""
    if not hasattr(config, "workerinput") and SLURM_STOP_FILE not in os.environ:
        os.environ[SLURM_STOP_FILE] = str(Path(tempfile.mkdtemp(prefix="madyn-slurm-"))
                                          / "stop")


def pytest_sessionfinish(session, exitstatus) -> None:
    """The local SLURM cluster tests/test_slurm.py started, stopped once every test is done
    (in pytest-xdist's controller, after all workers)."""
    if hasattr(session.config, "workerinput"):
        return
    stop = Path(os.environ.get(SLURM_STOP_FILE, "/nonexistent/stop"))
    if stop.is_file():
        subprocess.run(["bash", str(CLUSTER_SH), "stop"], capture_output=True, timeout=120)
        stop.unlink()
    if stop.parent.name.startswith("madyn-slurm-") and stop.parent.is_dir():
        stop.parent.rmdir()  # the folder pytest_configure made, empty again


def pytest_collection_modifyitems(config, items) -> None:
    """The SLURM test first: its run is mostly waiting on SLURM, so under pytest-xdist
    (`make test`: two workers, each test sent to the next free one) the other worker's tests
    fill the cores meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)
