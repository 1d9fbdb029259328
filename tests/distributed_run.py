"""Training launched as several processes (``torchrun --nproc_per_node 2``, gloo, CPU),
with and without madyn's monitor: the runs tests/test_monitor_distributed.py checks.

``python -m torch.distributed.run --standalone --nproc_per_node 2 --tee 3
tests/distributed_run.py KIND CORPUS OUT``; KIND is ``trainer`` (the HF ``Trainer``, DDP),
``lightning`` (``strategy="ddp"``), ``fsdp`` (FSDP2 ``fully_shard``, a hand-written loop)
or ``fsdp1`` (FSDP1, whose monitor is refused). Each trains a tiny GPT-NeoX with dropout
twice in one process group, without and with the monitor (verbose: a line per probe),
and rank 0 saves the final weights of both to ``OUT/plain.safetensors`` and
``OUT/watched.safetensors``; the monitor's folder is ``OUT/mon``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

STEPS = 6  # optimizer steps of each run
EVERY = 5  # the monitor's schedule: 0, 1, 2, 4, 5, then the last step (6)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _save(model_or_state, path: Path) -> None:
    """Rank 0 saves the full weights (a sharded model's gathered on every rank first)."""
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    state = (model_or_state if isinstance(model_or_state, dict)
             else model_or_state.state_dict())
    full = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            .contiguous() for k, v in state.items()}
    if _rank() == 0:
        save_file(full, str(path))


def trainer(corpus: Path, out: Path) -> None:
    from tests.trainer_run import train

    for name, monitor in (("plain", False), ("watched", True)):
        model = train(corpus, out / f"hf-{name}", steps=STEPS, monitor=monitor,
                      dropout=0.1, every=EVERY, save=False, verbose=True,
                      monitor_out=out / "mon")
        _save(model, out / f"{name}.safetensors")


def lightning(corpus: Path, out: Path) -> None:
    import lightning as L
    import torch
    from transformers import GPTNeoXForCausalLM

    from madyn.measure.monitor_lightning import MadynLightningCallback
    from tests.trainer_run import SEQ_LEN, probe_tokens, tiny_config

    ids = torch.as_tensor(np.load(corpus / "train.npy").astype(np.int64))
    data = [ids[i * SEQ_LEN:(i + 1) * SEQ_LEN] for i in range(64)]

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = GPTNeoXForCausalLM(tiny_config(300, dropout=0.1))

        def training_step(self, batch, _):
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    for name, monitor in (("plain", False), ("watched", True)):
        L.seed_everything(0, verbose=False)
        mod = Module()
        callbacks = [MadynLightningCallback(probe_tokens(corpus), out / "mon", log_until=4,
                                            every=EVERY, verbose=True)] if monitor else []
        L.Trainer(max_steps=STEPS, accelerator="cpu", devices=2, strategy="ddp",
                  logger=False, callbacks=callbacks, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(
            mod, torch.utils.data.DataLoader(data, batch_size=4, shuffle=True))
        _save(mod.model, out / f"{name}.safetensors")


def _sharded_model(fsdp1: bool):
    import torch
    from transformers import GPTNeoXForCausalLM

    from tests.trainer_run import tiny_config

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(tiny_config(300, dropout=0.1))
    if fsdp1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, device_id=torch.device("cpu"))
    from torch.distributed.fsdp import fully_shard

    for layer in model.gpt_neox.layers:  # each layer its own shard group, then the rest
        fully_shard(layer)
    return fully_shard(model)


def fsdp(corpus: Path, out: Path) -> None:
    """A hand-written loop over an FSDP2 model: the monitor is made on every rank."""
    import torch

    from madyn.measure.monitor import Monitor
    from tests.trainer_run import SEQ_LEN, probe_tokens

    ids = torch.as_tensor(np.load(corpus / "train.npy").astype(np.int64))
    for name, monitor in (("plain", False), ("watched", True)):
        model = _sharded_model(fsdp1=False)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(100 + _rank())  # each rank its own batches
        torch.manual_seed(1 + _rank())  # dropout
        mon = (Monitor(model, probe_tokens(corpus), out / "mon", log_until=4, every=EVERY,
                       optimizer=opt, max_steps=STEPS, verbose=True)
               if monitor else None)
        model.train()
        for step in range(STEPS + 1):
            if mon is not None:
                mon(step)
            if step == STEPS:
                break
            starts = torch.randint(0, len(ids) - SEQ_LEN, (4,), generator=gen)
            x = torch.stack([ids[s:s + SEQ_LEN] for s in starts.tolist()])
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
        if mon is not None:
            mon.close()
        _save(model, out / f"{name}.safetensors")


def fsdp1(corpus: Path, out: Path) -> None:
    """FSDP1: the monitor is refused at construction, on every rank, with one line."""
    from madyn.measure.monitor import Monitor
    from madyn.measure.monitor_inputs import MonitorError
    from tests.trainer_run import probe_tokens

    model = _sharded_model(fsdp1=True)
    try:
        Monitor(model, probe_tokens(corpus), out / "mon")
    except MonitorError as e:
        print(f"refused: {e}", flush=True)
        sys.exit(2)
    print("not refused", flush=True)


def main() -> None:
    kind, corpus, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if kind in ("fsdp", "fsdp1"):
        import torch.distributed as dist

        dist.init_process_group("gloo")
    {"trainer": trainer, "lightning": lightning, "fsdp": fsdp, "fsdp1": fsdp1}[kind](
        corpus, out)
    import torch.distributed as dist

    if dist.is_initialized():  # what ran: the world the test expects
        print(f"world {dist.get_world_size()} {dist.get_backend()}", flush=True)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` importable
    main()
