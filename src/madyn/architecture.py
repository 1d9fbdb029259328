"""The architecture model of a decoder-only causal LM, from its Hugging Face
``config.json``: the one decoder-only check, config normalisation (names of layers,
width, heads across families), the parameter count from shapes, the plausible-shape
bounds, and the design axes (block layout and the recipe a model was trained with).
Cheap: no torch, no transformers."""

from __future__ import annotations

import math
from typing import Any

ARCH_COLUMNS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "rotary_pct", "vocab_size", "n_params"]

# the key of a model's config dict (results/<suite>/configs/<model>.json) holding its design
# label and the recipe it was trained with: {"label", "optimizer", "lr", "eps"}
DESIGN_KEY = "madyn_design"

# Plausible shapes of a decoder-only model (:func:`architecture` enforces them):
# beyond these a prediction is an extrapolation far outside any training suite, and a
# huge depth would cost minutes and gigabytes.
MAX_LAYERS = 512
MIN_WIDTH, MAX_WIDTH = 8, 65536


class ArchitectureError(ValueError):
    """A config that does not describe a decoder-only causal language model."""


_ALIASES = {
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
}
_ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta",
                 "deberta-v2", "camembert", "mpnet", "ernie", "modernbert", "esm", "longformer",
                 "big_bird", "funnel", "layoutlm", "megatron-bert", "nezha", "rembert", "roformer",
                 "squeezebert", "xlm", "flaubert", "ibert", "canine", "convbert", "data2vec-text"}
_ENCODER_HEADS = ("ForMaskedLM", "ForPreTraining", "ForNextSentencePrediction",
                  "ForConditionalGeneration", "ForSeq2SeqLM")
_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")
_GATED_FAMILIES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                   "gemma3_text", "olmo", "olmo2", "phi3", "internlm2", "cohere", "granite",
                   "stablelm_gated", "deepseek_v2", "deepseek_v3", "yi", "baichuan", "smollm3"}
_GATED_ACTS = {"silu", "swish", "swiglu", "geglu"}
_ALIBI_FAMILIES = {"bloom", "mpt"}
# block layouts the config's model_type fixes: queries and keys normalised (QK-norm); norms
# after each sub-block instead of before it; attention and MLP reading the same input
_QK_NORM_FAMILIES = {"qwen3", "qwen3_moe", "olmo2", "olmo3", "gemma3_text"}
_POST_NORM_FAMILIES = {"olmo2", "olmo3"}
_PARALLEL_FAMILIES = {"gpt_neox", "gptj", "codegen", "phi", "cohere"}  # (NeoX: HF's default)
_ROPE_KEYS = ("rotary_pct", "partial_rotary_factor", "rotary_dim", "rope_theta", "rope_scaling",
              "rope_parameters", "rotary_emb_base", "rope_type")


def _first(config: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return None


def check_decoder_only(config: dict, where: str | None = None) -> None:
    """The one decoder-only check (the feature table, the predictors and the measuring
    commands all use it): ArchitectureError (naming ``where`` when given) for an
    encoder-decoder model (``is_encoder_decoder``), an encoder-only family
    (``model_type``), or listed ``architectures`` that are not all causal-LM heads
    (``...ForCausalLM``, ``...LMHeadModel``)."""
    mt = str(config.get("model_type", "")).lower()
    archs = [str(a) for a in (config.get("architectures") or [])]
    at = f"{where}: " if where else ""
    if config.get("is_encoder_decoder"):
        raise ArchitectureError(
            f"{at}not a decoder-only model: is_encoder_decoder is true (model_type "
            f"{mt!r}, architectures {archs}); only decoder-only causal LMs are supported")
    if mt in _ENCODER_ONLY:
        raise ArchitectureError(
            f"{at}not a decoder-only model: model_type {mt!r} is an encoder-only "
            f"(bidirectional) family (architectures {archs}); only decoder-only causal LMs "
            "are supported")
    bad = [a for a in archs if not a.endswith(_CAUSAL_HEADS)]
    if bad:
        kind = "encoder or encoder-decoder heads" if any(
            a.endswith(_ENCODER_HEADS) for a in bad) else "not causal-LM heads"
        raise ArchitectureError(
            f"{at}not a decoder-only model: architectures {bad} are {kind} "
            f"(model_type {mt!r}); only decoder-only causal LMs are supported")


def _gated(config: dict) -> bool:
    """A gated MLP (SwiGLU / GeGLU): by family or by activation."""
    act = str(_first(config, ("hidden_act", "activation_function", "hidden_activation")) or "")
    return str(config.get("model_type", "")).lower() in _GATED_FAMILIES or \
        act.lower() in _GATED_ACTS


def _rotary_pct(config: dict) -> float:
    """Fraction of each head's dimensions that are rotated (0 = learned or ALiBi positions)."""
    rope = config.get("rope_parameters") or {}
    for src in (config, rope if isinstance(rope, dict) else {}):
        for k in ("rotary_pct", "partial_rotary_factor"):
            if src.get(k) is not None:
                return float(src[k])
    if config.get("rotary_dim") is not None:
        d = _first(config, _ALIASES["hidden_size"])
        h = _first(config, _ALIASES["num_attention_heads"])
        return float(config["rotary_dim"]) / (int(d) / int(h))
    if any(config.get(k) is not None for k in _ROPE_KEYS):
        return 1.0
    return 0.0


def _n_position_params(config: dict, d: int, rotary: float) -> int:
    """Learned absolute position embeddings (GPT-2, OPT); none with RoPE or ALiBi."""
    mt = str(config.get("model_type", "")).lower()
    if rotary > 0 or mt in _ALIBI_FAMILIES or config.get("alibi"):
        return 0
    n_pos = _first(config, ("n_positions", "max_position_embeddings", "n_ctx"))
    if n_pos is None:
        return 0
    offset = 2 if mt == "opt" else 0  # OPT's learned positions are offset by 2
    return (int(n_pos) + offset) * d


def _count_params(config: dict, L: int, d: int, h: int, dff: int, V: int, rotary: float,
                  gated: bool) -> int:
    """Parameter count from shapes: embeddings (+ untied head), per layer attention
    (q, k, v, o with grouped KV heads), MLP (2 or 3 matrices), norms; biases where the family
    has them (LayerNorm families: everywhere; RMSNorm families: none unless configured)."""
    mt = str(config.get("model_type", "")).lower()
    rms = "rms_norm_eps" in config or mt in _GATED_FAMILIES
    norm = d if rms else 2 * d
    default_bias = not rms
    attn_bias = bool(_first(config, ("attention_bias", "enable_bias", "bias", "use_bias"))
                     if _first(config, ("attention_bias", "enable_bias", "bias", "use_bias"))
                     is not None else default_bias)
    mlp_bias = bool(config["mlp_bias"]) if config.get("mlp_bias") is not None else (
        attn_bias if "enable_bias" in config or not rms else False)
    head_dim = int(config.get("head_dim") or d // h)
    if config.get("multi_query") and not config.get("new_decoder_architecture"):
        kv = 1  # Falcon-7b style multi-query attention
    else:
        kv = int(_first(config, ("num_key_value_heads", "num_kv_heads", "n_head_kv")) or h)
    q_out, kv_out = h * head_dim, kv * head_dim
    attn = d * q_out + 2 * d * kv_out + q_out * d
    if attn_bias:
        attn += q_out + 2 * kv_out + d
    mlp = (3 if gated else 2) * d * dff
    if mlp_bias:
        mlp += (2 * dff if gated else dff) + d
    # Falcon-style parallel attention shares one input norm per layer
    single_norm = config.get("parallel_attn") and not config.get("new_decoder_architecture")
    layer = attn + mlp + (1 if single_norm else 2) * norm
    if mt == "qwen3":  # QK-norm: one RMSNorm weight of head_dim for q, one for k
        layer += 2 * head_dim
    elif mt == "olmo2":  # QK-norm over all query heads' and all key heads' dimensions
        layer += q_out + kv_out
    proj = int(config.get("word_embed_proj_dim") or d)  # OPT-350m style projections
    emb = V * proj + _n_position_params(config, d, rotary)
    if proj != d:
        emb += 2 * proj * d
    tied = config.get("tie_word_embeddings", True)
    head = 0 if tied else V * d
    final_norm = 0 if (mt == "opt" and (not config.get("do_layer_norm_before", True)
                                         or config.get("_remove_final_layer_norm"))) else norm
    return int(emb + head + L * layer + final_norm)


def _int(v: Any) -> int:
    """An integral number as int (bools and fractions raise ValueError)."""
    if isinstance(v, bool) or float(v) != int(v):
        raise ValueError(v)
    return int(v)


def check_shape(L: int, d: int, h: int, explicit_head_dim: bool) -> None:
    """ArchitectureError unless 1 <= layers <= MAX_LAYERS, MIN_WIDTH <= width <= MAX_WIDTH,
    1 <= heads <= width and heads divide width (unless the config gives head_dim)."""
    if not 1 <= L <= MAX_LAYERS:
        raise ArchitectureError(f"layers {L} outside 1..{MAX_LAYERS}")
    if not MIN_WIDTH <= d <= MAX_WIDTH:
        raise ArchitectureError(f"width (hidden_size) {d} outside {MIN_WIDTH}..{MAX_WIDTH}")
    if not 1 <= h <= d:
        raise ArchitectureError(f"heads {h} outside 1..width ({d})")
    if d % h and not explicit_head_dim:
        raise ArchitectureError(f"heads {h} do not divide width {d}")


def architecture(config: dict) -> dict:
    """Normalise a Hugging Face config dict of a decoder-only causal LM.

    Returns ``num_hidden_layers``, ``hidden_size``, ``intermediate_size`` (default 4 d),
    ``num_attention_heads``, ``rotary_pct`` (1.0 for full RoPE, 0 for learned/ALiBi
    positions), ``vocab_size``, ``gated_mlp`` and ``n_params`` (counted from shapes).
    Raises :class:`ArchitectureError` for encoder-decoder or encoder-only models and for
    configs without layer / width / head keys, naming what was found.
    """
    if not isinstance(config, dict):
        raise ArchitectureError(f"config must be a dict, got {type(config).__name__}")
    check_decoder_only(config)
    vals = {k: _first(config, keys) for k, keys in _ALIASES.items()}
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads")
               if vals[k] is None]
    if missing:
        raise ArchitectureError(
            f"config (model_type {config.get('model_type')!r}) lacks {missing}; looked for "
            + "; ".join(f"{k}: {'/'.join(_ALIASES[k])}" for k in missing))
    try:
        L, d = _int(vals["num_hidden_layers"]), _int(vals["hidden_size"])
        h = _int(vals["num_attention_heads"])
    except (TypeError, ValueError, OverflowError):
        raise ArchitectureError(
            "layers / width / heads must be integers, got "
            f"{[vals[k] for k in ('num_hidden_layers', 'hidden_size', 'num_attention_heads')]}"
        ) from None
    check_shape(L, d, h, config.get("head_dim") is not None)
    dff = int(vals["intermediate_size"]) if vals["intermediate_size"] is not None else 4 * d
    V = int(vals["vocab_size"]) if vals["vocab_size"] is not None else 0
    if V < 1:
        raise ArchitectureError(
            f"config (model_type {config.get('model_type')!r}) has no vocab_size")
    gated = _gated(config)
    rotary = _rotary_pct(config)
    return {"num_hidden_layers": L, "hidden_size": d, "intermediate_size": dff,
            "num_attention_heads": h, "rotary_pct": rotary, "vocab_size": V,
            "gated_mlp": gated,
            "n_params": _count_params(config, L, d, h, dff, V, rotary, gated)}


def design(config: dict) -> dict:
    """The design axes of a model from its config dict: ``label`` (its design point; ''
    when not given), the recipe it was trained with (``optimizer`` 'adamw' / 'sgd' / '',
    ``lr``, ``eps``: NaN when unknown) from ``config[DESIGN_KEY]``, and the block layout
    from the config itself (``parallel_residual``, ``norm`` 'pre' / 'post', ``qk_norm``,
    ``gated_mlp``)."""
    rec = config.get(DESIGN_KEY) or {}
    mt = str(config.get("model_type", "")).lower()
    if "use_parallel_residual" in config:  # GPT-NeoX (Hugging Face's default: true)
        parallel = bool(config["use_parallel_residual"])
    elif "parallel_attn" in config:  # Falcon
        parallel = bool(config["parallel_attn"])
    else:
        parallel = mt in _PARALLEL_FAMILIES
    return {"label": str(rec.get("label", "")),
            "optimizer": str(rec.get("optimizer", "")),
            "lr": float(rec["lr"]) if rec.get("lr") is not None else math.nan,
            "eps": float(rec["eps"]) if rec.get("eps") is not None else math.nan,
            "parallel_residual": parallel,
            "norm": "post" if mt in _POST_NORM_FAMILIES else "pre",
            "qk_norm": mt in _QK_NORM_FAMILIES,
            "gated_mlp": _gated(config)}



def is_architecture(obj: dict) -> bool:
    """True when ``obj`` already is the output of :func:`architecture`."""
    return all(k in obj for k in ARCH_COLUMNS)
