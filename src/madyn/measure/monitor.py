"""Live monitoring: the statistics of :mod:`madyn.measure.statistics` measured while a model
trains, on a fixed probe batch, into a folder that a ``source: run`` suite reads directly.

- :class:`Monitor`: a hand-written loop (nanoGPT style): ``mon = Monitor(model, probe,
  "out/madyn")``, then ``mon(step)`` after each optimizer step and ``mon.close()`` at the
  end (or ``with Monitor(...) as mon:``);
- :class:`madyn.measure.monitor_hf.MadynCallback`: a ``transformers.TrainerCallback`` for
  the HF ``Trainer`` (also importable from here, as documented);
- :mod:`madyn.measure.monitor_lightning`: a Lightning ``Callback`` (needs ``lightning``).

At each step of the schedule (:func:`due`: 0, 1, 2, 4, ... ``log_until``, then every
``every`` steps) and at the last training step the probe runs with the model in eval mode
under ``inference_mode`` (``no_grad`` for a sharded model); afterwards every module's
train/eval mode and the RNG states (Python, NumPy, torch CPU and CUDA) are restored, so
training goes on exactly as without the monitor. Each step's table is
``<out>/step<N>.parquet``, the schema of ``madyn extract``
(:mod:`madyn.measure.stats_table`), written atomically; ``madyn_monitor.json`` (madyn's
marker of the folder) records the schedule, the recipe and the planned last step,
``probe_tokens.npy`` the probe, ``config.json`` the architecture and
``madyn_monitor.png`` the ratio of each layer against the step.

**Several processes** (``torch.distributed``: DDP, FSDP, launched by ``torchrun``, the HF
``Trainer`` or Lightning): make the monitor on every process. Rank 0 writes; under DDP
the other ranks do nothing (rank 0 measures the module behind the wrapper, no
collective); under FSDP (a sharded model) every rank runs the probe's forward pass (it
gathers the shards, a collective) and rank 0 writes, with rank 0's decision to probe
broadcast first so no rank waits alone. A ``torch.compile``'d model is probed through
the module behind it, eagerly (:mod:`madyn.measure.distributed`).

The monitor writes only into a folder it made (or one holding its
``madyn_monitor.json``); a folder of its own is resumed (a step already recorded is not
measured again, a different probe is refused). Bad arguments are refused at construction
with one line (:class:`MonitorError`, :mod:`madyn.measure.monitor_inputs`); a probe that
fails while training says so in one line and probing stops, training goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np

from madyn.measure import distributed
from madyn.measure.monitor_figure import draw_ratios
from madyn.measure.monitor_inputs import (
    EVERY,
    LOG_UNTIL,
    MonitorError,
    check_arguments,
    check_whole,
    checked_config,
    checked_probe,
    recipe_from_optimizer,
)
from madyn.measure.runs import MONITOR_FILE

MADE_BY = "madyn.measure.monitor"  # madyn_monitor.json's "made_by": the folder is the monitor's
FIGURE = "madyn_monitor.png"  # the ratio of each layer against the step
PROBE_FILE = "probe_tokens.npy"
# what the monitor writes into its folder (and nothing else)
OWN_FILES = (MONITOR_FILE, PROBE_FILE, "config.json", FIGURE)
log = logging.getLogger("madyn.measure.monitor")


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


def _is_ours(folder: Path) -> bool:
    """Does ``folder`` hold the monitor's ``madyn_monitor.json`` (its marker; an older
    madyn's record, without ``made_by``, counts)?"""
    from madyn.io import read_json

    try:
        rec = read_json(folder / MONITOR_FILE)
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and (rec.get("made_by") == MADE_BY or
                                      {"log_until", "every", "model_class"} <= set(rec))


class Monitor:
    """Records the statistics of ``model`` on ``probe`` (N x T token ids) at the steps of
    the schedule and at the last step, into ``out``.

    ``extreme_tokens``: also measure ``sink_mass`` (transformers models only; default:
    on for them); ``batch_size``: probe sequences per forward pass (default: all);
    ``config``: the architecture to record as ``config.json`` (default: a transformers
    model's own, else the attributes of ``model.config``); ``optimizer``: the optimizer,
    whose lr, betas, eps and weight decay are recorded; ``recipe``: keys to record over
    those; ``max_steps``: the planned last step; ``live``: a ``dvclive.Live`` to log each
    layer's top1/median/ratio (mean over the probe) to; ``verbose``: print a line per probe
    to stderr (it always goes to the ``madyn.measure.monitor`` logger); ``figure``: keep
    ``madyn_monitor.png`` up to date.

    Under ``torch.distributed`` make it on every rank (see the module's docstring): rank
    0 writes; for a sharded (FSDP) model construction and each due step are collectives.

    Refused at construction (:class:`MonitorError`, one line): a bad schedule or batch
    size, a probe the model cannot read, a config that cannot be written, a folder madyn
    did not make, a folder of another probe, a sharded model whose probe cannot run here.
    """

    def __init__(self, model, probe, out: str | Path, *, log_until: int = LOG_UNTIL,
                 every: int = EVERY, extreme_tokens: bool | None = None,
                 batch_size: int | None = None, config: dict | None = None,
                 recipe: dict | None = None, live=None, optimizer=None,
                 max_steps: int | None = None, verbose: bool = False,
                 figure: bool = True) -> None:
        from madyn.measure.statistics import is_transformers_model

        check_arguments(log_until, every, batch_size)
        if max_steps is not None:
            check_whole("max_steps", max_steps, 0)
        self.model, self.out = model, Path(out)
        inner = distributed.unwrapped(model)
        self.writer = distributed.rank() == 0  # the one process that writes
        self.sharded = distributed.is_sharded(inner)  # the probe is a collective
        if self.sharded:
            try:
                distributed.check_shardable(inner)
            except distributed.ShardedProbeError as e:
                raise MonitorError(str(e)) from None
        self.hf = is_transformers_model(inner)
        if extreme_tokens and not self.hf:
            raise MonitorError("Monitor: extreme_tokens=True needs a transformers model "
                               f"({type(model).__name__} is not one)")
        self.config = checked_config(inner, config, self.hf)
        self.probe = checked_probe(inner, probe, self.config, self.hf)
        self.extreme_tokens = self.hf if extreme_tokens is None else bool(extreme_tokens)
        self.batch_size = batch_size or len(self.probe)
        self.log_until, self.every, self.live = log_until, every, live
        self.recipe = {**(recipe_from_optimizer(optimizer) if optimizer is not None
                          else {}), **(recipe or {})}
        self.max_steps = None if max_steps is None else int(max_steps)
        self.verbose, self.figure = verbose, figure
        buf = io.BytesIO()
        np.save(buf, self.probe)
        self._probe_bytes = buf.getvalue()
        self.tokens_sha = hashlib.sha256(self._probe_bytes).hexdigest()
        self.seconds = 0.0  # spent measuring, in total (the figure included)
        self.figure_seconds = 0.0  # of which drawing madyn_monitor.png
        self.failed: str | None = None  # what stopped probing
        self.last_step: int | None = None  # the last step this monitor was called at
        self.ratios: dict[int, np.ndarray] = {}  # step -> each layer's mean ratio
        self.written: list[Path] = []  # the tables this process wrote
        self._earlier = self._claimed()  # steps recorded by an earlier (resumed) run
        self._started = False

    def _claimed(self) -> set[int]:
        """:meth:`_claim` on the writing rank; for a sharded model its outcome (the steps
        recorded, or the refusal) is broadcast, so every rank goes on or stops alike."""
        if not self.sharded:
            return self._claim() if self.writer else set()
        from madyn.measure.statistics import decoder_layers

        steps, mine = [], None
        try:
            decoder_layers(distributed.unwrapped(self.model))  # found alike on every rank
            if self.writer:
                steps = sorted(self._claim())
        except (MonitorError, ValueError) as e:
            mine = str(e)
        found = [(r, p) for r, p in enumerate(distributed.problems(mine)) if p is not None]
        if found:
            rank, why = found[0]
            raise MonitorError(why if rank == 0 or why.startswith("Monitor:")
                               else f"Monitor: rank {rank}: {why}")
        return set(distributed.agree(steps))

    # ------------------------------------------------------------------ the folder
    def _claim(self) -> set[int]:
        """Check that ``out`` may be written (absent, empty, or the monitor's own folder
        of the same probe); the steps its tables record (their ratios into
        :attr:`ratios`)."""
        from madyn.io import sha256_file
        from madyn.measure.runs import step_of
        from madyn.measure.stats_table import read_stats

        out = self.out
        if not out.exists() and not out.is_symlink():
            return set()
        if not out.is_dir():
            raise MonitorError(f"Monitor: {out} is not a folder; give a folder for the "
                               "monitor's tables")
        if not _is_ours(out):
            entries = sorted(p.name for p in out.iterdir())
            if entries:
                raise MonitorError(
                    f"Monitor: {out} holds {entries[0]}"
                    f"{f' (and {len(entries) - 1} more)' if len(entries) > 1 else ''}, which "
                    f"madyn did not write (no {MONITOR_FILE}); give a new or empty folder")
            return set()
        shas = {self.tokens_sha}
        if (out / PROBE_FILE).is_file():
            try:
                earlier = np.load(out / PROBE_FILE, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise MonitorError(f"Monitor: {out / PROBE_FILE}: unreadable ({e})") from None
            if not np.array_equal(earlier, self.probe) or earlier.shape != self.probe.shape:
                raise MonitorError(
                    f"Monitor: probe: differs from the one this folder's tables were "
                    f"measured on ({out / PROBE_FILE}); give the same probe to resume, or "
                    "another folder")
            shas.add(sha256_file(out / PROBE_FILE))
        steps = set()
        for f in sorted(out.glob("step*.parquet")):
            step = step_of(f.stem)
            if step is None:
                continue
            try:
                df, meta = read_stats(f)
            except Exception as e:  # a table madyn cannot read is not resumed
                raise MonitorError(f"Monitor: {f}: unreadable ({e}); move it away to "
                                   "resume in this folder") from None
            if meta.get("tokens_sha256") not in shas:
                raise MonitorError(
                    f"Monitor: probe: {f.name} in {out} was measured on another probe "
                    f"(tokens_sha256 {str(meta.get('tokens_sha256'))[:12]}...); give "
                    "another folder")
            steps.add(step)
            self.ratios[step] = df.groupby("layer")["ratio"].mean().to_numpy()
        return steps

    def _start(self) -> None:
        from madyn.io import atomic_path, jsonable, read_json, write_json

        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / PROBE_FILE) as tmp:
            tmp.write_bytes(self._probe_bytes)
        write_json(self.out / "config.json", jsonable(self.config))
        earlier: dict = {}
        if (self.out / MONITOR_FILE).is_file():
            with contextlib.suppress(OSError, ValueError):
                earlier = read_json(self.out / MONITOR_FILE)
        earlier = earlier if isinstance(earlier, dict) else {}
        self._record = {
            "made_by": MADE_BY, "log_until": self.log_until, "every": self.every,
            "recipe": {**(earlier.get("recipe") or {}), **self.recipe},
            "max_steps": self.max_steps if self.max_steps is not None
            else earlier.get("max_steps"),
            "extreme_tokens": self.extreme_tokens, "model_class": type(self.model).__name__,
            "n_seqs": int(self.probe.shape[0]), "seq_len": int(self.probe.shape[1])}
        write_json(self.out / MONITOR_FILE, self._record)
        self._started = True

    # ------------------------------------------------------------------ probing
    def __call__(self, step: int, model=None):
        """Measure at ``step`` when it is due and not recorded yet (else nothing); returns
        the table or None. ``model``: the model to measure when not the one given at
        construction. A run that starts at step 0 in a folder holding an earlier run's
        tables is refused (:class:`MonitorError`, before anything is trained); a probe
        that fails is said in one line on stderr and probing stops."""
        if self.last_step is None and step == 0 and self._earlier:
            raise MonitorError(
                f"Monitor: {self.out} holds the tables of an earlier run (steps "
                f"{min(self._earlier)}-{max(self._earlier)}) and this run starts at step 0; "
                "give another folder (a resumed run starts at its checkpoint's step)")
        self.last_step = int(step)
        if not due(step, self.log_until, self.every):
            return None
        return self._probe(int(step), model)

    def close(self, step: int | None = None, model=None):
        """The end of training: measure the last step (``step``, default the last one
        the monitor was called at) unless it is recorded already; returns the table or
        None."""
        step = self.last_step if step is None else int(step)
        if step is None:
            return None
        self.last_step = step
        return self._probe(step, model)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:  # not after a failure of the training itself
            self.close()

    def _probe(self, step: int, model):
        """Measure ``step`` unless it is recorded, or probing has stopped; a failure stops
        probing with one line, never the training."""
        go = self.failed is None and step not in self.ratios and step not in self._earlier
        if self.sharded:  # every rank runs the forward pass, or none does
            go = distributed.agree(go)
        elif not self.writer:
            return None
        if not go:
            return None
        try:
            return self.measure(step, model)
        except Exception as e:  # the monitor must never stop the training it watches
            why = " ".join(f"{type(e).__name__}: {e}".split())
            self.failed = f"step {step}: {why}"
            if not self.writer:
                return None  # rank 0 says it
            print(f"madyn monitor: stopped probing at step {step} ({why}); training goes "
                  f"on, the tables recorded so far stay in {self.out}", file=sys.stderr,
                  flush=True)
            log.info("stopped probing at step %d: %s", step, why)  # printed above
            with contextlib.suppress(Exception):
                from madyn.io import write_json

                if self._started and _is_ours(self.out):
                    write_json(self.out / MONITOR_FILE, {**self._record, "failed": self.failed})
            return None

    def measure(self, step: int, model=None):
        """Measure now, whatever the schedule; writes ``step<step>.parquet`` (and the
        figure); failures raise."""
        from madyn.measure.extract import versions
        from madyn.measure.statistics import measure
        from madyn.measure.stats_table import write_stats

        t0 = time.perf_counter()
        model = distributed.unwrapped(model if model is not None else self.model)
        if self.writer and not self._started:
            self._start()
        with untouched(model), distributed.eager():
            df = measure(model, self.probe, batch_size=self.batch_size,
                         extreme_tokens=self.extreme_tokens, sharded=self.sharded)
        if not self.writer:  # a sharded model's other ranks: the forward pass only
            self.ratios[int(step)] = df.groupby("layer")["ratio"].mean().to_numpy()
            return df
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        meta = {"model": None, "step": int(step), "source": "monitor", "dtype": dtype,
                "device": str(next(model.parameters()).device), "live": True,
                "n_seqs": int(self.probe.shape[0]), "seq_len": int(self.probe.shape[1]),
                "n_layers": int(df["layer"].max()) + 1, "median": "lower (torch.median)",
                "extreme_tokens": self.extreme_tokens, "tokens_sha256": self.tokens_sha,
                "seconds": round(time.perf_counter() - t0, 4), **versions()}
        write_stats(df, meta, self.out / f"step{int(step)}.parquet")
        self.written.append(self.out / f"step{int(step)}.parquet")
        self.ratios[int(step)] = df.groupby("layer")["ratio"].mean().to_numpy()
        if self.live is not None:
            self._log_live(df, step)
        if self.figure:
            t1 = time.perf_counter()
            draw_ratios(self.ratios, type(self.model).__name__, self.out / FIGURE)
            self.figure_seconds += time.perf_counter() - t1
        took = time.perf_counter() - t0
        self.seconds += took
        self._say(step, took)
        return df

    def _say(self, step: int, took: float) -> None:
        r = self.ratios[step]
        top = int(np.nanargmax(r)) if np.isfinite(r).any() else 0
        line = (f"madyn monitor: step {step}: ratio by layer "
                f"{' '.join(f'{x:.3g}' for x in r)} (largest {r[top]:.3g} at layer {top}; "
                f"{took:.2f} s)")
        log.info(line)
        if self.verbose:
            print(line, file=sys.stderr, flush=True)

    def _log_live(self, df, step: int) -> None:
        means = df.groupby("layer")[["top1", "median", "ratio"]].mean()
        self.live.step = int(step)
        for layer, row in means.iterrows():
            for k in ("top1", "median", "ratio"):
                self.live.log_metric(f"madyn/layer{layer}/{k}", float(row[k]), plot=True)
        self.live.make_summary()


def __getattr__(name: str):
    """``from madyn.measure.monitor import MadynCallback`` (README, docs/your-own-run.md):
    :mod:`madyn.measure.monitor_hf`'s, imported on first use (it imports transformers)."""
    if name == "MadynCallback":
        from madyn.measure.monitor_hf import MadynCallback

        return MadynCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
