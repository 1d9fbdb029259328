"""A Lightning ``Callback`` for live monitoring (needs the ``lightning`` package: the
``monitor`` extra): a :class:`madyn.measure.monitor.Monitor` of the LightningModule, measuring at
the start, after every optimizer step on the schedule and at the end of training (the
step: ``trainer.global_step``), with the recipe from the trainer's optimizer and its
planned last step."""

from __future__ import annotations

import math
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from madyn.measure.monitor import Monitor
from madyn.measure.monitor_inputs import check_arguments, recipe_from_optimizer


class MadynLightningCallback(Callback):
    """``MadynLightningCallback(probe, out, **monitor_kw)``: ``probe`` N x T token ids,
    ``out`` the folder; keyword arguments go to :class:`madyn.measure.monitor.Monitor` (checked
    here, at construction). The module measured is ``pl_module.model`` when it has one
    (the usual wrapper of a transformers or nanoGPT model), else ``pl_module`` itself.
    Under ``strategy="ddp"`` or ``"fsdp"`` every process makes its monitor: global rank 0
    writes, the others join the probe only when the model is sharded."""

    def __init__(self, probe, out: str | Path, **monitor_kw) -> None:
        check_arguments(**monitor_kw)
        self.probe, self.out, self.kw = probe, out, dict(monitor_kw)
        self.monitor: Monitor | None = None

    @staticmethod
    def _model(pl_module):
        return getattr(pl_module, "model", pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        kw = dict(self.kw)
        if trainer.optimizers:
            kw["recipe"] = {**recipe_from_optimizer(trainer.optimizers[0]),
                            **kw.get("recipe", {})}
        kw.setdefault("max_steps", _planned_steps(trainer))
        self.monitor = Monitor(self._model(pl_module), self.probe, self.out, **kw)
        self.monitor(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is not None:
            self.monitor(trainer.global_step, self._model(pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.close(trainer.global_step, self._model(pl_module))


def _planned_steps(trainer) -> int | None:
    """The planned last step: ``max_steps``, else Lightning's estimate from the epochs
    and the data (None when unknown or endless)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        n = trainer.estimated_stepping_batches
    except Exception:  # no way to know (e.g. an iterable dataset of unknown length)
        return None
    return int(n) if isinstance(n, (int, float)) and math.isfinite(n) else None
