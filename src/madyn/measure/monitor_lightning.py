"""A Lightning ``Callback`` for live monitoring (needs the ``lightning`` package: the
``monitor`` extra): a :class:`madyn.measure.monitor.Monitor` of the LightningModule, measuring at
step 0 and after every optimizer step on the schedule (the step:
``trainer.global_step``)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from madyn.measure.monitor import Monitor


class MadynLightningCallback(Callback):
    """``MadynLightningCallback(probe, out, **monitor_kw)``: ``probe`` N x T token ids,
    ``out`` the folder; keyword arguments go to :class:`madyn.measure.monitor.Monitor`. The
    module measured is ``pl_module.model`` when it has one (the usual wrapper of a
    transformers or nanoGPT model), else ``pl_module`` itself."""

    def __init__(self, probe, out: str | Path, **monitor_kw) -> None:
        self.probe, self.out, self.kw = probe, out, monitor_kw
        self.monitor: Monitor | None = None

    @staticmethod
    def _model(pl_module):
        return getattr(pl_module, "model", pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # one process records (distributed training)
            return
        self.monitor = Monitor(self._model(pl_module), self.probe, self.out, **self.kw)
        self.monitor(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is not None:
            self.monitor(trainer.global_step, self._model(pl_module))
