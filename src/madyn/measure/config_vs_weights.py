"""A checkpoint's ``config.json`` against its safetensors weights, before anything is
built: the configured number of decoder layers equals the numbered layers the tensor names
hold, and the architecture, built on the meta device (no memory), has neither far more
parameters than the weight files hold values (more than twice as many plus
:data:`PARAM_SLACK`, 2**20) nor a parameter of another shape than its tensor."""

from __future__ import annotations

import re
from pathlib import Path

from madyn.measure.checkpoint_error import CheckpointError, one_line
from madyn.measure.config_values import config_layers
from madyn.measure.safetensors_files import safetensors_header

_LAYER_INDEX = re.compile(r"^(.*?)\.(\d+)\.")


def weight_layers(tensors: dict) -> tuple[str, int]:
    """The decoder stack in tensor names: the ``prefix.N.`` with the most distinct N, and
    that number (("", 0) when no name has a numbered part)."""
    stacks: dict[str, set[int]] = {}
    for name in tensors:
        m = _LAYER_INDEX.match(name)
        if m:
            stacks.setdefault(m[1], set()).add(int(m[2]))
    if not stacks:
        return "", 0
    prefix = max(stacks, key=lambda k: len(stacks[k]))
    return prefix, len(stacks[prefix])


def check_config_matches_weights(source: str, config: dict, files: list[Path]) -> dict:
    """Before anything is built: the weight files' headers parse
    (:func:`madyn.measure.safetensors_files.safetensors_header`) and the config's number of
    layers equals the decoder layers the tensor names hold.
    Returns name -> {shape, numel} of every tensor. CheckpointError naming the file."""
    where = Path(source) / "config.json" if Path(source).is_dir() else source
    n_layers = config_layers(config, str(where))
    if not files:
        raise CheckpointError(f"{source}: no .safetensors weight files")
    tensors: dict = {}
    for f in files:
        tensors.update(safetensors_header(f))
    prefix, found = weight_layers(tensors)
    if found != n_layers:
        raise CheckpointError(f"{where}: says {n_layers} layers, but the weight files hold "
                              f"{found}{f' ({prefix}.N)' if prefix else ''}")
    return tensors


PARAM_SLACK = 2**20  # parameters a config may describe beyond twice the weights' values


def check_parameter_count(source: str, tensors: dict) -> None:
    """The architecture of the local checkpoint ``source``, built on the meta device (no
    memory), must not have far more parameters than its weight files hold (``tensors``):
    a config.json much larger than its weights is refused before transformers allocates
    it. A smaller difference (a tensor missing) is left to
    :func:`madyn.measure.checkpoints.load_model`, which names the tensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    where = Path(source) / "config.json" if Path(source).is_dir() else source
    try:
        cfg = AutoConfig.from_pretrained(source, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 (a config transformers cannot build, any way)
        raise CheckpointError(f"{where}: transformers cannot build the model it describes "
                              f"({type(e).__name__}: {one_line(e)})") from None
    wanted = sum(p.numel() for p in model.parameters())
    held = sum(t["numel"] for t in tensors.values())
    if wanted > 2 * held + PARAM_SLACK:
        raise CheckpointError(f"{where}: describes a model of {wanted:,} parameters, but "
                              f"the weight files hold {held:,} values")
    for name, p in model.named_parameters():
        t = tensors.get(name)
        if t is not None and list(p.shape) != t["shape"]:
            raise CheckpointError(f"{where}: makes {name} {list(p.shape)}, but the weight "
                                  f"files hold it as {t['shape']}")
