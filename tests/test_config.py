"""params.yaml validation: bad input fails with a message naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from madyn.workflow import params_file, params_values
from tests.helpers import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid():
    cfg = params_file.validate(copy.deepcopy(PARAMS))
    assert len(params_values.model_names(cfg["suites"]["embedded"])) >= 6
    assert len(params_values.model_names(cfg["suites"]["smoke"])) == 2


def test_pythia_suite_has_full_schedule_and_study_subset():
    pythia = PARAMS["suites"]["pythia"]
    full = params_values.hub_schedule(pythia)
    assert len(full) == 154 and full[:3] == [0, 1, 2] and full[-1] == 143000
    assert 512 in full and 1000 in full and 768 not in full
    subset = params_values.steps(pythia)
    assert 35 <= len(subset) <= 39 and set(subset) <= set(full)
    assert len(pythia["models"]) == 9


def _mutated(path: str, value) -> dict:
    cfg = copy.deepcopy(PARAMS)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return cfg


@pytest.mark.parametrize(
    "path, value, named",
    [
        ("suites.embedded.train.stepz", 3, "suites.embedded.train.stepz"),
        ("suites.embedded.train.lr", "fast", "suites.embedded.train.lr"),
        ("suites.embedded.train.steps", -5, "suites.embedded.train.steps"),
        ("suites.smoke.models", [], "suites.smoke.models"),
        ("suites.embedded.models.0.heads", 3, "suites.embedded.models.0.heads"),
        ("suites.embedded.models.1.lr", -0.01, "suites.embedded.models.1.lr"),
        ("suite", "nope", "suite"),
        ("suites.pythia.analyse_steps", [0, 1, 3], "suites.pythia.analyse_steps"),
        ("suites.pythia.models.0.repo", "no-slash", "suites.pythia.models.0.repo"),
        # non-finite floats: every comparison with NaN is false, so they must be refused first
        ("fit.alpha", float("nan"), "fit.alpha: nan is not a finite number"),
        ("suites.embedded.train.lr", float("nan"),
         "suites.embedded.train.lr: nan is not a finite number"),
        ("predict.test_fraction", float("nan"), "predict.test_fraction: nan is not a finite"),
        ("suites.embedded.train.weight_decay", float("inf"),
         "suites.embedded.train.weight_decay: inf is not a finite number"),
        ("predict.ridge_alphas", [1.0, float("-inf")],
         "predict.ridge_alphas.1: -inf is not a finite number"),
        ("suites.smoke.models.1.lr", float("nan"), "suites.smoke.models.1.lr: nan is not a"),
        # integers must be ints: 10.0 and True are refused
        ("suites.embedded.train.every", 10.0,
         "suites.embedded.train.every: 10.0 is not an integer"),
        ("fit.min_points", 6.0, "fit.min_points: 6.0 is not an integer"),
        ("predict.seed", True, "predict.seed: True is not an integer"),
        ("suites.pythia.schedule.last", 143000.0, "suites.pythia.schedule.last: 143000.0 is"),
        # design axes: enums, bounds, and neox-only keys
        ("suites.embedded.models.0.family", "gpt5", "suites.embedded.models.0.family"),
        ("suites.embedded.models.0.eps", 0, "suites.embedded.models.0.eps"),
        ("suites.embedded.train.eps", 0.0, "suites.embedded.train.eps"),
        ("suites.embedded.train.optimizer", "lion", "suites.embedded.train.optimizer"),
        ("suites.embedded.models.1.optimizer", "adam", "suites.embedded.models.1.optimizer"),
        ("suites.embedded.train.momentum", 1.0, "suites.embedded.train.momentum"),
        ("suites.embedded.models.0.parallel_residual", "yes",
         "suites.embedded.models.0.parallel_residual"),
        ("suites.embedded.models.0.seed", -1, "suites.embedded.models.0.seed"),
        # more points than the active suite has checkpoints (embedded: 24)
        ("fit.min_points", 25, "fit.min_points: 25 exceeds the 24 checkpoints of suite "
         "embedded"),
    ],
)
def test_bad_params_name_the_key(path, value, named):
    with pytest.raises(params_file.ConfigError) as err:
        params_file.validate(_mutated(path, value))
    assert named in str(err.value)


def test_model_lr_overrides_the_suite_recipe_only_for_that_model():
    cfg = _mutated("suites.smoke.models.1.lr", 0.002)
    suite = params_file.validate(cfg)["suites"]["smoke"]
    first, second = params_values.model_names(suite)
    assert params_values.train_spec(suite, second).lr == 0.002
    assert params_values.train_spec(suite, first).lr == suite["train"]["lr"] \
        == params_values.train_spec(suite).lr
    spec = params_values.model_spec(suite, second)
    assert not hasattr(spec, "lr") and spec.layers == suite["models"][1]["layers"]


def test_design_overrides_apply_to_their_model_only():
    cfg = copy.deepcopy(PARAMS)
    m = cfg["suites"]["smoke"]["models"][1]
    m.update(family="llama", optimizer="sgd", momentum=0.8, seed=7, eps=1e-4)
    suite = params_file.validate(cfg)["suites"]["smoke"]
    first, second = params_values.model_names(suite)
    t, t0 = params_values.train_spec(suite, second), params_values.train_spec(suite, first)
    assert (t.optimizer, t.momentum, t.seed, t.eps) == ("sgd", 0.8, 7, 1e-4)
    assert (t0.optimizer, t0.eps, t0.seed) == ("adamw", 1e-8, suite["train"]["seed"])
    assert params_values.model_spec(suite, second).family == "llama"
    assert params_values.model_spec(suite, first).family == "neox"


@pytest.mark.parametrize("key, value", [("parallel_residual", False), ("rotary_pct", 0.5)])
def test_neox_only_keys_refused_for_other_families(key, value):
    cfg = copy.deepcopy(PARAMS)
    cfg["suites"]["smoke"]["models"][0].update({"family": "qwen3", key: value})
    with pytest.raises(params_file.ConfigError, match=rf"suites.smoke.models.0.{key}: applies to "
                       "family neox only"):
        params_file.validate(cfg)


def test_design_defaults_are_stated_once():
    """The schema's defaults of the design keys are the dataclasses' defaults."""
    from madyn.settings import params_schema
    from madyn.train.training import FAMILIES, OPTIMIZERS, ModelSpec, TrainSpec

    defs = params_schema()["$defs"]
    model = defs["local_suite"]["properties"]["models"]["items"]["properties"]
    fields = {**ModelSpec.__dataclass_fields__, **TrainSpec.__dataclass_fields__}
    assert defs["family"]["default"] == fields["family"].default
    assert defs["family"]["enum"] == list(FAMILIES)
    assert defs["optimizer"]["enum"] == list(OPTIMIZERS)
    assert defs["optimizer"]["default"] == fields["optimizer"].default
    assert defs["adam_eps"]["default"] == fields["eps"].default
    assert defs["momentum"]["default"] == fields["momentum"].default
    assert model["parallel_residual"]["default"] == fields["parallel_residual"].default
    assert set(params_values.TRAIN_OVERRIDES) <= set(model) & set(TrainSpec.__dataclass_fields__)


def test_duplicate_model_names_rejected():
    cfg = copy.deepcopy(PARAMS)
    cfg["suites"]["smoke"]["models"].append(dict(cfg["suites"]["smoke"]["models"][0]))
    with pytest.raises(params_file.ConfigError, match="suites.smoke.models: duplicate"):
        params_file.validate(cfg)


def test_load_reports_yaml_syntax_errors(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("suite: [unclosed\n")
    with pytest.raises(params_file.ConfigError, match="not valid YAML"):
        params_file.load(str(bad))


def test_min_points_checked_against_the_active_suite_only():
    cfg = _mutated("fit.min_points", 24)
    params_file.validate(cfg)  # embedded has exactly 24 checkpoints
    cfg["suite"] = "smoke"
    n_smoke = len(params_values.steps(cfg["suites"]["smoke"]))
    cfg["fit"]["min_points"] = n_smoke + 1
    with pytest.raises(params_file.ConfigError, match=f"exceeds the {n_smoke} checkpoints"):
        params_file.validate(cfg)


def test_min_points_checked_for_hub_analyse_steps():
    cfg = _mutated("suites.pythia.analyse_steps", [0, 1, 2, 4, 8])
    cfg["suite"] = "pythia"
    with pytest.raises(params_file.ConfigError, match="fit.min_points: 6 exceeds the 5 "
                       "checkpoints of suite pythia"):
        params_file.validate(cfg)


def test_check_min_points_for_a_released_folder():
    cfg = params_file.validate(copy.deepcopy(PARAMS))
    params_file.check_min_points(cfg, 6, "released/m1")
    with pytest.raises(params_file.ConfigError,
                       match="fit.min_points: 6 exceeds the 5 checkpoints of released/m1"):
        params_file.check_min_points(cfg, 5, "released/m1")


def test_valid_floats_and_ints_still_pass():
    cfg = _mutated("suites.embedded.train.lr", 1)  # an int is a valid number
    cfg["fit"]["alpha"] = 0
    params_file.validate(cfg)
