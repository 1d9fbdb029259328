"""The Hugging Face ``Trainer`` callback for live monitoring (needs ``transformers``, and
``accelerate`` for the Trainer: the ``monitor`` extra): :class:`MadynCallback`, a
:class:`madyn.measure.monitor.Monitor` of the trained model, by default in
``<output_dir>/madyn-monitor``, stepped by the Trainer's ``global_step`` (optimizer steps),
with the recipe from its optimizer and ``TrainingArguments`` and its planned last step
(``max_steps``). Importing this module imports transformers.
"""

from __future__ import annotations

from pathlib import Path

from madyn.measure.monitor import Monitor
from madyn.measure.monitor_inputs import check_arguments, recipe_from_optimizer
from madyn.measure.runs import MONITOR_DIR


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MadynCallback(_callback_base()):
    """HF ``Trainer`` callback: a :class:`Monitor` of the trained model, created at the
    start of training, measuring at the start (step 0, or the step a resumed run starts
    at, unless recorded), after every optimizer step on the schedule, and at the end of
    training (the last step). Recorded: the recipe from the Trainer's optimizer (lr,
    betas, eps, weight decay) and ``TrainingArguments`` (learning-rate schedule, warmup
    steps), and the planned last step (``max_steps``). Keyword arguments go to
    :class:`Monitor` (checked here, at construction); ``probe``: N x T token ids;
    ``out``: the folder (default ``<output_dir>/madyn-monitor``). Under distributed
    training (``torchrun``) every process makes its monitor: the main process writes, and
    the others join the probe only when the model is sharded (FSDP)."""

    def __init__(self, probe, out: str | Path | None = None, **monitor_kw) -> None:
        check_arguments(**monitor_kw)
        self.probe, self.out_dir, self.kw = probe, out, dict(monitor_kw)
        self.monitor: Monitor | None = None

    @staticmethod
    def _recipe(args, state, optimizer) -> dict:
        if optimizer is not None:
            rec = recipe_from_optimizer(optimizer)
        else:
            optim = str(getattr(args.optim, "value", args.optim))
            rec = {"optimizer": "adamw" if "adamw" in optim else optim,
                   "lr": float(args.learning_rate),
                   "betas": [float(args.adam_beta1), float(args.adam_beta2)],
                   "eps": float(args.adam_epsilon), "weight_decay": float(args.weight_decay)}
        rec["lr_scheduler"] = str(getattr(args.lr_scheduler_type, "value",
                                          args.lr_scheduler_type))
        if state.max_steps and state.max_steps > 0:
            rec["warmup_steps"] = int(args.get_warmup_steps(state.max_steps))
        return rec

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        kw_ = dict(self.kw)
        recipe = {**self._recipe(args, state, optimizer), **kw_.pop("recipe", {})}
        kw_.setdefault("max_steps", state.max_steps if state.max_steps > 0 else None)
        out = self.out_dir or Path(args.output_dir) / MONITOR_DIR
        self.monitor = Monitor(model, self.probe, out, recipe=recipe, **kw_)
        self.monitor(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.monitor is not None:
            self.monitor(state.global_step, model)

    def on_train_end(self, args, state, control, model=None, **kw):
        if self.monitor is not None:
            self.monitor.close(state.global_step, model)
