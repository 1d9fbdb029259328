"""One checkpoint, loaded (:mod:`madyn.measure.checkpoints`) and measured
(:mod:`madyn.measure.statistics`): its statistics table and the metadata recorded with it."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.measure import sinks
from madyn.measure.checkpoints import (
    check_before_building,
    check_tokens,
    fingerprint,
    load_model,
    load_pickle_model,
    model_config,
    weight_files,
)
from madyn.measure.layerwise import measure_layerwise
from madyn.measure.memory_estimates import needs_layerwise
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
    :func:`madyn.measure.statistics.measure`); None: the defaults. With
    ``max_memory_gb``, a checkpoint folder whose whole-model estimate exceeds it
    (:func:`madyn.measure.memory_estimates.needs_layerwise`) is measured one decoder layer at a
    time (:func:`madyn.measure.layerwise.measure_layerwise`; the same table; metadata
    ``layerwise`` true and ``layerwise_info``).
    ``weights_fp``: the weights' :func:`madyn.measure.checkpoints.fingerprint`, when the caller has
    it already. ``pickles``: load the weights from these PyTorch pickles
    (:func:`madyn.measure.checkpoints.load_pickle_model`, ``weights_only``) instead. Returns
    the per-(seq, layer) table and its metadata (weights fingerprint, dtype, device,
    shapes, library versions; no wall time on the default path, so that measuring the same
    weights again writes the same file). Raises
    :class:`madyn.measure.checkpoint_error.CheckpointError` or ValueError (bad tokens) naming the
    checkpoint.
    """
    s = ExtractSettings.of(settings)
    if not pickles and s.max_memory_gb is not None and Path(source).is_dir():
        config = model_config(source)
        check_before_building(source, config)
        n = int(np.asarray(tokens).shape[0]) if np.ndim(tokens) == 2 else 0
        t = int(np.asarray(tokens).shape[1]) if np.ndim(tokens) == 2 else 0
        if needs_layerwise(config, s.dtype, min(s.batch_size, max(n, 1)), t, s.max_memory_gb):
            return _measure_by_layer(source, tokens, s, config, weights_fp, progress)
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
        "layerwise": False,
        "max_memory_gb": s.max_memory_gb,
        **versions(),
    }
    return df, meta


def _measure_by_layer(source: str, tokens: np.ndarray, s: ExtractSettings, config: dict,
                      weights_fp: dict | None, progress: bool
                      ) -> tuple[pd.DataFrame, dict]:
    """:func:`measure_checkpoint` of a checkpoint folder one decoder layer at a time
    (:func:`madyn.measure.layerwise.measure_layerwise`); the same table, and metadata
    that records ``layerwise`` and what it took."""
    from madyn.architecture import architecture
    from madyn.measure.gpus import visible_gpus
    from madyn.settings import resolve_device

    ids = check_tokens(tokens, architecture(config)["vocab_size"], f"tokens for {source}")
    files = weight_files(source)
    fp = weights_fp or fingerprint(files)
    device = resolve_device(s.device, visible_gpus())
    df, info = measure_layerwise(source, ids, files, dtype=s.dtype, device=device,
                                 batch_size=s.batch_size, extreme_tokens=s.extreme_tokens,
                                 progress=_say if progress else None)
    meta = {
        "source": source, "revision": None, "weights": fp, "dtype": s.dtype,
        "device": device, "n_seqs": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
        "n_layers": info["layers"], "median": "lower (torch.median)",
        "extreme_tokens": s.extreme_tokens,
        "attn_implementation": sinks.ATTENTION if s.extreme_tokens else None,
        "layerwise": True,
        "max_memory_gb": s.max_memory_gb,
        "layerwise_info": info,
        **versions(),
    }
    return df, meta


def _say(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)
