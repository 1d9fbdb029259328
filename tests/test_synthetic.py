"""The synthetic Bigram-Backcopy corpus and training a model on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from madyn.io import read_json
from madyn.train import synthetic
from madyn.train.synthetic import SyntheticSpec


def test_backcopy_rule_bos_and_determinism():
    spec = SyntheticSpec()
    x = synthetic.sample(spec, 50, 128, seed=3)
    assert x.shape == (50, 128) and (x[:, 0] == spec.bos_id).all()
    assert x[:, 1:].max() < spec.vocab and x.min() >= 0
    trig = np.isin(x[:, 1:-1], spec.triggers)
    b, t = np.nonzero(trig)
    t = t + 1  # positions of triggers in x
    ok = t >= 2  # a trigger right after the first token has nothing to copy
    assert ok.sum() > 500
    # after a trigger, the next token copies the token before the trigger
    assert (x[b[ok], t[ok] + 1] == x[b[ok], t[ok] - 1]).all()
    # triggers carry about trigger_mass of the transitions
    assert 0.15 < np.isin(x[:, 2:], spec.triggers).mean() < 0.25
    assert np.array_equal(x, synthetic.sample(spec, 50, 128, seed=3))
    assert not np.array_equal(x, synthetic.sample(spec, 50, 128, seed=4))


def test_bigram_control_and_no_bos():
    spec = SyntheticSpec(kind="bigram", bos=False)
    x = synthetic.sample(spec, 50, 128, seed=0)
    assert (x < spec.vocab).all()  # no BOS anywhere
    b, t = np.nonzero(np.isin(x[:, 1:-1], spec.triggers))
    t = t + 1
    # without the copy rule the token after a trigger rarely repeats the one before it
    assert (x[b, t + 1] == x[b, t - 1]).mean() < 0.3


def test_eval_batch_is_apart_from_training_batches():
    spec = SyntheticSpec()
    ev = synthetic.eval_batch(spec, 4, 32, seed=0)
    first = next(synthetic.batches(spec, 4, 32, seed=0))
    assert ev.shape == first.shape and not np.array_equal(ev, first)


def test_bad_parameters_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="corpus.trigger_mass"):
        SyntheticSpec(trigger_mass=1.5)
    with pytest.raises(ValueError, match="corpus.kind"):
        SyntheticSpec(kind="markov")


def test_corpus_manifest_round_trip(tmp_path):
    spec = SyntheticSpec(vocab=16, n_triggers=2, seed=5)
    m = synthetic.build_corpus(tmp_path, spec)
    assert read_json(tmp_path / "manifest.json") == json.loads(json.dumps(m))
    assert synthetic.spec_of(m) == spec
    assert synthetic.spec_of(m, bos=False).bos is False
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    assert len(tok) == spec.vocab_size and tok.bos_token_id == spec.bos_id
    assert tok("t3 t15")["input_ids"] == [3, 15]


def test_train_gpt2_on_synthetic_corpus_and_reload(tmp_path):
    """A tiny GPT-2 trained on the synthetic corpus reloads with AutoModelForCausalLM and
    its statistics carry the kind columns."""
    import torch
    from transformers import AutoModelForCausalLM

    from madyn.measure.statistics import measure
    from madyn.train.training import ModelSpec, TrainSpec, train_model

    synthetic.build_corpus(tmp_path / "corpus", SyntheticSpec(vocab=16, n_triggers=2))
    spec = ModelSpec(name="g", layers=2, width=16, heads=2, family="gpt2")
    train = TrainSpec(steps=4, batch_size=2, seq_len=16, lr=1e-3, warmup=1, min_lr_ratio=1.0,
                      weight_decay=0.0, beta1=0.9, beta2=0.99, seed=0, log_until=2, every=4,
                      schedule="constant")
    m = train_model(spec, train, tmp_path / "corpus", tmp_path / "g")
    assert m["steps"] == [0, 1, 2, 4] and m["train"]["schedule"] == "constant"
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "g" / "step4"))
    assert type(model).__name__ == "GPT2LMHeadModel"
    tokens = synthetic.eval_batch(SyntheticSpec(vocab=16, n_triggers=2), 3, 16, seed=0)
    with torch.no_grad():
        df = measure(model, tokens)
    assert {"ratio_excl_token", "channel_share", "sink_mass"} <= set(df.columns)
    assert df["sink_mass"].notna().all() and len(df) == 6
