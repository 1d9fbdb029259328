"""Design axes of madyn's trainer: architecture families, residual layout, optimiser.

Real tiny models, a few training steps on the conftest corpus.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from madyn.measure.checkpoints import load_model
from madyn.measure.statistics import decoder_layers, measure
from madyn.train.training import FAMILIES, ModelSpec, TrainSpec, checkpoint_dir, train_model
from tests.helpers import PINNED_SHA256, TINY_MODEL, TINY_TRAIN, cpu_vendor

SHORT = dataclasses.replace(TINY_TRAIN, steps=4, log_until=2, every=4)


def _weights(model_dir, step: int) -> dict[str, np.ndarray]:
    return load_file(str(checkpoint_dir(model_dir, step) / "model.safetensors"))


def _differ(a: dict, b: dict) -> bool:
    return a.keys() != b.keys() or any(not np.array_equal(a[k], b[k]) for k in a)


def test_default_recipe_is_unchanged(corpus_dir, tiny_model_dir, tmp_path):
    """The recipe as it was before the design axes existed (GPT-NeoX, parallel residual,
    AdamW with torch's default eps), spelled out, trains the default recipe's weights (the
    session's tiny model), and, on a processor whose pinned hash is recorded, that hash."""
    explicit = dataclasses.replace(TINY_TRAIN, optimizer="adamw", eps=1e-8, momentum=0.9)
    spec = dataclasses.replace(TINY_MODEL, family="neox", parallel_residual=True)
    man = train_model(spec, explicit, corpus_dir, tmp_path, threads=1)
    assert man["kernels"]["pinned"] is True
    got = man["weights_sha256"][str(TINY_TRAIN.steps)]
    default = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert got == default["weights_sha256"][str(TINY_TRAIN.steps)]
    assert got == PINNED_SHA256.get(cpu_vendor(), got)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_trains_saves_reloads_and_is_measured(family, corpus_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    spec = dataclasses.replace(TINY_MODEL, name=f"tiny-{family}", family=family)
    man = train_model(spec, SHORT, corpus_dir, tmp_path, threads=1)
    assert man["design"]["family"] == family == man["architecture"]["family"]
    assert man["train"]["optimizer"] == "adamw" and man["train"]["eps"] == 1e-8
    assert np.isfinite(man["final_loss"])
    final = checkpoint_dir(tmp_path, SHORT.steps)
    meta = json.loads((final / "madyn_checkpoint.json").read_text())
    assert meta["hf_class"] == FAMILIES[family] and meta["optimizer"] == "adamw"
    assert meta["optimizer_params"]["eps"] == 1e-8
    assert meta["qk_norm"] == (family in ("qwen3", "olmo2"))
    assert meta["parallel_residual"] == (family == "neox")
    assert (final / "model.safetensors").exists() and not list(final.glob("*.bin"))

    hf = AutoModelForCausalLM.from_pretrained(str(final), use_safetensors=True,
                                              trust_remote_code=False)
    assert type(hf).__name__ == FAMILIES[family]
    model = load_model(str(final), device="cpu")  # refuses missing / unexpected keys
    assert len(decoder_layers(model)) == spec.layers
    rng = np.random.default_rng(0)
    df = measure(model, rng.integers(0, model.config.vocab_size, size=(3, 16)))
    assert len(df) == 3 * spec.layers
    for col in ("ratio", "kurtosis", "mlp_active_token", "mlp_active_seq"):
        assert np.isfinite(df[col]).all(), col


def test_sgd_and_adamw_train_different_weights(corpus_dir, tmp_path):
    sgd = dataclasses.replace(SHORT, optimizer="sgd", momentum=0.9)
    a = train_model(TINY_MODEL, SHORT, corpus_dir, tmp_path / "adamw", threads=1)
    b = train_model(TINY_MODEL, sgd, corpus_dir, tmp_path / "sgd", threads=1)
    assert b["design"]["optimizer"] == "sgd"
    assert b["design"]["optimizer_params"] == {"lr": SHORT.lr, "momentum": 0.9,
                                               "weight_decay": SHORT.weight_decay}
    assert a["weights_sha256"]["0"] == b["weights_sha256"]["0"]  # same seed, same start
    assert _differ(_weights(tmp_path / "adamw", SHORT.steps),
                   _weights(tmp_path / "sgd", SHORT.steps))


def test_sequential_and_parallel_residual_differ(corpus_dir, tmp_path):
    seq = dataclasses.replace(TINY_MODEL, parallel_residual=False)
    train_model(TINY_MODEL, SHORT, corpus_dir, tmp_path / "par", threads=1)
    m = train_model(seq, SHORT, corpus_dir, tmp_path / "seq", threads=1)
    assert m["architecture"]["parallel_residual"] is False
    cfgs = [json.loads((checkpoint_dir(tmp_path / d, 0) / "config.json").read_text())
            for d in ("par", "seq")]
    assert [c["use_parallel_residual"] for c in cfgs] == [True, False]
    assert _differ(_weights(tmp_path / "par", SHORT.steps), _weights(tmp_path / "seq",
                                                                     SHORT.steps))


@pytest.mark.parametrize("kwargs, named", [
    ({"family": "gpt5"}, "family 'gpt5'"),
    ({"family": "llama", "parallel_residual": False}, "parallel_residual applies"),
])
def test_bad_model_spec_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        ModelSpec("x", 2, 32, 2, **kwargs)


@pytest.mark.parametrize("kwargs, named", [
    ({"optimizer": "adam"}, "train.optimizer"), ({"eps": 0.0}, "train.eps"),
])
def test_bad_train_spec_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        TrainSpec(**{**TINY_TRAIN.__dict__, **kwargs})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_planning_config_counts_every_family_exactly(family):
    """resources.model_config_dict (no transformers) gives the real parameter count."""
    import transformers

    from madyn.train.training import model_config
    from madyn.workflow.resources import model_config_dict, n_params

    spec = ModelSpec("x", 3, 64, 4, family=family)
    real = getattr(transformers, FAMILIES[family])(model_config(spec, 300, 32, 0))
    assert n_params(model_config_dict(spec, 300, 32)) == sum(p.numel()
                                                             for p in real.parameters())
