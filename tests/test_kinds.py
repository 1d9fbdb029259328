"""The classification of a layer's largest activation (madyn.measure.kinds), on constructed
activations where the answer is known, measured by the real statistics code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from madyn.measure.kinds import classify
from madyn.measure.statistics import _cpu_finish, layer_stats


def _table(h: torch.Tensor, cpu: bool) -> pd.DataFrame:
    """One layer's per-sequence statistics of h (B x T x D), as the extract hooks compute
    them: the torch reference or the CPU path."""
    if cpu:
        norms = h.norm(dim=2)
        usum_sq = (h / norms[:, :, None]).sum(1).pow(2).sum(1).double().numpy()
        st = _cpu_finish(h.abs().numpy().copy(), usum_sq, h.shape[1], norms.numpy())
    else:
        st = layer_stats(h)
    return pd.DataFrame({"seq": np.arange(h.shape[0]), "layer": 0, **st})


def _noise(seed: int = 0, b: int = 10, t: int = 64, d: int = 32) -> torch.Tensor:
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=[False, True], ids=["torch", "cpu"])
def cpu(request):
    return request.param


def test_first_token_massive_activation(cpu):
    h = _noise()
    h[:, 0, 7] = 300.0  # one entry at position 0, channel 7, in every sequence
    t = _table(h, cpu)
    row = classify(t).iloc[0]
    assert (row["kind"], row["kind_position"], row["kind_channel"]) == ("first_token", 0, 7)
    # the ratio with that token left out is the noise's, the ratio is the outlier's
    assert (t["ratio"] > 300).all() and (t["ratio_excl_token"] < 10).all()


def test_feature_outlier_at_every_token(cpu):
    h = _noise(1)
    h[:, :, 5] += 20.0  # one channel large at every token
    t = _table(h, cpu)
    row = classify(t).iloc[0]
    assert row["kind"] == "feature" and row["kind_channel"] == 5
    assert (t["channel_share"] > 0.9).all()
    assert (t["ratio_excl_token"] > 0.8 * t["ratio"]).all()


def test_feature_outlier_also_at_position_zero_is_not_first_token(cpu):
    h = _noise(2)
    h[:, :, 3] += 20.0
    h[:, 0, 3] += 10.0  # the feature's largest entry lands at position 0 every time
    t = _table(h, cpu)
    # top1 at position 0 in one channel, but position 0's norm is not apart from the rest
    assert (t["top1_token"] == 0).all()
    assert classify(t).iloc[0]["kind"] == "feature"


def test_plain_noise_is_none(cpu):
    assert classify(_table(_noise(3), cpu)).iloc[0]["kind"] == "none"


def test_outlier_at_varying_positions_is_not_first_token(cpu):
    h = _noise(4)
    for b in range(h.shape[0]):
        h[b, 3 + 5 * b, 9] = 300.0  # one token, but a different one in each sequence
    row = classify(_table(h, cpu)).iloc[0]
    assert row["kind"] != "first_token" and row["position_share"] == 0.1


def test_first_token_in_two_channels_is_not_first_token(cpu):
    h = _noise(5)
    h[:5, 0, 7] = 300.0
    h[5:, 0, 8] = 300.0  # position 0 every time, but the channel changes
    assert classify(_table(h, cpu)).iloc[0]["kind"] != "first_token"


def test_released_tables_without_positions_are_unknown():
    t = pd.DataFrame({"seq": [0, 1], "layer": [0, 0], "top1": [5.0, 6.0],
                      "median": [1.0, 1.0]})
    row = classify(t).iloc[0]
    assert row["kind"] == "unknown" and row["kind_position"] == -1
