"""The checks on a released suite's folder, run before Snakemake plans any job: each
refusal is one line naming the params.yaml key to fix."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from madyn.measure import released
from madyn.workflow import params_file
from tests.helpers import ROOT

STEPS = (0, 1, 2, 4, 8, 16, 32)
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _folder(root, models=("m_a", "m_b"), steps=STEPS, with_config=True):
    """A real folder in the study's released layout (exp2 files, optional config.json)."""
    arr = [[[4.0, 5.0], [3.0, 4.0], [2.0, 3.0], [1.0, 0.5]]]  # 1 sequence x 4 x 2 layers
    for m in models:
        for s in steps:
            path = released.exp2_path(root, m, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(repr(arr))
        if with_config:
            released.config_file(root, m).write_text(json.dumps({"num_hidden_layers": 2}))
    return root


def _cfg(path, entries=({"name": "m_a"}, {"name": "m_b"})) -> dict:
    cfg = copy.deepcopy(PARAMS)
    cfg["suites"]["study"] = {"source": "released", "path": str(path),
                              "models": [dict(e) for e in entries]}
    cfg["suite"] = "study"
    return params_file.validate(cfg)


def test_a_complete_folder_passes_and_its_files_are_returned(tmp_path):
    files = params_file.check_released_folder(_cfg(_folder(tmp_path)))
    assert sorted(files) == ["m_a", "m_b"]
    assert sorted(files["m_a"]) == list(STEPS)
    assert files["m_b"][4] == released.exp2_path(tmp_path, "m_b", 4)


def test_a_path_that_is_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "absent", tmp_path / "file"):
        with pytest.raises(params_file.ConfigError,
                           match=f"^suites.study.path: {re.escape(str(path))} is not a folder$"):
            params_file.check_released_folder(_cfg(path))


def test_a_model_without_exp2_files(tmp_path):
    _folder(tmp_path, models=("m_a",))
    (tmp_path / "m_b" / "stats").mkdir(parents=True)
    released.exp2_path(tmp_path, "m_b", 0).with_name("notes.txt").write_text("x")
    with pytest.raises(params_file.ConfigError,
                       match=r"^suites.study.models: no exp2 files for \['m_b'\] under "):
        params_file.check_released_folder(_cfg(tmp_path))


def test_a_model_without_an_architecture(tmp_path):
    _folder(tmp_path)
    released.config_file(tmp_path, "m_b").unlink()
    with pytest.raises(params_file.ConfigError, match=r"^suites.study.models.1: m_b has no "
                       r".*m_b/config.json: give its architecture in the suite entry"):
        params_file.check_released_folder(_cfg(tmp_path))
    # the suite entry may state it instead of a config.json
    arch = {"name": "m_b", "layers": 2, "width": 32, "heads": 2, "vocab_size": 300}
    assert "m_b" in params_file.check_released_folder(_cfg(tmp_path, ({"name": "m_a"}, arch)))


def test_a_model_with_fewer_checkpoints_than_min_points(tmp_path):
    _folder(tmp_path, models=("m_a",))
    _folder(tmp_path, models=("m_b",), steps=STEPS[:5])
    cfg = _cfg(tmp_path)
    assert cfg["fit"]["min_points"] == 6
    with pytest.raises(params_file.ConfigError, match=r"^fit.min_points: 6 exceeds the 5 "
                       r"checkpoints of .*/m_b/stats$"):
        params_file.check_released_folder(cfg)
    cfg["fit"]["min_points"] = 5
    params_file.check_released_folder(cfg)
