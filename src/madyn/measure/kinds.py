"""What the largest activation of a layer is: a first-token massive activation, a feature
outlier, or neither.

A ratio alone does not tell them apart (on the synthetic suite, feature dimensions reach
x50-80 at random tokens while the first-token outlier reaches x30-80). Per (layer,
checkpoint), over the evaluation sequences of one per-checkpoint statistics table
(:mod:`madyn.measure.stats_table`):

- ``first_token``: the top1 entry sits at position 0 in every sequence, in one channel in
  every sequence, and position 0's residual norm is at least :data:`FIRST_NORM_MIN` times
  the median token's (median over sequences of ``first_norm_ratio``): a massive
  activation at the first token (Sun et al. 2024), the study's phenomenon.
- ``feature``: otherwise, the top1 channel is one channel in at least
  :data:`CHANNEL_AGREEMENT` of the sequences and that channel is the largest entry of at
  least :data:`FEATURE_SHARE` of the tokens (mean ``channel_share``): an outlier feature
  dimension, large at every token (He et al. 2024).
- ``none``: neither (as at initialisation).
- ``unknown``: the table lacks the columns (the study's released files hold top1, top2,
  top3 and median only).

Tables measured before ``channel_share`` existed are classified on the channel agreement
alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("first_token", "feature", "none", "unknown")
FIRST_NORM_MIN = 2.0  # position 0's norm over the median token norm (median over sequences)
CHANNEL_AGREEMENT = 0.8  # share of sequences whose top1 channel is the most common one
FEATURE_SHARE = 0.5  # mean share of tokens whose largest entry is in that channel
KIND_COLUMNS = ["kind", "kind_position", "kind_channel", "position_share", "channel_agreement"]
NEEDED = ("top1_token", "top1_channel")


def _mode(values: pd.Series) -> tuple[int, float]:
    """The most common value (ties: the smallest) and the share of rows holding it."""
    counts = values.value_counts()
    top = counts[counts == counts.max()].index.min()
    return int(top), float(counts.max() / len(values))


def classify_layer(rows: pd.DataFrame) -> dict:
    """The kind of one layer from its per-sequence rows (one row per evaluation sequence):
    ``kind`` (:data:`KINDS`), ``kind_position`` and ``kind_channel`` (the most common top1
    position and channel; -1 when unknown), ``position_share`` and ``channel_agreement``
    (the share of sequences at that position / in that channel)."""
    if any(c not in rows.columns for c in NEEDED) or rows[list(NEEDED)].isna().any(axis=None):
        return {"kind": "unknown", "kind_position": -1, "kind_channel": -1,
                "position_share": np.nan, "channel_agreement": np.nan}
    pos, pos_share = _mode(rows["top1_token"].astype(int))
    ch, ch_share = _mode(rows["top1_channel"].astype(int))
    out = {"kind_position": pos, "kind_channel": ch, "position_share": pos_share,
           "channel_agreement": ch_share}
    norm = (float(np.nanmedian(rows["first_norm_ratio"]))
            if "first_norm_ratio" in rows.columns and rows["first_norm_ratio"].notna().any()
            else np.nan)
    if pos == 0 and pos_share == 1.0 and ch_share == 1.0 and norm >= FIRST_NORM_MIN:
        return {"kind": "first_token", **out}
    share_ok = (float(rows["channel_share"].mean()) >= FEATURE_SHARE
                if "channel_share" in rows.columns and rows["channel_share"].notna().any()
                else True)
    if ch_share >= CHANNEL_AGREEMENT and share_ok:
        return {"kind": "feature", **out}
    return {"kind": "none", **out}


def classify(stats: pd.DataFrame) -> pd.DataFrame:
    """Per layer of one checkpoint's statistics table (one row per sequence x layer): a
    table with ``layer`` and :data:`KIND_COLUMNS`."""
    rows = [{"layer": int(layer), **classify_layer(g)}
            for layer, g in stats.groupby("layer", sort=True)]
    return pd.DataFrame(rows, columns=["layer", *KIND_COLUMNS])
