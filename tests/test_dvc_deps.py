"""dvc.yaml lists, for each stage, exactly the code that stage runs (its import closure)."""

from __future__ import annotations

import json

import pytest
import yaml

from madyn.workflow.dvc_stages import CODE_PREFIXES, STAGE_CODE, rewrite_code_deps, stage_code_deps
from tests.helpers import ROOT


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_dvc_stage_is_known():
    assert set(_dvc_stages()) == set(STAGE_CODE)


@pytest.mark.parametrize("stage", sorted(STAGE_CODE))
def test_stage_code_deps_equal_import_closure(stage):
    listed = sorted(d for d in _dvc_stages()[stage]["deps"] if d.startswith(CODE_PREFIXES))
    assert listed == stage_code_deps(ROOT, stage)


def test_rewrite_code_deps_keeps_the_committed_file():
    """`python -m madyn.workflow.dvc_stages --write` regenerates exactly the committed dvc.yaml (its
    other deps, comments and layout kept); a stale list is brought up to date."""
    text = (ROOT / "dvc.yaml").read_text()
    assert rewrite_code_deps(text, ROOT) == text
    stale = text.replace("      - src/madyn/curves/fit.py\n", "", 1).replace(
        "      - Snakefile\n", "      - Snakefile\n      - src/madyn/nothing.py\n", 1)
    assert stale != text and rewrite_code_deps(stale, ROOT) == text


def test_closure_follows_imports_inside_functions(tmp_path):
    """A stage importing a module lazily (inside a function) depends on it too."""
    from madyn.workflow.dvc_stages import import_closure

    src = tmp_path / "src/madyn"
    src.mkdir(parents=True)
    (src / "a.py").write_text("def f():\n    from madyn import b\n")
    (src / "b.py").write_text("import madyn.c\n")
    (src / "c.py").write_text("x = 1\n")
    (src / "d.py").write_text("y = 2\n")
    got = import_closure(tmp_path, [src / "a.py"])
    assert {p.name for p in got} == {"a.py", "b.py", "c.py"}


def test_dvc_outs_of_a_released_suite(tmp_path):
    """`madyn step dvc-outs`: a released suite's source is a link to its data, its models folder
    is madyn's own, holding the manifest of the files madyn reads (a user's other files
    left out), its other outs exist empty; a link an earlier version made in the models
    folder's place is replaced (the user's files stay), a non-empty source folder refused."""
    from madyn.measure.released import exp2_path
    from madyn.workflow.dvc_stages import ensure_stage_outs
    from madyn.workflow.scratch_project import copy_workflow

    data = tmp_path / "data"
    exp2_path(data, "m", 0).parent.mkdir(parents=True)
    exp2_path(data, "m", 0).write_text("[[[3.0], [2.0], [1.0], [0.5]]]")
    (data / "m" / "notes.txt").write_text("mine")
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_workflow(ROOT, proj)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["study"] = {"source": "released", "path": str(data),
                              "models": [{"name": "m"}]}
    cfg["suite"] = "study"
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = proj / "results/study"
    res.mkdir(parents=True)
    (res / "models").symlink_to(data)  # the layout of earlier versions
    assert ensure_stage_outs(proj, "source") == ["results/study/source"]
    assert (res / "source").is_symlink() and (res / "source").resolve() == data
    assert ensure_stage_outs(proj, "source") == []
    made = ensure_stage_outs(proj, "suite")
    assert sorted(made) == [f"results/study/{d}" for d in ("corpus", "models", "timing")]
    assert (res / "models").is_dir() and not (res / "models").is_symlink()
    manifest = json.loads((res / "models/released_manifest.json").read_text())["files"]
    assert list(manifest) == ["m/stats/exp2_m_step0"]
    assert manifest["m/stats/exp2_m_step0"]["size"] == 30
    assert (data / "m" / "notes.txt").read_text() == "mine"
    assert not any((res / "corpus").iterdir())
    assert ensure_stage_outs(proj, "suite") == []
    assert "results/study/released" in ensure_stage_outs(proj, "extract")
    (res / "source").unlink()
    (res / "source").mkdir()
    (res / "source" / "x").write_text("")
    with pytest.raises(ValueError, match="results/study/source: not empty"):
        ensure_stage_outs(proj, "source")
    with pytest.raises(ValueError, match="no stage 'nope'"):
        ensure_stage_outs(proj, "nope")


def test_retrain_stale_keeps_models_trained_with_the_current_recipe(tmp_path):
    """`madyn step retrain-stale` removes the manifest of a model trained with another recipe only:
    a manifest that training itself writes for params.yaml's recipe (its ``train`` record
    leaves fields at their defaults out) is kept. Before the fix every model counted as
    stale, so each run of the suite stage retrained the whole suite (and overwrote a
    tampered checkpoint instead of refusing to measure it)."""
    from madyn.io import write_json
    from madyn.train.training import train_record
    from madyn.workflow import params_file, params_values
    from madyn.workflow.dvc_stages import stale_trained_models
    from madyn.workflow.scratch_project import copy_workflow

    copy_workflow(ROOT, tmp_path)
    cfg = yaml.safe_load((tmp_path / "params.yaml").read_text())
    cfg["suite"] = "smoke"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    suite = params_values.active(params_file.load(str(tmp_path / "params.yaml")))
    (current, other) = params_values.model_names(suite)
    for name in (current, other):
        train = train_record(params_values.train_spec(suite, name))
        if name == other:
            train["lr"] = train["lr"] * 2  # trained with another lr than params.yaml's
        manifest = tmp_path / f"results/smoke/models/{name}/manifest.json"
        manifest.parent.mkdir(parents=True)
        write_json(manifest, {"train": train})
    assert stale_trained_models(tmp_path) == [f"results/smoke/models/{other}/manifest.json"]
    assert (tmp_path / f"results/smoke/models/{current}/manifest.json").is_file()
    assert stale_trained_models(tmp_path) == []
