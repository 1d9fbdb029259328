"""The monitor under ``torch.distributed`` and ``torch.compile``, all found by structure
(``torch.distributed.is_initialized()``, ``get_rank()``, ``isinstance`` of the wrappers),
never by class names:

- :func:`rank`: this process's rank (0 when not distributed); rank 0 writes the tables;
- :func:`unwrapped`: the module behind DDP / ``nn.DataParallel`` (``.module``) and behind
  ``torch.compile`` (``OptimizedModule._orig_mod``), the one whose weights train;
- :func:`is_sharded`: FSDP2 (``fully_shard``: ``FSDPModule``, ``DTensor`` parameters) or
  FSDP1 (``FullyShardedDataParallel``): each rank holds a shard, so the probe's forward
  pass is a collective that every rank must run;
- :func:`agree`: rank 0's decision, the same on every rank (a collective);
- :func:`check_shardable`: refuses, in one line, a sharded model whose probe cannot run
  on every rank alike (FSDP1), instead of hanging;
- :func:`problems`: every rank's problem, so that all ranks refuse together.
"""

from __future__ import annotations

import contextlib
import os


class ShardedProbeError(RuntimeError):
    """A sharded (FSDP) model whose probe cannot run here; the one-line message says why."""


def initialized() -> bool:
    """Is a default ``torch.distributed`` process group up?"""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: the process group's, else (a monitor made before
    ``init_process_group``) the ``RANK`` that ``torchrun`` and Lightning's launcher give
    each process; 0 when not distributed."""
    import torch.distributed as dist

    if initialized():
        return dist.get_rank()
    given = os.environ.get("RANK", "0")
    return int(given) if given.isdigit() else 0


def unwrapped(model):
    """The module behind the wrappers of ``model``: DDP and ``nn.DataParallel`` (their
    ``.module``) and ``torch.compile`` (``_orig_mod``), repeatedly. FSDP1 is not
    unwrapped: its wrapper gathers the shards its inner module needs."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    plain = (DistributedDataParallel, torch.nn.DataParallel)
    compiled = _compiled_class()
    while True:
        if isinstance(model, plain):
            model = model.module
        elif compiled is not None and isinstance(model, compiled):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def eager():
    """Within the block compiled code is not used (``torch.compiler.set_stance(
    "force_eager")``): a model compiled in place (``model.compile()``) or whose layers
    were compiled runs its Python forward, so the probe's hooks see every layer and
    nothing is recompiled."""
    import torch

    stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if stance is None:  # a torch before 2.6: no stances
        yield
        return
    with stance("force_eager"):
        yield


def _compiled_class():
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # a torch without dynamo
        return None
    return OptimizedModule


def _fsdp1_class():
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    return FullyShardedDataParallel


def _fsdp2_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    return FSDPModule


def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def is_fsdp1(model) -> bool:
    """Is any module of ``model`` an FSDP1 ``FullyShardedDataParallel`` wrapper?"""
    cls = _fsdp1_class()
    return cls is not None and any(isinstance(m, cls) for m in model.modules())


def is_sharded(model) -> bool:
    """Does ``model`` hold only a shard of its weights on this rank (FSDP2's
    ``FSDPModule`` or ``DTensor`` parameters, or FSDP1), so that its forward pass gathers
    them from every rank?"""
    fsdp2, dtensor = _fsdp2_class(), _dtensor_class()
    if fsdp2 is not None and any(isinstance(m, fsdp2) for m in model.modules()):
        return True
    if dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters()):
        return True
    return is_fsdp1(model)


def check_shardable(model) -> None:
    """:class:`ShardedProbeError` (one line) for a sharded model the probe cannot run:
    FSDP1 (``FullyShardedDataParallel``). It flattens the parameters of the modules it
    wraps into one sharded ``FlatParameter``, so the decoder layers, found by their
    parameters, are not found (``use_orig_params=False``) or are found on some ranks and
    not on others (``use_orig_params=True``: a rank whose shard of a layer is empty), and a
    probe that some ranks start and others do not would wait for ever. FSDP2
    (``fully_shard``) keeps every module's parameters (``DTensor`` shards) and is
    probed on every rank."""
    if is_fsdp1(model):
        raise ShardedProbeError(
            "Monitor: the model is wrapped in FSDP1 (FullyShardedDataParallel), whose "
            "flattened parameter shards hide the decoder layers from the probe on some or "
            "all ranks (a probe then waits for ever); shard it with FSDP2 "
            "(torch.distributed.fsdp.fully_shard), which the monitor probes on every rank")


def problems(mine: str | None) -> list[str]:
    """Every rank's ``mine`` (a problem, or None), gathered on every rank (a collective);
    ``[mine]`` when not distributed."""
    if not initialized():
        return [mine]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def agree(value):
    """Rank 0's ``value`` on every rank (``broadcast_object_list``: a collective every rank
    must call); ``value`` itself when not distributed."""
    if not initialized():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
