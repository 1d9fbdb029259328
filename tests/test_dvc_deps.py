"""dvc.yaml lists, for each stage, exactly the code that stage runs (its import closure)."""

from __future__ import annotations

import pytest
import yaml

from madyn.project import STAGE_CODE, stage_code_deps
from tests.conftest import ROOT

CODE_PREFIXES = ("src/", "workflow/rules/", "Snakefile")


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_dvc_stage_is_known():
    assert set(_dvc_stages()) == set(STAGE_CODE)


@pytest.mark.parametrize("stage", sorted(STAGE_CODE))
def test_stage_code_deps_equal_import_closure(stage):
    listed = sorted(d for d in _dvc_stages()[stage]["deps"] if d.startswith(CODE_PREFIXES))
    assert listed == stage_code_deps(ROOT, stage)


def test_closure_follows_imports_inside_functions(tmp_path):
    """A stage importing a module lazily (inside a function) depends on it too."""
    from madyn.project import import_closure

    src = tmp_path / "src/madyn"
    src.mkdir(parents=True)
    (src / "a.py").write_text("def f():\n    from madyn import b\n")
    (src / "b.py").write_text("import madyn.c\n")
    (src / "c.py").write_text("x = 1\n")
    (src / "d.py").write_text("y = 2\n")
    got = import_closure(tmp_path, [src / "a.py"])
    assert {p.name for p in got} == {"a.py", "b.py", "c.py"}


def test_dvc_outs_of_a_released_suite(tmp_path):
    """`madyn dvc-outs`: a released suite's models folder is a link to its data (made
    once), its other outs exist empty, and a real folder in the link's place is refused."""
    from madyn.project import copy_workflow, ensure_stage_outs

    data = tmp_path / "data"
    data.mkdir()
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_workflow(ROOT, proj)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["study"] = {"source": "released", "path": str(data),
                              "models": [{"name": "m"}]}
    cfg["suite"] = "study"
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    made = ensure_stage_outs(proj, "suite")
    res = proj / "results/study"
    assert sorted(made) == [f"results/study/{d}" for d in ("corpus", "models", "timing")]
    assert (res / "models").is_symlink() and (res / "models").resolve() == data
    assert not any((res / "corpus").iterdir())
    assert ensure_stage_outs(proj, "suite") == []
    assert "results/study/released" in ensure_stage_outs(proj, "extract")
    (res / "models").unlink()
    (res / "models").mkdir()
    with pytest.raises(ValueError, match="results/study/models: .* real folder"):
        ensure_stage_outs(proj, "suite")
    with pytest.raises(ValueError, match="no stage 'nope'"):
        ensure_stage_outs(proj, "nope")
