"""The plain values every phase reads from a validated params.yaml
(:func:`madyn.workflow.params_file.validate`; ``cfg`` is the whole mapping, ``suite`` one
entry of its ``suites``): the active suite and where its outputs go (``results/<suite>``),
each model's entry, architecture (:class:`madyn.train.training.ModelSpec`), training recipe
(:class:`madyn.train.training.TrainSpec`: the suite's ``train`` with the model's overrides),
design label and checkpoint steps (sorted ints), and the predictor and run-summary settings
(the schema's defaults filled in). Nothing here checks a value: it is taken as validated.
"""

from __future__ import annotations

from typing import Any

from madyn.train.training import ModelSpec, TrainSpec, checkpoint_steps, design_record, recipe


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
