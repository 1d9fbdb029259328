"""The values of a checkpoint's ``config.json`` that transformers builds a model from,
checked before it builds one: each size key a whole number (at most :data:`MAX_SIZE`,
2**24), attention heads dividing the width and key/value heads dividing the heads, an
activation transformers knows, a rotary fraction in (0, 1], and at least one decoder
layer."""

from __future__ import annotations

import functools
from pathlib import Path

from madyn.measure.checkpoint_error import CheckpointError, is_whole

# config.json keys that size the model: whole numbers when present (None: unset)
SIZE_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd",
             "d_model", "vocab_size", "intermediate_size", "n_inner", "ffn_dim",
             "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
             "max_position_embeddings", "n_positions", "num_local_experts", "num_experts")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


MAX_SIZE = 2**24  # largest value of a size key other than layers (16,777,216: above any
# real model's width, vocabulary or context; a product of two stays far inside int64 bytes)
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
HEAD_KEYS = ("num_attention_heads", "n_head")
ACTIVATION_KEYS = ("hidden_act", "activation_function", "hidden_activation")
ROTARY_KEYS = ("partial_rotary_factor", "rotary_pct")
ROPE_DICTS = ("rope_parameters", "rope_scaling")


@functools.lru_cache(maxsize=1)
def known_activations() -> frozenset[str]:
    """The activation names transformers builds (``transformers.activations.ACT2CLS``'s
    keys), read from that module's source without importing it: importing it imports
    torch, seconds at every Snakemake start that plans a run folder. The import is the
    fallback when the source holds no literal ``ACT2CLS = {...}``."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if spec is not None and spec.origin is not None:
        source = Path(spec.origin).with_name("activations.py")
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            tree = None
        for node in ast.walk(tree) if tree is not None else ():
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(isinstance(t, ast.Name) and t.id == "ACT2CLS"
                            for t in node.targets)
                    and all(isinstance(k, ast.Constant) and isinstance(k.value, str)
                            for k in node.value.keys)):
                return frozenset(k.value for k in node.value.keys)
    from transformers.activations import ACT2FN

    return frozenset(ACT2FN)


def check_config_values(config: dict, where: str) -> None:
    """The values transformers builds a model from, checked before it does (it would raise
    a KeyError, a ZeroDivisionError or a storage overflow while building): each size key
    of :data:`SIZE_KEYS` a whole number >= 0, at most :data:`MAX_SIZE` (layers excepted:
    they are compared with the weights); attention heads >= 1, dividing the width unless
    ``head_dim`` is given; key/value heads >= 1, dividing the heads; an activation
    (:data:`ACTIVATION_KEYS`) that transformers knows; a rotary fraction
    (:data:`ROTARY_KEYS`, at the top level or in ``rope_parameters``/``rope_scaling``) in
    (0, 1]. CheckpointError naming ``where`` and the key otherwise."""
    import math

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{where}: {why}")

    for key in SIZE_KEYS:
        v = config.get(key)
        if v is not None and not (is_whole(v) and v >= 0):
            raise bad(f"{key} must be a whole number, got {v!r}")
        if v is not None and key not in LAYER_KEYS and v > MAX_SIZE:
            raise bad(f"{key} is {v}, at most {MAX_SIZE:,} allowed (no model is that large)")
    width = next((config[k] for k in WIDTH_KEYS if config.get(k) is not None), None)
    for key in HEAD_KEYS:
        heads = config.get(key)
        if heads is None:
            continue
        if heads < 1:
            raise bad(f"{key} must be at least 1, got {heads}")
        if width is not None and config.get("head_dim") is None and width % heads:
            wkey = next(k for k in WIDTH_KEYS if config.get(k) is not None)
            raise bad(f"{key} {heads} does not divide {wkey} {width}")
        kv = config.get("num_key_value_heads")
        if kv is not None and (kv < 1 or heads % kv):
            raise bad(f"num_key_value_heads must be at least 1 and divide {key} {heads}, "
                      f"got {kv}")
    for key in ACTIVATION_KEYS:
        act = config.get(key)
        if act is None:
            continue
        if not (isinstance(act, str) and act in known_activations()):
            raise bad(f"{key} {act!r} is not an activation transformers knows")
    places = [("", config)] + [(f"{k}.", config[k]) for k in ROPE_DICTS
                                if isinstance(config.get(k), dict)]
    for prefix, d in places:
        for key in ROTARY_KEYS:
            v = d.get(key)
            if v is None:
                continue
            if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and 0 < v <= 1):
                raise bad(f"{prefix}{key} must be in (0, 1], got {v!r}")


def config_layers(config: dict, where: str) -> int:
    """The configured number of decoder layers; the config's values are checked first
    (:func:`check_config_values`), layers must be >= 1; CheckpointError naming ``where``
    and the key otherwise."""
    check_config_values(config, where)
    key = next((k for k in LAYER_KEYS if config.get(k) is not None), None)
    if key is None or config[key] < 1:
        raise CheckpointError(f"{where}: no number of layers >= 1 "
                              f"({' / '.join(LAYER_KEYS)})")
    return config[key]
