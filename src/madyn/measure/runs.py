"""A researcher's own training run (a suite's ``source: run``): the checkpoints a trainer
wrote in a folder, found by layout, each checked before anything is built from it, or the
tables a live :mod:`madyn.measure.monitor` wrote there.

Layouts (the step from the folder name): ``checkpoint-<N>`` (HF ``Trainer``; the step from
its ``trainer_state.json`` ``global_step`` when there), ``step<N>``, ``step-<N>``,
``global_step<N>``, ``iter_<N>``, or the entry's ``step_pattern`` (a regex whose one group
is the step, matched against the whole name; :func:`check_step_pattern` says which
patterns are refused so that matching stays fast). A step beyond int64 is skipped. Each
checkpoint is a Hugging Face folder: ``config.json`` plus safetensors weights (single, or
shards named by ``model.safetensors.index.json``); PyTorch pickles only with
``allow_pickle`` (then loaded with ``torch.load(weights_only=True)``, never a full
unpickling). Distributed checkpoints
(torch DCP, DeepSpeed/Megatron ``mp_rank_*``) are refused naming the converter to run first.

Whatever cannot be measured (an incomplete checkpoint still being written, two folders for
one step, a stray entry, a bad file) is skipped with its reason; a model with no usable
checkpoint stops with a message naming the model and the folder.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.checkpoints import refuse_remote_code
from madyn.measure.config_values import config_layers
from madyn.measure.config_vs_weights import check_config_matches_weights
from madyn.measure.safetensors_files import check_weight_files, shard_names

LAYOUTS = (r"checkpoint-(\d+)", r"step(\d+)", r"step-(\d+)", r"global_step(\d+)",
           r"iter_(\d+)")
MONITOR_FILE = "madyn_monitor.json"  # a folder written by madyn.measure.monitor
MONITOR_DIR = "madyn-monitor"  # the HF callback's folder inside the Trainer's output_dir
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


class RunError(ValueError):
    """A run folder or model entry madyn cannot analyse; the message names it."""


@dataclass
class RunScan:
    """What one model entry's folder holds: usable checkpoints (step -> folder), live
    monitor tables (step -> Parquet) and what was skipped (name -> reason)."""

    folder: Path
    checkpoints: dict[int, Path] = field(default_factory=dict)
    live: dict[int, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        return sorted(self.live or self.checkpoints)

    def last(self) -> Path:
        """The folder holding the newest architecture: the last checkpoint, or the
        monitor folder."""
        return self.folder if self.live else self.checkpoints[max(self.checkpoints)]


def _real_dir(path: Path, where: str) -> Path:
    """``path`` as an existing folder, or RunError naming it (a symlink loop included)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise RunError(f"{where}: {path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunError(f"{where}: {path} is not a folder")
    return path


MAX_STEP = 2**63 - 1  # every table holds steps as int64
MAX_VARIABLE_REPEATS = 3  # in a step_pattern: names are at most 255 characters, so a
# failed match backtracks at most about 255**3 / 6 = 2.8 M steps


def check_step_pattern(pattern: str) -> None:
    """ValueError saying why ``pattern`` cannot be a ``step_pattern``, whose matching time
    must stay bounded and whose group must be the step: a regex with exactly one
    capturing group, not optional (not under a repeat or an alternation), matching only
    digits (at least one); no repeat inside a repeat (nested quantifiers) or alternation
    under a repeat (either backtracks exponentially in the name's length); at most
    :data:`MAX_VARIABLE_REPEATS` repeats of variable length (``*``, ``+``, ``?``,
    ``{m,n}``); no back-references or conditionals."""
    import re._constants as c
    import re._parser as sre

    try:
        tree = sre.parse(pattern)
    except re.error as e:
        raise ValueError(f"not a regex ({e})") from None
    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT)
    groups, variable = [], 0

    def digits_only(sub) -> bool:
        for op, av in sub:
            if op in repeats:
                if not digits_only(av[2]):
                    return False
            elif op is c.IN:
                if not all((o is c.CATEGORY and a is c.CATEGORY_DIGIT)
                           or (o is c.RANGE and 48 <= a[0] <= a[1] <= 57)
                           or (o is c.LITERAL and 48 <= a <= 57) for o, a in av):
                    return False
            elif not (op is c.LITERAL and 48 <= av <= 57):
                return False
        return True

    def walk(sub, in_repeat: bool, optional: bool) -> None:
        nonlocal variable
        for op, av in sub:
            if op in repeats:
                lo, hi, body = av
                if in_repeat and hi > 1:
                    raise ValueError("a repeat inside a repeat (nested quantifiers: "
                                     "matching time grows exponentially with the name)")
                variable += lo != hi
                walk(body, in_repeat or hi > 1, optional or lo == 0)
            elif op is c.BRANCH:
                if in_repeat:
                    raise ValueError("an alternation (|) under a repeat (matching time "
                                     "grows exponentially with the name)")
                for alt in av[1]:
                    walk(alt, in_repeat, True)
            elif op is c.SUBPATTERN:
                if av[0] is not None:
                    groups.append((av[3], optional or in_repeat))
                walk(av[3], in_repeat, optional)
            elif op is c.ATOMIC_GROUP:
                walk(av, in_repeat, optional)
            elif op in (c.ASSERT, c.ASSERT_NOT):
                walk(av[1], in_repeat, True)
            elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
                raise ValueError("a back-reference or conditional (not needed to name a "
                                 "step, and slow to match)")

    walk(tree, False, False)
    if len(groups) != 1:
        raise ValueError(f"needs a group (...) that captures the step: exactly one group, "
                         f"found {len(groups)} (use (?:...) for any other)")
    body, optional = groups[0]
    if optional:
        raise ValueError("the step's group is optional (under a repeat or an "
                         "alternation): every match must capture a step")
    if not digits_only(body):
        raise ValueError("the step's group must match only digits, e.g. (\\d+)")
    if body.getwidth()[0] < 1:
        raise ValueError("the step's group must match at least one digit, e.g. (\\d+)")
    if variable > MAX_VARIABLE_REPEATS:
        raise ValueError(f"{variable} repeats of variable length; at most "
                         f"{MAX_VARIABLE_REPEATS} keep its matching time bounded")


def step_of(name: str, step_pattern: str | None = None) -> int | None:
    """The step a checkpoint's folder name states (None: not a checkpoint name).
    ``step_pattern``: checked by :func:`check_step_pattern` first."""
    pats = ((step_pattern,) if step_pattern else ()) + LAYOUTS
    for p in pats:
        m = re.fullmatch(p, name)
        if m:
            return int(m.group(1))
    return None


def _trainer_step(folder: Path) -> int | None:
    """``global_step`` of an HF Trainer's ``trainer_state.json`` (None when absent or not
    a whole number)."""
    from madyn.io import read_json

    f = folder / "trainer_state.json"
    if not f.is_file():
        return None
    try:
        state = read_json(f)
    except (OSError, ValueError):
        return None
    g = state.get("global_step") if isinstance(state, dict) else None
    return g if isinstance(g, int) and not isinstance(g, bool) and g >= 0 else None


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


def scan(folder: str | Path, *, step_pattern: str | None = None,
         allow_pickle: bool = False, where: str = "run") -> RunScan:
    """Find the checkpoints (or live monitor tables) of one run folder; see the module
    docstring. RunError naming ``where`` and the folder when it is missing, not a folder
    or a symlink loop, or holds nothing usable."""
    if step_pattern is not None:
        try:
            check_step_pattern(step_pattern)
        except ValueError as e:
            raise RunError(f"{where}: step_pattern {step_pattern!r}: {e}") from None
    root = _real_dir(Path(folder), where)
    out = RunScan(root)
    if (root / MONITOR_FILE).is_file():
        return _scan_live(out)
    found: dict[int, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        step = step_of(entry.name, step_pattern)
        if step is None:
            if not entry.name.startswith("."):
                out.skipped[entry.name] = "no step in its name (not a checkpoint)"
            continue
        try:
            _real_dir(entry, where)
        except RunError as e:
            out.skipped[entry.name] = str(e).split(": ", 1)[1]
            continue
        if entry.name.startswith("checkpoint-"):
            trainer = _trainer_step(entry)
            if trainer is not None and trainer > MAX_STEP:
                out.skipped[entry.name] = (f"trainer_state.json: global_step {trainer} is "
                                           "beyond int64, the steps a table holds")
                continue
            step = step if trainer is None else trainer
        if step > MAX_STEP:
            out.skipped[entry.name] = (f"step {step} in its name is beyond int64, the "
                                       "steps a table holds")
            continue
        found.setdefault(step, []).append(entry)
    for step, dirs in sorted(found.items()):
        if len(dirs) > 1:
            for d in dirs:
                out.skipped[d.name] = (f"step {step} is also "
                                       f"{', '.join(x.name for x in dirs if x != d)}")
            continue
        try:
            check_checkpoint(dirs[0], allow_pickle)
        except (CheckpointError, ValueError, OSError) as e:
            out.skipped[dirs[0].name] = " ".join(str(e).split())
            continue
        out.checkpoints[step] = dirs[0]
    if not out.checkpoints:
        why = "; ".join(f"{k}: {v}" for k, v in list(out.skipped.items())[:3])
        raise RunError(f"{where}: no usable checkpoint in {root}"
                       + (f" (skipped {why})" if why else " (it is empty)"))
    return out


def _scan_live(out: RunScan) -> RunScan:
    """A monitor folder: ``step<N>.parquet`` tables (a table still being written is a
    hidden temporary, not seen)."""
    for f in sorted(out.folder.glob("step*.parquet")):
        step = step_of(f.stem)
        if step is None:
            out.skipped[f.name] = "no step in its name"
        else:
            out.live[step] = f
    if not out.live:
        raise RunError(f"no monitor tables (step<N>.parquet) in {out.folder} yet")
    return out


# ------------------------------------------------------------------- recipe and manifest
def recipe(scan_: RunScan, entry: dict) -> dict:
    """The training recipe (optimizer, lr, eps) of a run: what the monitor recorded
    (``madyn_monitor.json``, in a monitor folder or the run's ``madyn-monitor``), else the
    largest ``learning_rate`` logged in the last checkpoint's ``trainer_state.json`` (the
    peak when logged often enough); the entry's keys over both."""
    from madyn.io import read_json

    found: dict = {}
    monitor = scan_.folder / (MONITOR_FILE if scan_.live else f"{MONITOR_DIR}/{MONITOR_FILE}")
    try:
        if monitor.is_file():
            found = dict(read_json(monitor).get("recipe") or {})
        else:
            state = read_json(scan_.last() / "trainer_state.json")
            lrs = [r["learning_rate"] for r in state.get("log_history", [])
                   if isinstance(r, dict) and isinstance(r.get("learning_rate"), float)]
            if lrs:
                found["lr"] = max(lrs)
    except (OSError, ValueError, AttributeError):
        found = {}
    found = {k: v for k, v in found.items() if k in ("optimizer", "lr", "eps")
             and v is not None}
    return {**found, **{k: entry[k] for k in ("optimizer", "lr", "eps") if k in entry}}


def monitor_probe(scan_: RunScan) -> Path | None:
    """The probe a checkpoint folder's own monitor measured on (``madyn-monitor/
    probe_tokens.npy`` beside the checkpoints), so that the checkpoints are measured on
    the same tokens and the two agree; None for a monitor folder or a run without one."""
    probe = scan_.folder / MONITOR_DIR / "probe_tokens.npy"
    return probe if not scan_.live and probe.is_file() else None


def manifest(scan_: RunScan, cache: dict | None = None) -> dict:
    """What madyn reads of a run: each checkpoint's weight and config files (or each live
    table), relative path -> {size, sha256}. ``cache``: (path, size, mtime_ns) -> sha256
    from an earlier manifest, so unchanged gigabytes are not hashed again (updated in
    place)."""
    from madyn.io import sha256_file

    cache = {} if cache is None else cache
    files: list[Path] = list(scan_.live.values())
    if (probe := monitor_probe(scan_)) is not None:
        files.append(probe)
    for d in scan_.checkpoints.values():  # scanned: pickles only where they are allowed
        files += [d / "config.json", *weight_files(d, allow_pickle=True)]
    out = {}
    for f in sorted(files):
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(f)
        out[f.relative_to(scan_.folder).as_posix()] = {"size": st.st_size,
                                                        "sha256": cache[key]}
    return {"files": out, "skipped": dict(scan_.skipped)}


def entry_tokens(entry: dict, key: str) -> str | None:
    """A model entry's ``tokens`` (None when it has none), which must be a regular file
    (a FIFO would block the measuring job, a device read without end); RunError naming
    ``key`` (its params key) otherwise."""
    path = entry.get("tokens")
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError as e:
        raise RunError(f"{key}: {path}: {(e.strerror or str(e)).lower()}") from None
    if not stat.S_ISREG(st.st_mode):
        from madyn.io import UnsafeFile, open_regular

        try:
            open_regular(path).close()
        except (UnsafeFile, OSError) as e:
            raise RunError(f"{key}: {e}") from None
    return path


def entry_scan(entry: dict, where: str) -> RunScan:
    """:func:`scan` of a suite's model entry (``path``, ``step_pattern``, ``allow_pickle``)."""
    return scan(entry["path"], step_pattern=entry.get("step_pattern"),
                allow_pickle=bool(entry.get("allow_pickle", False)), where=where)


# ------------------------------------------------------------------- the planned schedule
def _whole(v) -> int | None:
    """``v`` as a positive whole number of steps, else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _checkpoint_states(root: Path) -> list[tuple[int, Path]]:
    """(step, trainer_state.json) of every ``checkpoint-<N>`` folder of ``root`` that has
    one, newest first."""
    out = []
    for d in root.glob("checkpoint-*"):
        step = step_of(d.name)
        if step is not None and (d / "trainer_state.json").is_file():
            out.append((step, d / "trainer_state.json"))
    return sorted(out, reverse=True)


def planned_last_step(folder: str | Path) -> int | None:
    """The last step a run was planned to reach: ``max_steps`` of the newest
    ``checkpoint-*/trainer_state.json`` (HF ``Trainer``), else ``max_steps`` of the
    monitor's ``madyn_monitor.json`` (in ``folder`` or its ``madyn-monitor``); None when
    neither says (or the files cannot be read)."""
    from madyn.io import read_json

    root = Path(folder)
    if not root.is_dir():
        return None
    files = [f for _, f in _checkpoint_states(root)][:1]
    files += [root / MONITOR_FILE, root / MONITOR_DIR / MONITOR_FILE]
    for f in files:
        try:
            data = read_json(f) if f.is_file() else None
        except (OSError, ValueError):
            continue
        n = _whole(data.get("max_steps")) if isinstance(data, dict) else None
        if n is not None:
            return n
    return None


def run_info(folder: str | Path) -> dict:
    """What a forecast compares with its prior, as far as a run folder says: ``family``
    (config.json's ``model_type``), ``last_step`` (:func:`planned_last_step`), ``lr`` (peak
    learning rate: the monitor's recipe or the largest logged in trainer_state.json),
    ``vocab_size``, ``n_layers``, and ``schedule`` as the learning rates logged in the
    newest trainer_state.json show it (:func:`schedule_shape`; the Trainer records its
    ``lr_scheduler_type`` only in ``training_args.bin``, a pickle never opened). Keys that
    cannot be found are left out."""
    from madyn.io import read_json

    root = Path(folder)
    out: dict = {}
    try:
        sc = scan(root)
    except (RunError, OSError, ValueError):
        return out
    try:
        cfg = read_json(sc.last() / "config.json")
    except (OSError, ValueError):
        cfg = {}
    if isinstance(cfg, dict):
        if isinstance(cfg.get("model_type"), str):
            out["family"] = cfg["model_type"]
        for k in ("vocab_size",):
            if _whole(cfg.get(k)):
                out[k] = cfg[k]
        layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        if _whole(layers):
            out["n_layers"] = layers
    if (last := planned_last_step(root)) is not None:
        out["last_step"] = last
    r = recipe(sc, {})
    if isinstance(r.get("lr"), (int, float)):
        out["lr"] = float(r["lr"])
    states = _checkpoint_states(root)
    if states and out.get("last_step"):
        try:
            log = read_json(states[0][1]).get("log_history", [])
        except (OSError, ValueError, AttributeError):
            log = []
        pts = [(r["step"], r["learning_rate"]) for r in log if isinstance(r, dict)
               and isinstance(r.get("step"), int) and isinstance(r.get("learning_rate"),
                                                                 float)]
        if (shape := schedule_shape(pts, out["last_step"])) is not None:
            out["schedule"] = shape
    return out


def schedule_shape(points: list[tuple[int, float]], last_step: int) -> str | None:
    """The shape of a learning-rate schedule from logged (step, lr) points after its
    peak: ``constant`` (every later lr within 5 % of the peak), ``cosine`` (a quarter of
    the way from the peak to ``last_step`` the lr is above 80 % of the peak: cosine 85 %,
    linear 75 %) or ``linear``; None with fewer than 3 points after the peak."""
    if not points:
        return None
    peak_step, peak = max(points, key=lambda p: p[1])
    after = [(t, lr) for t, lr in points if t > peak_step]
    if len(after) < 3 or peak <= 0:
        return None
    if min(lr for _, lr in after) >= 0.95 * peak:
        return "constant"
    quarter = peak_step + 0.25 * (last_step - peak_step)
    t, lr = min(after, key=lambda p: abs(p[0] - quarter))
    return "cosine" if lr / peak > 0.8 else "linear"
