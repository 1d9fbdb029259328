"""The per-checkpoint statistics table: its columns and its file format.

One row per (evaluation sequence, decoder layer), written by :mod:`madyn.measure.extract` and read
by :mod:`madyn.measure.series`; measured by :mod:`madyn.measure.statistics`.

For every decoder layer l (found structurally, see
:func:`madyn.measure.statistics.decoder_layers`) and every
evaluation sequence b, the hook receives h_l (T tokens x D channels, the residual stream
after the layer) and reduces it at once, in float32, to a handful of numbers; no layer's
hidden states outlive its hook. Columns of the output table (one row per seq x layer):

- ``top1``, ``top2``, ``top3``: the three largest |h| over all T x D entries.
- ``median``: the lower median of |h| over T x D (``torch.median``: the element of rank
  floor((n-1)/2), as the study's reference code).
- ``ratio``: top1 / median.
- ``top1_token``, ``top1_channel``: where top1 sits (0-based token position, channel).
- ``kurtosis``: kurtosis of per-channel RMS, s_j = sqrt(mean_t h_tj^2),
  mean_j s_j^4 / (mean_j s_j^2)^2 (He et al., "Understanding and Minimising Outlier
  Features in Neural Network Training"); 1 = no outlier channel, D = one channel.
- ``mmr``: max-median ratio, per token max_j |h_tj| / median_j |h_tj|, mean over tokens.
- ``cos_sim``: mean off-diagonal cosine similarity between tokens (signal propagation),
  from ||sum_t u_t||^2 with u_t = h_t / ||h_t||: no T x T matrix.
- ``mlp_active_token``: fraction of MLP hidden units > 0 per token, mean over tokens.
- ``mlp_active_seq``: fraction of MLP hidden units > 0 for at least one token.
- ``nonfinite``: number of non-finite entries of h (the other statistics ignore them).

Extreme-token metrics (position 0, where attention sinks and massive activations sit):

- ``sink_mass``: mean attention probability that queries t >= 1 put on position 0, mean
  over heads and those queries (read from the layer's own fused attention by
  :mod:`madyn.measure.sinks`, no T x T matrix). NaN when ``extreme_tokens`` is off.
- ``first_norm_ratio``: ||h_0|| / lower median over t of ||h_t|| (residual-stream norms).
- ``first_peak_ratio``: max_j |h_0j| / ``median`` (position 0's largest entry against the
  median |h| of all T x D entries): large when a massive activation sits at the first
  token, not when a feature outlier is present at every token (see ``mmr``).
- ``ratio_excl_token``: the ratio with the top1 token left out: the largest |h| at any
  other token over ``median``. Near ``ratio`` when the outlier is a feature dimension
  (large at many tokens); well below it when one token holds it (a massive activation).
- ``channel_share``: the fraction of tokens whose largest |h| lies in ``top1_channel``:
  near 1 for a feature outlier (the same channel at every token), near 1/D at init.

:mod:`madyn.measure.kinds` classifies each (layer, checkpoint) from these columns over the
evaluation sequences: ``first_token``, ``feature`` or ``none``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

STAT_COLUMNS = ["top1", "top2", "top3", "median", "ratio", "top1_token", "top1_channel",
                "kurtosis", "mmr", "cos_sim", "mlp_active_token", "mlp_active_seq",
                "nonfinite", "sink_mass", "first_norm_ratio", "first_peak_ratio",
                "ratio_excl_token", "channel_share"]



def write_stats(df: pd.DataFrame, meta: dict, path: str | Path) -> None:
    """Write a per-checkpoint table as Parquet with ``meta`` (JSON) in its schema, atomically."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from madyn.io import atomic_path, jsonable

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"madyn": json.dumps(jsonable(meta)).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_stats(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a table written by :func:`write_stats`: (table, metadata)."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"madyn", b"{}"))
    return table.to_pandas(), meta
