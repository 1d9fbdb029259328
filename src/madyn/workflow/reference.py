"""A committed reference data set: a local suite's statistics in the study's released layout
plus a manifest (recipe, corpus, versions, hardware, training minutes), small enough for the
repository, read back by a ``released`` suite (``data/reference/firsttoken/``).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path

from madyn.io import atomic_path, read_json, write_json

MANIFEST = "manifest.json"
MADE_BY = "madyn make-reference"


def _versions() -> dict:
    import numpy
    import torch
    import transformers

    from madyn import __version__

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "madyn": __version__}


def _hardware() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or None}


def _check_ours(out: Path) -> None:
    """Refuse to replace a folder madyn did not write (no manifest of ours in it)."""
    if not out.exists():
        return
    m = out / MANIFEST
    try:
        ours = out.is_dir() and read_json(m).get("made_by") == MADE_BY
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ValueError(f"{out}: exists and is not a reference madyn wrote (no {MANIFEST} "
                         f"made by {MADE_BY}); remove it or choose another --out")


def make_reference(results: str | Path, out: str | Path, suite_name: str, suite: dict,
                   remake: str) -> dict:
    """Copy ``results/released`` (the series stage's export: exp2 files, config.json and
    extremes.csv per model) to ``out`` and write its manifest. ``suite``: the suite's
    params.yaml entry (the recipe); ``remake``: the command that remakes it. Replaces an
    earlier reference madyn wrote at ``out``, atomically; refuses anything else."""
    res, dest = Path(results), Path(out)
    src = res / "released"
    models = [m["name"] for m in suite["models"]]
    missing = [m for m in models if not (src / m / "stats").is_dir()]
    if missing:
        raise ValueError(f"{src}: no released export for {missing}; run the suite first")
    _check_ours(dest)
    train = read_json(res / "timing" / "train.json")  # the train_summary rule's output
    per_model = {}
    for m in models:
        man = read_json(res / "models" / m / "manifest.json")
        per_model[m] = {"n_params": man["n_params"], "final_loss": man["final_loss"],
                        "steps": man["steps"], "train_seconds": train["models"].get(m)}
    manifest = {
        "made_by": MADE_BY, "suite": suite_name, "made_unix": int(time.time()),
        "made_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "remake": remake,
        # a generated suite's models are its design space's expansion: both recorded
        "recipe": {k: suite[k] for k in ("description", "train", "extract", "design_space",
                                          "models", "base_design") if k in suite},
        "corpus": read_json(res / "corpus" / "manifest.json"),
        "training": {"wall_minutes": round(train.get("wall_s", 0) / 60, 2),
                     "sum_minutes": round(train.get("sum_s", 0) / 60, 2),
                     "threads": train.get("threads")},
        "models": per_model,
        "versions": _versions(), "hardware": _hardware(),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, folder=True) as tmp:
        for m in models:
            shutil.copytree(src / m, tmp / m)
        write_json(tmp / MANIFEST, manifest)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    manifest["size_bytes"] = size
    write_json(dest / MANIFEST, manifest)
    return manifest
