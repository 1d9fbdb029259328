"""A copy of madyn's workflow as a separate project (for tests and benchmarks that run
Snakemake and DVC on the smoke suite without touching the checkout's results)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

# .gitignore too: results/ stays untracked by git, as in a clone of the repository
WORKFLOW_FILES = ("Snakefile", "dvc.yaml", ".gitignore")
WORKFLOW_DIRS = ("workflow", "profiles", "src")


def copy_workflow(root: Path, dst: Path, suite: str = "smoke") -> Path:
    """Copy the workflow files of repository ``root`` into ``dst``, with ``params.yaml``'s
    ``suite`` set to ``suite``. Returns ``dst``."""
    for name in WORKFLOW_FILES:
        shutil.copy(root / name, dst / name)
    for name in WORKFLOW_DIRS:
        shutil.copytree(root / name, dst / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    cfg = yaml.safe_load((root / "params.yaml").read_text())
    cfg["suite"] = suite
    (dst / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst
