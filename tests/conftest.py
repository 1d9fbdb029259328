"""Shared fixtures: a tiny corpus and a tiny trained model, built once per session
(constants and builders shared by test modules are in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from madyn import kernels

# the kernel paths madyn's own jobs run, before anything imports torch: the tests compute
# the same floats on every x86-64 machine (madyn.kernels; a user's opt-out does not apply)
os.environ[kernels.MODE] = "pinned"
kernels.pin_environment()

from madyn.train.corpus import build_corpus  # noqa: E402
from tests.helpers import TINY_MODEL, TINY_TRAIN  # noqa: E402


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
    tests given it only read it (a test that changes the project takes ``smoke_copy``), so
    no test depends on which ran before it."""
    from tests.test_workflow import make_smoke_run

    return make_smoke_run(tmp_path_factory)


@pytest.fixture
def smoke_copy(smoke_run, tmp_path) -> Path:
    """A private copy of the finished smoke project (git, DVC cache, Snakemake metadata and
    file times included) for a test that edits its params, results or weights."""
    import shutil

    proj, _ = smoke_run
    return Path(shutil.copytree(proj, tmp_path / "proj", symlinks=True))


def pytest_collection_modifyitems(config, items) -> None:
    """The SLURM tests last: they install the SLURM client commands, and with those on the
    machine and no controller running, every later `snakemake` start waits 10 s in the SLURM
    executor plugin's `scontrol show config`."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)
