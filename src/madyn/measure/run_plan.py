"""What a run folder records of the training it was planned as: the recipe (``optimizer``,
peak learning rate ``lr``, ``eps``), the planned last step (an optimizer step), the shape of
its learning-rate schedule (``constant``, ``cosine``, ``linear``) and :func:`run_info`, which
gathers them for a forecast. Read from the live monitor's ``madyn_monitor.json`` and the HF
``Trainer``'s ``config.json`` and ``trainer_state.json`` of the run's checkpoints
(:mod:`madyn.measure.runs` finds them); a file that cannot be read says nothing (the key is
left out, or None), never an error.
"""

from __future__ import annotations

from pathlib import Path

from madyn.measure.runs import MONITOR_DIR, MONITOR_FILE, RunError, RunScan, scan, step_of


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
