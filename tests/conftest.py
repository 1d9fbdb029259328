"""Shared fixtures: a tiny corpus and a tiny trained model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from madyn.corpus import build_corpus
from madyn.suite import ModelSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[1]

TINY_TRAIN = TrainSpec(steps=12, batch_size=4, seq_len=32, lr=1e-2, warmup=2,
                       min_lr_ratio=0.1, weight_decay=0.0, beta1=0.9, beta2=0.95, seed=0,
                       log_until=4, every=5)
TINY_MODEL = ModelSpec(name="tiny", layers=2, width=32, heads=2)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, max_mb=0.4, heldout_fraction=0.1, vocab_size=300)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(corpus_dir, tmp_path_factory) -> Path:
    from madyn.suite import train_model

    out = tmp_path_factory.mktemp("tiny")
    train_model(TINY_MODEL, TINY_TRAIN, corpus_dir, out, threads=1)
    return out
