"""Reading and validation of params.yaml: a params file parsed safely (a regular file of at
most :data:`MAX_BYTES`, no key twice, at most :data:`MAX_VALUES` values once its YAML aliases
are expanded), checked against its schema and the rules the schema cannot state, its
generated model entries filled in (a ``design_space``, a ``design_space_from``), and a
released folder checked before any job is planned. Every refusal is one ConfigError naming
the offending key.

No module reads the YAML itself: the Snakefile (configfile) and the CLI load it, call
:func:`validate`, and pass plain values down (:mod:`madyn.workflow.params_values`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from madyn.settings import SAFE_LOADER
from madyn.train.training import design_record, recipe
from madyn.workflow.params_values import (
    active,
    design_label,
    design_labels,
    hub_schedule,
    model_names,
    model_spec,
    steps,
    train_spec,
)
from madyn.workflow.schema_errors import describe, generated_key, nonfinite, validator


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the offending key."""


# Bounds on a params file, checked before anything walks it: a real one is a few kB with a
# few hundred values; YAML aliases can make a small file expand to billions.
MAX_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 32


def _count_values(node: Any, memo: dict[int, int], active: set[int], depth: int = 0
                  ) -> int:
    """Values in ``node`` with every YAML alias expanded (shared objects counted once per
    use, computed once each); ConfigError beyond :data:`MAX_VALUES` or :data:`MAX_DEPTH`."""
    if not isinstance(node, (dict, list)):
        return 1
    if depth > MAX_DEPTH:
        raise ConfigError(f"params.yaml: nested deeper than {MAX_DEPTH} levels")
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ConfigError("params.yaml: a YAML alias refers to itself")
    active.add(key)
    n = 1
    for child in node.values() if isinstance(node, dict) else node:
        n += _count_values(child, memo, active, depth + 1)
        if n > MAX_VALUES:
            raise ConfigError(f"params.yaml: more than {MAX_VALUES} values once its YAML "
                              "aliases are expanded")
    active.discard(key)
    memo[key] = n
    return n


def check_min_points(cfg: dict, n_checkpoints: int, where: str) -> None:
    """Refuse ``fit.min_points`` above the ``n_checkpoints`` a series can have (``where``:
    the suite or folder they come from, for the message)."""
    need = cfg["fit"]["min_points"]
    if need > n_checkpoints:
        raise ConfigError(f"fit.min_points: {need} exceeds the {n_checkpoints} checkpoints "
                          f"of {where}")


def validate(cfg: Any) -> dict:
    """Check ``cfg`` (the parsed params.yaml); raise ConfigError naming the bad key."""
    if not isinstance(cfg, dict):
        raise ConfigError("params.yaml must be a mapping of keys to values")
    _count_values(cfg, {}, set())
    bad = list(nonfinite(cfg))
    if bad:
        raise ConfigError("invalid params.yaml: " + "; ".join(bad))
    _schema_check(cfg)
    if _expand_design_spaces(cfg):
        _schema_check(cfg)  # the generated model entries, errors named by their axis
    if _expand_design_space_from(cfg):
        _schema_check(cfg)
    if cfg["suite"] not in cfg["suites"]:
        raise ConfigError(f"suite: {cfg['suite']!r} is not one of suites "
                          f"({', '.join(cfg['suites'])})")
    lo, hi = cfg["predict"]["interval"]
    if lo >= hi:
        raise ConfigError(f"predict.interval: lower percentile {lo} must be < upper {hi}")
    ex = cfg["predict"].get("example")
    if ex and ex["width"] % ex["heads"]:
        raise ConfigError(f"predict.example.heads: width {ex['width']} is not divisible by "
                          f"heads {ex['heads']}")
    for sname, suite in cfg["suites"].items():
        names = [m["name"] for m in suite["models"]]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"suites.{sname}.models: duplicate model names {dup}")
        if suite["source"] == "local":
            for i, m in enumerate(suite["models"]):
                if m["width"] % m["heads"]:
                    raise ConfigError(f"suites.{sname}.models.{i}.heads: width {m['width']} "
                                      f"is not divisible by heads {m['heads']}")
                if m.get("family", "neox") != "neox":
                    for key in ("parallel_residual", "rotary_pct"):
                        if key in m:
                            raise ConfigError(f"suites.{sname}.models.{i}.{key}: applies to "
                                              f"family neox only, not {m['family']}")
            t = suite["train"]
            if t["warmup"] >= t["steps"]:
                raise ConfigError(f"suites.{sname}.train.warmup: must be < steps")
            for i, m in enumerate(suite["models"]):
                ts = train_spec(suite, m["name"])
                if ("warmup" in m or "steps" in m) and ts.warmup >= ts.steps:
                    raise ConfigError(f"suites.{sname}.models.{i}.warmup: {ts.warmup} must "
                                      f"be < its steps {ts.steps}")
            _check_design_groups(sname, suite)
        elif suite["source"] == "hub":
            sched = hub_schedule(suite)
            chosen = suite["analyse_steps"]
            if chosen != "all":
                bad = sorted(set(chosen) - set(sched))
                if bad:
                    raise ConfigError(f"suites.{sname}.analyse_steps: {bad} not in the "
                                      "hub schedule")
        base = suite.get("base_design")
        if base is not None and base not in {design_label(m) for m in suite["models"]}:
            raise ConfigError(f"suites.{sname}.base_design: {base!r} is the design of none of "
                              f"the suite's models ({', '.join(sorted(design_labels(suite)))})")
        if suite["source"] == "run":
            _check_run_entries(sname, suite)
    suite = active(cfg)
    if suite["source"] not in ("released", "run"):  # a folder is checked once scanned
        fewest = min(model_names(suite), key=lambda m: len(steps(suite, m)))
        check_min_points(cfg, len(steps(suite, fewest)),
                         f"suite {cfg['suite']}" + (f" (model {fewest})"
                                                    if suite["source"] == "local" else ""))
    return cfg


def _schema_check(cfg: dict) -> None:
    """ConfigError naming every key the JSON schema refuses; in a model entry generated
    from a ``design_space``, the axis that gave the value (once, with the first model)."""
    errors = sorted(validator().iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    seen: dict[str, list[str]] = {}
    for e in errors:
        msg, model = generated_key(cfg, describe(e), e.absolute_path)
        seen.setdefault(msg, []).extend([model] if model else [])
    raise ConfigError("invalid params.yaml: " + "; ".join(
        msg + (f" (model {ms[0]}" + (f" and {len(ms) - 1} more)" if len(ms) > 1 else ")")
               if ms else "") for msg, ms in seen.items()))


def _expand_design_spaces(cfg: dict) -> bool:
    """Fill in the ``models`` of every suite with a ``design_space`` (its expansion,
    :func:`madyn.workflow.design_space.expand`), in place, so that every reader of the
    configuration sees them. ConfigError naming the key for a space the schema cannot
    judge, or for ``models`` given beside it that differ. Returns whether any suite was
    expanded."""
    from madyn.workflow import design_space

    suites = cfg["suites"]
    done = False
    for sname, suite in suites.items():
        if "design_space" not in suite:
            continue
        bad = design_space.check(suite["design_space"])
        if bad:
            raise ConfigError("invalid params.yaml: " + "; ".join(
                f"suites.{sname}.design_space.{b}" for b in bad))
        _set_models(sname, suite, design_space.expand(suite["design_space"]))
        done = True
    return done


def _expand_design_space_from(cfg: dict) -> bool:
    """Fill in the ``models`` of every suite with a ``design_space_from``: the named local
    suite's models (already expanded and checked) as a released suite states them: name,
    design and recipe. Returns whether any suite was filled in."""
    suites = cfg["suites"]
    done = False
    for sname, suite in suites.items():
        src = suite.get("design_space_from")
        if src is None:
            continue
        origin = suites.get(src)
        if origin is None or "design_space" not in origin or origin["source"] != "local":
            raise ConfigError(f"suites.{sname}.design_space_from: {src!r} is not a local "
                              "suite with a design_space")
        _set_models(sname, suite, [
            {"name": m["name"], "design": design_label(m),
             **recipe(design_record(model_spec(origin, m["name"]),
                                    train_spec(origin, m["name"])))}
            for m in origin["models"]])
        done = True
    return done


def _set_models(sname: str, suite: dict, models: list[dict]) -> None:
    if "models" in suite and suite["models"] != models:
        key = "design_space" if "design_space" in suite else "design_space_from"
        raise ConfigError(f"suites.{sname}.models: give models or {key}, not both")
    suite["models"] = models


def _check_run_entries(sname: str, suite: dict) -> None:
    """ConfigError naming the key for a ``step_pattern`` that
    :func:`madyn.measure.runs.check_step_pattern` refuses (not a regex, no single group of digits,
    or slow to match)."""
    from madyn.measure.runs import check_step_pattern

    for i, m in enumerate(suite["models"]):
        pat = m.get("step_pattern")
        if pat is None:
            continue
        try:
            check_step_pattern(pat)
        except ValueError as e:
            raise ConfigError(f"suites.{sname}.models.{i}.step_pattern: {e}") from None


class _StrictLoader(SAFE_LOADER):
    """YAML's safe loader that refuses a key given twice in one mapping (YAML forbids it;
    PyYAML and Snakemake would keep the last value, DVC refuses the file)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read(path: str) -> Any:
    """Parse a params file, refusing what would make validation slow or ambiguous: not a
    regular file, more than :data:`MAX_BYTES`, a duplicate key, or YAML aliases that
    expand beyond :data:`MAX_VALUES` values."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file")
    if st.st_size > MAX_BYTES:
        raise ConfigError(f"{path}: {st.st_size} bytes, larger than {MAX_BYTES}")
    with open(path, "rb") as f:
        text = f.read(MAX_BYTES + 1)
    try:
        cfg = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    try:
        _count_values(cfg, {}, set())
    except ConfigError as e:
        raise ConfigError(f"{path}: {str(e).removeprefix('params.yaml: ')}") from None
    return cfg


def load(path: str) -> dict:
    """Read and validate a params file."""
    return validate(read(path))


def _check_design_groups(sname: str, suite: dict) -> None:
    """ConfigError unless the models sharing a design label differ only in name and seed."""
    first: dict[str, tuple[int, dict]] = {}
    for i, m in enumerate(suite["models"]):
        spec = {**model_spec(suite, m["name"]).__dict__, "name": None}
        train = {**train_spec(suite, m["name"]).__dict__, "seed": None}
        label = design_label(m)
        if label not in first:
            first[label] = (i, {"spec": spec, "train": train})
            continue
        j, ref = first[label]
        diff = sorted(k for part, new in (("spec", spec), ("train", train))
                      for k in new if new[k] != ref[part][k])
        if diff:
            raise ConfigError(f"suites.{sname}.models.{i}.design: {label!r} is also "
                              f"models.{j}'s design, but they differ in {diff} (a design's "
                              "models may differ only in seed)")


def check_released_folder(cfg: dict) -> dict[str, dict[int, Path]]:
    """Check the released folder of the active suite of ``cfg`` (a validated params.yaml
    whose active suite has ``source: released``) before any job is planned, and return
    its files (model -> step -> path, as :func:`madyn.measure.released.scan`).

    Raises ConfigError, one line naming the key, when ``path`` is not a folder, a model
    has no exp2 file under it, a model has neither a ``config.json`` beside its files nor
    ``layers`` (and the rest of its architecture) in its suite entry, or a model has fewer
    checkpoints than ``fit.min_points``.
    """
    from madyn.measure.released import config_file, scan

    key = f"suites.{cfg['suite']}"
    suite = active(cfg)
    root = suite["path"]
    if not Path(root).is_dir():
        raise ConfigError(f"{key}.path: {root} is not a folder")
    files = scan(root)
    names = [entry["name"] for entry in suite["models"]]
    missing = [m for m in names if m not in files]
    if missing:
        raise ConfigError(f"{key}.models: no exp2 files for {missing} under {root}")
    for i, entry in enumerate(suite["models"]):
        if not config_file(root, entry["name"]).exists() and "layers" not in entry:
            raise ConfigError(f"{key}.models.{i}: {entry['name']} has no "
                              f"{config_file(root, entry['name'])}: give its architecture in "
                              "the suite entry (layers, width, heads, vocab_size)")
    for m in names:
        check_min_points(cfg, len(files[m]), f"{root}/{m}/stats")
    return files


