"""params.yaml validation: bad input fails with a message naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from madyn import config
from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid():
    cfg = config.validate(copy.deepcopy(PARAMS))
    assert len(config.model_names(cfg["suites"]["embedded"])) >= 6
    assert len(config.model_names(cfg["suites"]["smoke"])) == 2


def test_pythia_suite_has_full_schedule_and_study_subset():
    pythia = PARAMS["suites"]["pythia"]
    full = config.hub_schedule(pythia)
    assert len(full) == 154 and full[:3] == [0, 1, 2] and full[-1] == 143000
    assert 512 in full and 1000 in full and 768 not in full
    subset = config.steps(pythia)
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
    ],
)
def test_bad_params_name_the_key(path, value, named):
    with pytest.raises(config.ConfigError) as err:
        config.validate(_mutated(path, value))
    assert named in str(err.value)


def test_model_lr_overrides_the_suite_recipe_only_for_that_model():
    cfg = _mutated("suites.smoke.models.1.lr", 0.002)
    suite = config.validate(cfg)["suites"]["smoke"]
    first, second = config.model_names(suite)
    assert config.train_spec(suite, second).lr == 0.002
    assert config.train_spec(suite, first).lr == suite["train"]["lr"] == config.train_spec(suite).lr
    spec = config.model_spec(suite, second)
    assert not hasattr(spec, "lr") and spec.layers == suite["models"][1]["layers"]


def test_duplicate_model_names_rejected():
    cfg = copy.deepcopy(PARAMS)
    cfg["suites"]["smoke"]["models"].append(dict(cfg["suites"]["smoke"]["models"][0]))
    with pytest.raises(config.ConfigError, match="suites.smoke.models: duplicate"):
        config.validate(cfg)


def test_load_reports_yaml_syntax_errors(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("suite: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(str(bad))
