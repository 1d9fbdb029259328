"""What a :class:`madyn.measure.monitor.Monitor` is given, checked (and where not given,
derived) at construction: the schedule (``log_until``, ``every``: optimizer steps), the
planned last step and ``batch_size`` (probe sequences per forward pass); the architecture to
record as ``config.json`` (``config=``, a transformers model's own, or the plain attributes
of a nanoGPT-style ``model.config``); the probe (N x T int64 token ids within the model's
vocabulary and positions); and the recipe read off a torch optimizer (``lr``, ``betas``,
``eps``, ``weight_decay``). A refusal is a :class:`MonitorError` whose one line names the
argument.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LOG_UNTIL = 64  # the default schedule: 0 and powers of two up to here ...
EVERY = 100  # ... then every this many steps
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "block_size",
                 "max_seq_len")


class MonitorError(ValueError):
    """A monitor that cannot be made as asked; the one-line message names the argument or
    the folder."""


def check_whole(name: str, value, least: int) -> None:
    """:class:`MonitorError` naming ``name`` unless ``value`` is a whole number >=
    ``least``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise MonitorError(f"Monitor: {name} must be a whole number >= {least}, "
                           f"got {value!r}")


def check_arguments(log_until=LOG_UNTIL, every=EVERY, batch_size=None, **_) -> None:
    """:class:`MonitorError` naming the argument unless ``log_until`` >= 0, ``every`` >= 1
    and ``batch_size`` (None: the whole probe) >= 1 are whole numbers."""
    check_whole("log_until", log_until, 0)
    check_whole("every", every, 1)
    if batch_size is not None:
        check_whole("batch_size", batch_size, 1)


def _number(v) -> float | None:
    try:
        f = float(v)  # a float, or a 0-d tensor
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def recipe_from_optimizer(optimizer) -> dict:
    """The recipe a torch optimizer (or a wrapper holding one: Accelerate's, Lightning's)
    trains with: ``optimizer`` (its class name, lower case: 'adamw', 'sgd'), the peak
    ``lr`` (a scheduler's ``initial_lr`` when it set one), ``betas``, ``eps`` and the
    largest ``weight_decay`` of its parameter groups; keys it does not have are left out."""
    import torch

    opt = optimizer
    for attr in ("optimizer", "_optimizer"):
        inner = getattr(opt, attr, None)
        if isinstance(inner, torch.optim.Optimizer):
            opt = inner
    groups = getattr(opt, "param_groups", None) or [{}]
    g = groups[0]
    rec: dict = {"optimizer": type(opt).__name__.lower()}
    lr = _number(g.get("initial_lr", g.get("lr")))
    if lr is not None:
        rec["lr"] = lr
    if isinstance(g.get("betas"), (tuple, list)):
        rec["betas"] = [float(b) for b in g["betas"]]
    if _number(g.get("eps")) is not None:
        rec["eps"] = _number(g["eps"])
    decays = [_number(x.get("weight_decay")) for x in groups]
    if decays and all(d is not None for d in decays):
        rec["weight_decay"] = max(decays)
    return rec


def _plain(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_plain(x) for x in v))


def config_from_attributes(model) -> dict:
    """A ``config.json`` dict for a model that is not a transformers model, from the
    plain attributes of its ``config`` (a nanoGPT ``GPTConfig``: n_layer, n_head, n_embd,
    block_size, vocab_size, bias, ...); ``block_size`` also as ``n_positions`` (learned
    positions). Empty when the model has no ``config``."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        items = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    elif isinstance(cfg, dict):
        items = dict(cfg)
    else:
        items = dict(getattr(cfg, "__dict__", {}))
    out = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in items.items()
           if not str(k).startswith("_")}
    out = {k: v for k, v in out.items() if _plain(v)}
    if "block_size" in out and not any(k in out for k in POSITION_KEYS[:3]):
        out["n_positions"] = out["block_size"]
    return out


def checked_config(model, config: dict | None, hf: bool) -> dict:
    """The architecture to write as ``config.json``: ``config``, a transformers model's
    own, or :func:`config_from_attributes`; :class:`MonitorError` naming ``config=`` when
    it does not describe a decoder-only model madyn can analyse."""
    from madyn.architecture import ArchitectureError, architecture

    if config is not None:
        if not isinstance(config, dict):
            raise MonitorError(f"Monitor: config= must be a dict (a config.json), got "
                               f"{type(config).__name__}")
        try:
            architecture(config)
        except ArchitectureError as e:
            raise MonitorError(f"Monitor: config= does not describe the model: {e}") from None
        return dict(config)
    if hf:
        return model.config.to_dict()
    found = config_from_attributes(model)
    try:
        architecture(found)
    except ArchitectureError as e:
        raise MonitorError(
            f"Monitor: cannot write config.json for {type(model).__name__} (not a "
            f"transformers model) from its config attributes: {e}; pass config={{...}} "
            "with n_layer, n_embd, n_head and vocab_size") from None
    return found


def _input_rows(model, hf: bool) -> int | None:
    """Rows of the model's input (token) embedding: a transformers model's
    ``get_input_embeddings()``, else its first ``nn.Embedding`` (nanoGPT's ``wte``)."""
    import torch

    emb = model.get_input_embeddings() if hf else next(
        (m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    return int(emb.num_embeddings) if isinstance(emb, torch.nn.Embedding) else None


def checked_probe(model, probe, config: dict, hf: bool) -> np.ndarray:
    """The probe as int64 N x T ids the model can read: ids within its vocabulary (the
    config's ``vocab_size`` and the input embedding's rows) and T within its positions;
    ValueError naming the probe otherwise."""
    from madyn.architecture import _first
    from madyn.measure.checkpoints import check_tokens
    from madyn.measure.statistics import config_value

    bounds = [v for v in (config_value(model, ("vocab_size",)),
                          _first(config, ("vocab_size", "padded_vocab_size")),
                          _input_rows(model, hf)) if isinstance(v, int) and v > 0]
    tokens = check_tokens(np.asarray(probe), min(bounds, default=np.iinfo(np.int64).max),
                          "Monitor probe")
    found = [(k, config_value(model, (k,))) for k in POSITION_KEYS] + \
        [(k, config.get(k)) for k in POSITION_KEYS]  # the model's own config first
    for key, n in found:
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            if tokens.shape[1] > n:
                raise MonitorError(f"Monitor: probe sequences of {tokens.shape[1]} tokens "
                                   f"are longer than the model's positions ({key} {n})")
            break
    return tokens
