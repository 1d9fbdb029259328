"""Validation of params.yaml and the plain values every phase reads from it.

No module reads the YAML itself: the Snakefile (configfile) and the CLI load it, call
:func:`validate`, and pass plain values down.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from madyn.train.training import ModelSpec, TrainSpec, checkpoint_steps, design_record, recipe


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the offending key."""


# Bounds on a params file, checked before anything walks it: a real one is a few kB with a
# few hundred values; YAML aliases can make a small file expand to billions.
MAX_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 32


def _schema() -> dict:
    from madyn.settings import params_schema

    return params_schema()


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(err) -> str:
    """One readable line for a jsonschema error, naming the key."""
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join(_key([*err.absolute_path, e]) for e in extra)
        return f"unknown key {keys} (allowed here: {', '.join(allowed) or 'none'})"
    if err.validator == "oneOf" and err.context:
        # pick the branch that got furthest: the deepest error
        best = max(err.context, key=lambda e: len(e.absolute_path))
        return _describe(best)
    if err.validator == "type" and err.validator_value == "integer":
        return f"{_key(err.absolute_path)}: {err.instance!r} is not an integer"
    if err.validator == "pattern" and "description" in err.schema:
        return f"{_key(err.absolute_path)}: {err.instance!r} is not {err.schema['description']}"
    return f"{_key(err.absolute_path)}: {err.message}"


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


def _nonfinite(node: Any, path: tuple = ()) -> Iterator[str]:
    """One message per NaN/inf float anywhere in ``node`` (schema comparisons with NaN are
    all false, so the schema alone lets them through)."""
    if isinstance(node, float) and not math.isfinite(node):
        yield f"{_key(path)}: {node!r} is not a finite number"
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _nonfinite(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nonfinite(v, (*path, i))


def _validator():
    """Draft 2020-12 validator whose ``integer`` is a Python int only (not 10.0, not a
    bool): a float step count would pass the schema and fail later inside range()."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, inst: type(inst) is int)
    return jsonschema.validators.extend(base, type_checker=checker)(_schema())


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
    bad = list(_nonfinite(cfg))
    if bad:
        raise ConfigError("invalid params.yaml: " + "; ".join(bad))
    errors = sorted(_validator().iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid params.yaml: " + "; ".join(_describe(e) for e in errors))
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
        check_min_points(cfg, len(steps(suite)), f"suite {cfg['suite']}")
    return cfg


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


def with_run_defaults(suite: dict) -> dict:
    """A ``run`` suite with the schema's defaults filled in: ``corpus`` and each
    ``extract`` key (the evaluation text, sequence count and length, seed)."""
    from madyn.settings import schema_default, section_defaults

    if suite["source"] != "run":
        return suite
    out = dict(suite)
    out.setdefault("corpus", schema_default("$defs.run_suite.corpus"))
    out["extract"] = {**section_defaults("$defs.run_extract"), **suite.get("extract", {})}
    return out


class _StrictLoader(yaml.SafeLoader):
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


def hub_schedule(suite: dict) -> list[int]:
    """Every step the hub serves for a hub suite (Pythia: 154 revisions)."""
    s = suite["schedule"]
    return checkpoint_steps(s["last"], s["log_until"], s["every"])


def results_dir(cfg: dict) -> str:
    """Where the active suite's outputs go: ``results/<suite>`` (the one definition; the
    workflow and the CLI both ask here)."""
    return f"results/{cfg['suite']}"


def feature_table(cfg: dict) -> str:
    """The active suite's feature table (Parquet; its CSV copy: the same path, ``.csv``)."""
    return (f"{results_dir(cfg)}/features/fitted_param_dataset_"
            f"{cfg['features']['parametrisation']}.parquet")


def active(cfg: dict) -> dict:
    """The suite selected by the top-level ``suite`` key."""
    return cfg["suites"][cfg["suite"]]


def model_names(suite: dict) -> list[str]:
    return [m["name"] for m in suite["models"]]


# model-entry keys that override the suite's train recipe (several seeds of one design
# point are several model entries)
TRAIN_OVERRIDES = ("lr", "eps", "optimizer", "momentum", "beta1", "beta2", "weight_decay",
                   "seed", "bos")


def design_label(entry: dict) -> str:
    """The design point of a model entry: its ``design`` key, else its own name."""
    return str(entry.get("design", entry["name"]))


def design_labels(suite: dict) -> dict[str, str]:
    """{model name: design label} of every model of ``suite``."""
    return {m["name"]: design_label(m) for m in suite["models"]}


def known_recipe(suite: dict, name: str) -> dict:
    """What a model entry states of its training recipe (``optimizer``, ``lr``, ``eps``):
    a local model's resolved recipe; a hub or released model's keys, when given."""
    if suite["source"] == "local":
        return recipe(design_record(model_spec(suite, name), train_spec(suite, name)))
    m = model_entry(suite, name)
    return {k: m[k] for k in ("optimizer", "lr", "eps") if k in m}


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


def model_entry(suite: dict, name: str) -> dict:
    (m,) = [m for m in suite["models"] if m["name"] == name]
    return m


def model_spec(suite: dict, name: str) -> ModelSpec:
    """The architecture of model ``name`` (its training overrides, such as ``lr``, left
    out)."""
    m = model_entry(suite, name)
    return ModelSpec(**{k: m[k] for k in ModelSpec.__dataclass_fields__ if k in m})


def train_spec(suite: dict, name: str | None = None) -> TrainSpec:
    """The suite's training recipe, with model ``name``'s overrides
    (:data:`TRAIN_OVERRIDES`) applied."""
    t = dict(suite["train"])
    if name is not None:
        m = model_entry(suite, name)
        t.update({k: m[k] for k in TRAIN_OVERRIDES if k in m})
    return TrainSpec(**t)


def is_synthetic(suite: dict) -> bool:
    """Whether a suite trains on a synthetic corpus (its ``corpus`` has a ``kind``)."""
    return "kind" in suite.get("corpus", {})


def vocab_size(corpus: dict) -> int:
    """Embedding rows of a suite's models: the text corpus's ``vocab_size``, or a
    synthetic corpus's ``vocab`` plus its (always reserved) BOS token."""
    return corpus["vocab"] + 1 if "kind" in corpus else corpus["vocab_size"]


def steps(suite: dict) -> list[int]:
    """The checkpoint steps to analyse for every model of ``suite`` (not ``released``:
    those are whatever files the folder holds)."""
    if suite["source"] in ("released", "run"):
        raise ValueError(f"a {suite['source']} suite's steps are read from its folder")
    if suite["source"] == "local":
        t = suite["train"]
        return checkpoint_steps(t["steps"], t["log_until"], t["every"])
    if suite["analyse_steps"] == "all":
        return hub_schedule(suite)
    return sorted(suite["analyse_steps"])


def predict_settings(cfg: dict) -> dict:
    """The predictor settings as plain values: ``predict`` (less ``example``) plus the
    feature table's parametrisation and quantity (the targets)."""
    out = {k: v for k, v in cfg["predict"].items() if k != "example"}
    return {**out, **cfg["features"]}


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


def is_run_analysis(suite: dict) -> bool:
    """Is each model of ``suite`` one training run analysed on its own (``analysis: run``,
    the default of a run suite) rather than a cross-model study?"""
    return suite.get("analysis", "run" if suite["source"] == "run" else "study") == "run"


def summary_settings(cfg: dict) -> dict:
    """The run summary's settings: params.yaml's ``summary`` over the schema's defaults."""
    from madyn.settings import section_defaults

    return {**section_defaults("summary"), **cfg.get("summary", {})}


def planned_last_step(suite: dict, name: str, scan_: Any | None = None) -> int | None:
    """Where a model of a single-run suite is forecast to: its entry's ``last_step``, else
    its run folder's record (``scan_``, a :class:`madyn.measure.runs.RunScan`:
    :func:`madyn.measure.runs.planned_last_step` of its folder); None when unknown."""
    entry = model_entry(suite, name)
    if "last_step" in entry:
        return int(entry["last_step"])
    if scan_ is None:
        return None
    from madyn.measure.runs import planned_last_step as from_folder

    return from_folder(scan_.folder)
