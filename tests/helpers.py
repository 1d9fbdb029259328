"""What several test modules share (constants and builders); fixtures are in conftest.py.

Test modules import from here, never from conftest.py or from one another.
"""

from __future__ import annotations

from pathlib import Path

from madyn.suite import ModelSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[1]

TINY_TRAIN = TrainSpec(steps=12, batch_size=4, seq_len=32, lr=1e-2, warmup=2,
                       min_lr_ratio=0.1, weight_decay=0.0, beta1=0.9, beta2=0.95, seed=0,
                       log_until=4, every=5)
TINY_MODEL = ModelSpec(name="tiny", layers=2, width=32, heads=2)
