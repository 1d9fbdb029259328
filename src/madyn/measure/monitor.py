"""Live monitoring: the statistics of :mod:`madyn.measure.statistics` measured while a model
trains, on a fixed probe batch, into a folder that a ``source: run`` suite reads directly.

- :class:`Monitor`: a hand-written loop (nanoGPT style): ``mon = Monitor(model, probe,
  "out/madyn")``, then ``mon(step)`` after each optimizer step;
- :class:`MadynCallback`: a ``transformers.TrainerCallback`` for the HF ``Trainer``;
- :mod:`madyn.measure.monitor_lightning`: a Lightning ``Callback`` (needs ``lightning``).

At each step of the schedule (:func:`due`: 0, 1, 2, 4, ... ``log_until``, then every
``every`` steps) the probe runs with the model in eval mode under ``inference_mode``;
afterwards every module's train/eval mode and the RNG states (Python, NumPy, torch CPU and
CUDA) are restored, so training goes on exactly as without the monitor. Each step's table
is ``<out>/step<N>.parquet``, the schema of ``madyn extract``
(:mod:`madyn.measure.stats_table`), written atomically; ``madyn_monitor.json`` records the
schedule and the recipe, ``probe_tokens.npy`` the probe and ``config.json`` the
architecture (transformers models).
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

import numpy as np

from madyn.measure.runs import MONITOR_DIR, MONITOR_FILE

LOG_UNTIL = 64  # the default schedule: 0 and powers of two up to here ...
EVERY = 100  # ... then every this many steps


def due(step: int, log_until: int = LOG_UNTIL, every: int = EVERY) -> bool:
    """Is ``step`` on the monitor's schedule (0, powers of two <= ``log_until``, multiples
    of ``every``)?"""
    if step == 0 or step % every == 0:
        return True
    return step <= log_until and step & (step - 1) == 0


@contextlib.contextmanager
def untouched(model):
    """Within the block the model is in eval mode; afterwards each module's mode and the
    Python, NumPy and torch (CPU, CUDA) RNG states are as before."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    model.eval()
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


class Monitor:
    """Records the statistics of ``model`` on ``probe`` (N x T token ids) at the steps of
    the schedule, into ``out``.

    ``extreme_tokens``: also measure ``sink_mass`` (default: on for transformers models,
    off otherwise, where it is NaN); ``batch_size``: probe sequences per forward pass;
    ``config``: the architecture to record (default: a transformers model's own);
    ``recipe``: {optimizer, lr, eps} to record for the feature table; ``live``: a
    ``dvclive.Live`` to log each layer's top1/median (mean over the probe) to.
    """

    def __init__(self, model, probe, out: str | Path, *, log_until: int = LOG_UNTIL,
                 every: int = EVERY, extreme_tokens: bool | None = None,
                 batch_size: int | None = None, config: dict | None = None,
                 recipe: dict | None = None, live=None) -> None:
        from madyn.measure.checkpoints import check_tokens
        from madyn.measure.statistics import config_value, is_transformers_model

        self.model, self.out = model, Path(out)
        vocab = config_value(model, ("vocab_size",))
        self.probe = check_tokens(np.asarray(probe), vocab or np.iinfo(np.int64).max,
                                  "monitor probe")
        self.hf = is_transformers_model(model)
        self.extreme_tokens = self.hf if extreme_tokens is None else extreme_tokens
        self.batch_size = batch_size or len(self.probe)
        self.log_until, self.every, self.live = log_until, every, live
        self.recipe = dict(recipe or {})
        self.config = config if config is not None else (
            model.config.to_dict() if self.hf else None)
        self.seconds = 0.0  # spent measuring, in total
        self._started = False

    def _start(self) -> None:
        from madyn.io import atomic_path, jsonable, sha256_file, write_json

        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "probe_tokens.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.probe)
        self.tokens_sha = sha256_file(self.out / "probe_tokens.npy")
        if self.config is not None:
            write_json(self.out / "config.json", jsonable(self.config))
        write_json(self.out / MONITOR_FILE, {
            "log_until": self.log_until, "every": self.every, "recipe": self.recipe,
            "extreme_tokens": self.extreme_tokens, "model_class": type(self.model).__name__,
            "n_seqs": int(self.probe.shape[0]), "seq_len": int(self.probe.shape[1])})
        self._started = True

    def __call__(self, step: int, model=None):
        """Measure at ``step`` when it is due (else nothing); returns the table or None.
        ``model``: the model to measure when not the one given at construction."""
        if not due(step, self.log_until, self.every):
            return None
        return self.measure(step, model)

    def measure(self, step: int, model=None):
        """Measure now, whatever the schedule; writes ``step<step>.parquet``."""
        from madyn.measure.extract import versions
        from madyn.measure.statistics import measure
        from madyn.measure.stats_table import write_stats

        t0 = time.perf_counter()
        model = model if model is not None else self.model
        if not self._started:
            self._start()
        with untouched(model):
            df = measure(model, self.probe, batch_size=self.batch_size,
                         extreme_tokens=self.extreme_tokens)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        meta = {"model": None, "step": int(step), "source": "monitor", "dtype": dtype,
                "device": str(next(model.parameters()).device), "live": True,
                "n_seqs": int(self.probe.shape[0]), "seq_len": int(self.probe.shape[1]),
                "n_layers": int(df["layer"].max()) + 1, "median": "lower (torch.median)",
                "extreme_tokens": self.extreme_tokens, "tokens_sha256": self.tokens_sha,
                "seconds": round(time.perf_counter() - t0, 4), **versions()}
        write_stats(df, meta, self.out / f"step{int(step)}.parquet")
        if self.live is not None:
            self._log_live(df, step)
        self.seconds += time.perf_counter() - t0
        return df

    def _log_live(self, df, step: int) -> None:
        means = df.groupby("layer")[["top1", "median", "ratio"]].mean()
        self.live.step = int(step)
        for layer, row in means.iterrows():
            for k in ("top1", "median", "ratio"):
                self.live.log_metric(f"madyn/layer{layer}/{k}", float(row[k]), plot=True)
        self.live.make_summary()


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MadynCallback(_callback_base()):
    """HF ``Trainer`` callback: a :class:`Monitor` of the trained model, created at the
    start of training (the recipe from ``TrainingArguments``: optimizer, learning rate,
    Adam epsilon), measuring at step 0 and after every optimizer step on the schedule.
    Keyword arguments go to :class:`Monitor`; ``probe``: N x T token ids; ``out``: the
    folder (default ``<output_dir>/madyn-monitor``). Under distributed training only the
    main process measures."""

    def __init__(self, probe, out: str | Path | None = None, **monitor_kw) -> None:
        self.probe, self.out_dir, self.kw = probe, out, monitor_kw
        self.monitor: Monitor | None = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        if not state.is_world_process_zero:  # one process records (distributed training)
            return
        optim = str(getattr(args.optim, "value", args.optim))
        recipe = {"optimizer": "adamw" if "adamw" in optim else optim,
                  "lr": float(args.learning_rate), "eps": float(args.adam_epsilon),
                  **self.kw.pop("recipe", {})}
        out = self.out_dir or Path(args.output_dir) / MONITOR_DIR
        self.monitor = Monitor(model, self.probe, out, recipe=recipe, **self.kw)
        self.monitor(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.monitor is not None:
            self.monitor(state.global_step, model)
