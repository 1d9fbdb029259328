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
    errors = sorted(_validator().iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    seen: dict[str, list[str]] = {}
    for e in errors:
        msg, model = _generated_key(cfg, _describe(e), e.absolute_path)
        seen.setdefault(msg, []).extend([model] if model else [])
    raise ConfigError("invalid params.yaml: " + "; ".join(
        msg + (f" (model {ms[0]}" + (f" and {len(ms) - 1} more)" if len(ms) > 1 else ")")
               if ms else "") for msg, ms in seen.items()))


def _generated_key(cfg: dict, msg: str, path) -> tuple[str, str | None]:
    """``msg`` with ``suites.S.models.I.KEY`` renamed ``suites.S.design_space.axes.KEY``
    when suite S's models are generated from its design space, and that model's name
    (None for any other message)."""
    p = list(path)
    if len(p) >= 4 and p[0] == "suites" and p[2] == "models":
        suite = cfg["suites"].get(p[1], {})
        if isinstance(suite, dict) and ("design_space" in suite
                                        or "design_space_from" in suite):
            name = str(suite["models"][p[3]].get("name", p[3]))
            if "design_space_from" in suite:
                where, key = ".".join(map(str, p[:4])), "design_space_from"
            elif len(p) > 4:
                where, key = ".".join(map(str, p[:5])), f"design_space.axes.{p[4]}"
            else:
                where, key = ".".join(map(str, p[:4])), "design_space"
            return msg.replace(where, f"suites.{p[1]}.{key}", 1), name
    return msg, None


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
                   "seed", "bos", "steps", "warmup", "batch_size", "schedule", "min_lr_ratio",
                   "log_until", "every")


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


def steps(suite: dict, name: str | None = None) -> list[int]:
    """The checkpoint steps to analyse for model ``name`` of ``suite`` (not ``released``
    or ``run``: those are whatever files the folder holds). A local model's follow its own
    recipe (its ``steps``, ``log_until`` and ``every`` overrides); without ``name``, the
    suite's ``train`` schedule."""
    if suite["source"] in ("released", "run"):
        raise ValueError(f"a {suite['source']} suite's steps are read from its folder")
    if suite["source"] == "local":
        t = train_spec(suite, name)
        return checkpoint_steps(t.steps, t.log_until, t.every)
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
    :func:`madyn.measure.run_plan.planned_last_step` of its folder); None when unknown."""
    entry = model_entry(suite, name)
    if "last_step" in entry:
        return int(entry["last_step"])
    if scan_ is None:
        return None
    from madyn.measure.run_plan import planned_last_step as from_folder

    return from_folder(scan_.folder)
