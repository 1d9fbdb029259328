"""Settings defaults come from the params schema; hypotheses carry their own fit wiring;
the report stage reads the manifest's loss steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from madyn.curves import hypotheses
from madyn.predict.features import transforms_for
from madyn.settings import (
    ExtractSettings,
    FitSettings,
    PredictSettings,
    resolve_device,
    schema_default,
    schema_enum,
    section_defaults,
)
from madyn.stages.report import loss_table
from madyn.workflow import params_file, params_values
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def params() -> dict:
    return params_file.load(str(ROOT / "params.yaml"))


def test_schema_hypotheses_are_the_registry():
    assert schema_enum("fit.hypotheses") == hypotheses.names()
    assert schema_default("fit.hypotheses") == hypotheses.names()


def test_defaults_equal_params_yaml(params):
    assert FitSettings() == FitSettings.from_dict(params["fit"])
    assert PredictSettings() == PredictSettings.from_dict(params_values.predict_settings(params))
    for section in ("fit", "features", "predict"):
        shipped = {k: v for k, v in params[section].items() if k != "example"}
        assert {k: section_defaults(section)[k] for k in shipped} == shipped


def test_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="unknown fit setting.*'bogus'"):
        FitSettings.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="unknown predict setting.*'example'"):
        PredictSettings.from_dict({"example": {}})
    with pytest.raises(ValueError, match="predict_model 'svm'"):
        PredictSettings.from_dict({"predict_model": "svm"})


def test_extract_settings_defaults_are_the_schemas(params):
    """ExtractSettings' defaults are the schema's ``$defs.extract`` defaults; a suite's
    whole extract section builds them (its evaluation-batch keys left out)."""
    assert ExtractSettings().to_dict() == {
        k: schema_default(f"$defs.extract.{k}") for k in ExtractSettings().to_dict()}
    assert schema_enum("$defs.extract.dtype") == ["float32", "float16", "bfloat16"]
    smoke = params["suites"]["smoke"]["extract"]
    s = ExtractSettings.from_section(smoke)
    assert (s.dtype, s.device, s.batch_size) == (smoke["dtype"], smoke["device"],
                                                 smoke["batch_size"])
    assert ExtractSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="unknown extract setting.*'n_seqs'"):
        ExtractSettings.from_dict(smoke)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        ExtractSettings(dtype="int8")
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        ExtractSettings(batch_size=0)


@pytest.mark.parametrize("device, n_gpus, want", [
    ("auto", 0, "cpu"), ("auto", 2, "cuda"), ("cpu", 2, "cpu"), ("cuda", 0, "cuda"),
    ("cuda:1", 2, "cuda:1"), ("mps", 0, "mps")])
def test_one_resolution_of_auto(device, n_gpus, want):
    assert resolve_device(device, n_gpus) == want


def test_warm_starts_and_transforms_live_on_the_hypotheses():
    for name in hypotheses.names():
        h = hypotheses.get(name)
        for src, warm_map in h.warm_from:
            assert hypotheses.warm_depth(name) > hypotheses.warm_depth(src)
            if warm_map is None:
                assert hypotheses.get(src).param_names == h.param_names
        if h.transforms:
            assert tuple(transforms_for(name)) == h.param_names
        else:
            with pytest.raises(ValueError, match="no target transforms"):
                transforms_for(name)
    assert [n for n in hypotheses.names() if hypotheses.get(n).transforms] == \
        schema_enum("features.parametrisation")


def test_loss_table_uses_loss_steps(tmp_path):
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"model": "a", "loss_curve": [3.0, 2.0, 1.5],
                             "loss_steps": [1, 11, 21]}))
    t = loss_table([str(m)])
    assert t["step"].tolist() == [1, 11, 21] and t["loss"].tolist() == [3.0, 2.0, 1.5]
    m.write_text(json.dumps({"model": "a", "loss_curve": [3.0], "train": {"steps": 2000}}))
    with pytest.raises(ValueError, match=f"{m}: training manifest has no 'loss_steps'"):
        loss_table([str(m)])


# a string literal naming a path under results/ ("results", "results/...", f"results/{x}"),
# not prose about one ("results/<suite>/models")
_RESULTS_LITERAL = re.compile(r"""[fFrRbB]{0,2}(["'])results(?:\1|/(?!<))""")


def _code_files() -> list[Path]:
    return sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "workflow").rglob("*.smk"),
                   ROOT / "Snakefile", *(ROOT / "benchmarks").rglob("*.py")])


def test_results_paths_are_defined_once():
    """Where outputs go is written once, params_values.results_dir; every other path under
    results/ is built from it (the workflow's RESULTS, the feature table), never spelled
    out again in the code, the rules or the benchmarks."""
    cfg = {"suite": "smoke", "features": {"parametrisation": "reparam_reg"}}
    assert params_values.results_dir(cfg) == "results/smoke"
    assert params_values.feature_table(cfg) == \
        "results/smoke/features/fitted_param_dataset_reparam_reg.parquet"
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in _code_files()
            for n, line in enumerate(f.read_text().splitlines(), 1)
            if _RESULTS_LITERAL.search(line) and not line.lstrip().startswith("#")]
    assert len(hits) == 1 and hits[0].startswith("src/madyn/workflow/params_values.py:"), hits
    assert "RESULTS = madyn_values.results_dir(config)" in \
        (ROOT / "workflow/rules/common.smk").read_text()


@pytest.mark.parametrize("literal", ['"results"', "'results/smoke'", 'f"results/{suite}"',
                                     'Path("results") / suite', 'f"results/{s}/series/"'])
def test_a_hard_coded_results_path_is_detected(literal):
    assert _RESULTS_LITERAL.search(f"x = {literal}")


@pytest.mark.parametrize("text", ['"writes results/<suite>/models"', '"results/<suite>/x"',
                                  "my_results = 1", '"the results/ folder"'])
def test_prose_about_results_is_not_a_path(text):
    assert not _RESULTS_LITERAL.search(text)
