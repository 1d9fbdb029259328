"""One checkpoint, loaded (:mod:`madyn.measure.checkpoints`) and measured
(:mod:`madyn.measure.statistics`): its statistics table and the metadata recorded with it."""

from __future__ import annotations

import platform

import numpy as np
import pandas as pd

from madyn.measure import sinks
from madyn.measure.checkpoints import (
    check_tokens,
    fingerprint,
    load_model,
    load_pickle_model,
    weight_files,
)
from madyn.measure.statistics import attn_implementation, decoder_layers, measure
from madyn.settings import ExtractSettings


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def measure_checkpoint(source: str, tokens: np.ndarray,
                       settings: ExtractSettings | dict | None = None, *,
                       revision: str | None = None, progress: bool = False,
                       weights_fp: dict | None = None, pickles: list | None = None
                       ) -> tuple[pd.DataFrame, dict]:
    """Load one checkpoint and measure it on ``tokens`` (N x T ids).

    ``settings``: dtype, device, batch size and ``extreme_tokens`` (see
    :func:`madyn.measure.statistics.measure`); None: the defaults.
    ``weights_fp``: the weights' :func:`madyn.measure.checkpoints.fingerprint`, when the caller has
    it already. ``pickles``: load the weights from these PyTorch pickles
    (:func:`madyn.measure.checkpoints.load_pickle_model`, ``weights_only``) instead. Returns
    the per-(seq, layer) table and its metadata (weights fingerprint, dtype, device,
    shapes, library versions, seconds taken). Raises
    :class:`madyn.measure.checkpoints.CheckpointError` or ValueError (bad tokens) naming the
    checkpoint.
    """
    import time

    t0 = time.monotonic()
    s = ExtractSettings.of(settings)
    model = (load_pickle_model(source, pickles, s.dtype, s.device) if pickles
             else load_model(source, revision, s.dtype, s.device))
    where = f"{source}@{revision}" if revision else source
    ids = check_tokens(tokens, model.config.vocab_size, f"tokens for {where}")
    fp = weights_fp or fingerprint(pickles or weight_files(source, revision))
    df = measure(model, ids, batch_size=s.batch_size, progress=progress,
                 extreme_tokens=s.extreme_tokens)
    meta = {
        "source": source, "revision": revision, "weights": fp, "dtype": s.dtype,
        "device": str(model.device), "n_seqs": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]), "n_layers": len(decoder_layers(model)),
        "median": "lower (torch.median)", "extreme_tokens": s.extreme_tokens,
        "attn_implementation": sinks.ATTENTION if s.extreme_tokens
        else attn_implementation(model),
        "seconds": round(time.monotonic() - t0, 3),
        **versions(),
    }
    return df, meta
