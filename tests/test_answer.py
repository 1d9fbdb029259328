"""What a finished `madyn run` prints after the headline: how it compares with the
headline committed in git, with the cross-machine tolerance in mind (issue 32)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from madyn.workflow.answer import HEADLINE, against_committed
from tests.helpers import ROOT

RESULTS = "results/embedded"


def _repo(tmp_path: Path) -> Path:
    """A git repository whose HEAD holds the committed embedded headline."""
    dst = tmp_path / RESULTS / HEADLINE
    dst.parent.mkdir(parents=True)
    shutil.copy(ROOT / RESULTS / HEADLINE, dst)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, env=env, check=True)
    return tmp_path


def _edit(root: Path, section: str, key: str, factor: float) -> None:
    f = root / RESULTS / HEADLINE
    doc = json.loads(f.read_text())
    doc[section][key] *= factor
    f.write_text(json.dumps(doc))


def test_the_same_headline_is_identical(tmp_path):
    root = _repo(tmp_path)
    assert against_committed(root, RESULTS).endswith("identical")


def test_a_small_move_is_within_the_tolerance_and_a_large_one_named(tmp_path):
    root = _repo(tmp_path)
    _edit(root, "growth", "ratio_mid_mean", 1.02)
    assert "every metric within the tolerance" in against_committed(root, RESULTS)
    _edit(root, "growth", "final_ratio_mid_mean", 2.0)
    line = against_committed(root, RESULTS)
    assert "1 beyond the tolerance" in line and "growth.final_ratio_mid_mean: 20.07 -> " \
        in line


def test_no_git_or_no_committed_headline_says_nothing(tmp_path):
    (tmp_path / RESULTS / "metrics").mkdir(parents=True)
    shutil.copy(ROOT / RESULTS / HEADLINE, tmp_path / RESULTS / HEADLINE)
    assert against_committed(tmp_path, RESULTS) is None
    assert against_committed(tmp_path, "results/other") is None
