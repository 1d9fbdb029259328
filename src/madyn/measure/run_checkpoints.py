"""One checkpoint folder of a researcher's run (:mod:`madyn.measure.runs`), checked before
anything is built from it: a Hugging Face folder holding ``config.json`` (a decoder-only
causal LM, no ``auto_map`` custom code) and safetensors weights (single, or the shards its
``model.safetensors.index.json`` names, each header complete and agreeing with the config's
layers), or with ``allow_pickle`` PyTorch weight pickles (loaded later with
``torch.load(weights_only=True)``; the optimizer's and the RNG's pickles are never opened).
Distributed checkpoints (torch DCP, DeepSpeed/Megatron ``mp_rank_*``) are refused naming the
converter to run first, without opening a file. Only headers and configs are read here (no
torch), so planning a run folder stays cheap; a refusal is one CheckpointError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.checkpoints import refuse_remote_code
from madyn.measure.config_values import config_layers
from madyn.measure.config_vs_weights import check_config_matches_weights
from madyn.measure.safetensors_files import check_weight_files, shard_names

PICKLES = ("pytorch_model.bin", "*.pt", "*.ckpt", "*.pth")
# the weight pickles of a checkpoint (a Trainer also writes optimizer.pt, rng_state.pth,
# training_args.bin: never opened)
WEIGHT_PICKLES = ("pytorch_model.bin", "pytorch_model-*.bin", "model.pt", "ckpt.pt",
                  "*.ckpt")
DCP_CONVERTER = ("python -m torch.distributed.checkpoint.format_utils dcp_to_torch_save "
                 "<folder> <file.pt> (torchtitan, Lightning FSDP), or OLMo-core's "
                 "unshard_checkpoint(..., use_safetensors=True), then save it as a Hugging "
                 "Face folder")
MP_RANK_CONVERTER = ("GPT-NeoX tools/ckpts/convert_neox_to_hf.py (DeepSpeed global_stepN) "
                     "or the Megatron-LM/NeMo checkpoint converters (iter_N/mp_rank_XX)")


def refuse_distributed(folder: Path) -> None:
    """CheckpointError naming the converter when ``folder`` is a distributed checkpoint
    (torch DCP ``.metadata`` / ``*.distcp``; DeepSpeed or Megatron ``mp_rank_*``). Nothing
    in it is opened (DCP's ``.metadata`` is a pickle)."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if ".metadata" in names or any(n.endswith(".distcp") for n in names) \
            or any((folder / n).is_dir() and (folder / n / ".metadata").exists()
                   for n in names if n == "model_and_optim"):
        raise CheckpointError(f"{folder}: a torch distributed (DCP) checkpoint, which madyn "
                              f"does not load (its .metadata is a pickle); convert it "
                              f"first: {DCP_CONVERTER}")
    if any(n.startswith("mp_rank_") for n in names):
        raise CheckpointError(f"{folder}: a DeepSpeed/Megatron model-parallel checkpoint "
                              f"(mp_rank_*), which madyn does not load; convert it to a "
                              f"Hugging Face folder first: {MP_RANK_CONVERTER}")


def pickle_files(folder: Path) -> list[Path]:
    """The weight pickles of a checkpoint folder (never the optimizer's or the RNG's)."""
    out: set[Path] = set()
    for pat in WEIGHT_PICKLES:
        out |= {p for p in folder.glob(pat) if p.is_file()}
    return sorted(out)


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors weight files of a checkpoint: the shards its
    ``model.safetensors.index.json`` names (each must exist), else every ``*.safetensors``."""
    idx = folder / "model.safetensors.index.json"
    if idx.exists():
        shards = shard_names(idx)
        missing = [s for s in shards if not os.path.lexists(folder / s)]
        if missing:
            raise CheckpointError(f"{idx}: names shard(s) {missing} that are not in the "
                                  "folder (missing, or still being written)")
        return check_weight_files([folder / s for s in shards])
    return check_weight_files(sorted(folder.glob("*.safetensors")))


def weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """A checkpoint's weight files: its safetensors, else (``allow_pickle``) its weight
    pickles."""
    files = safetensors_files(folder)
    return files or (pickle_files(folder) if allow_pickle else [])


def check_checkpoint(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """Check one checkpoint folder before anything is built from it; returns its weight
    files (safetensors, or with ``allow_pickle`` its weight pickles when it holds no
    safetensors). CheckpointError naming the file and the reason otherwise: a distributed
    checkpoint, no ``config.json`` (still being written), a config that is not a
    decoder-only causal LM or names ``auto_map`` (custom code), incomplete or lying
    safetensors headers, a missing shard, layers that differ from the config's."""
    from madyn.architecture import ArchitectureError, check_decoder_only
    from madyn.measure.checkpoints import model_config

    refuse_distributed(folder)
    if not os.path.lexists(folder / "config.json"):  # anything else: read_json names it
        raise CheckpointError(f"{folder}: no config.json (incomplete: still being written?)")
    cfg = model_config(str(folder))
    where = folder / "config.json"
    refuse_remote_code(cfg, str(folder))
    try:
        check_decoder_only(cfg, str(where))
    except ArchitectureError as e:
        raise CheckpointError(str(e)) from None
    files = safetensors_files(folder)
    if files:
        check_config_matches_weights(str(folder), cfg, files)
        return files
    pickles = pickle_files(folder)
    if not pickles:
        raise CheckpointError(f"{folder}: no weight files (*.safetensors; incomplete: still "
                              "being written?)")
    if not allow_pickle:
        raise CheckpointError(
            f"{folder}: holds only PyTorch pickles ({', '.join(p.name for p in pickles)}); "
            "madyn reads safetensors, or with allow_pickle: true in the model's entry loads "
            "them with torch.load(weights_only=True)")
    config_layers(cfg, str(where))
    return pickles
