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
Those checks are :mod:`madyn.measure.run_checkpoints`; what the run was planned as (recipe,
last step, schedule) is :mod:`madyn.measure.run_plan`.

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
from madyn.measure.run_checkpoints import check_checkpoint, weight_files

LAYOUTS = (r"checkpoint-(\d+)", r"step(\d+)", r"step-(\d+)", r"global_step(\d+)",
           r"iter_(\d+)")
MONITOR_FILE = "madyn_monitor.json"  # a folder written by madyn.measure.monitor
MONITOR_DIR = "madyn-monitor"  # the HF callback's folder inside the Trainer's output_dir


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


# ------------------------------------------------------ a model entry: manifest, probe, tokens
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
