"""DVC stage plumbing: the outs each stage must have for any source (``madyn step dvc-outs``),
a released folder's manifest and link, and each stage's code dependencies (the import
closure of what it runs, which dvc.yaml lists and tests/test_dvc_deps.py checks)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml


def _imports(path: Path) -> set[str]:
    """``madyn.*`` modules a file imports (module level and inside functions)."""
    import ast

    text = path.read_text()
    if path.suffix == ".smk" or path.name == "Snakefile":  # Snakemake files: import lines
        names = re.findall(r"^\s*(?:from|import)\s+(madyn[\w.]*)", text, re.M)
        names += [f"{pkg}.{m}" for pkg, m in
                  re.findall(r"^\s*from (madyn[\w.]*) import (\w+)", text, re.M)]
        return set(names)
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("madyn")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("madyn"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def module_file(src: Path, name: str) -> Path | None:
    """The file of module ``name`` under ``src`` (None for a non-module name)."""
    base = src.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


def import_closure(root: Path, files: list[Path], leaves: tuple[Path, ...] = ()
                   ) -> set[Path]:
    """Every madyn source file that ``files`` import, directly or not (relative to
    ``root``), the files themselves included; ``leaves`` are included but not followed.
    Package ``__init__`` files are left out."""
    src = root / "src"
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if f in leaves:
            continue
        for name in _imports(f):
            mf = module_file(src, name)
            if mf is not None and mf not in seen:
                todo.append(mf)
    return {f.relative_to(root) for f in seen if f.name != "__init__.py"}


# What each DVC stage runs: `snakemake <phase>_all` parses the Snakefile and common.smk and
# runs the rules of its phase file, whose jobs call `madyn` (the madyn.cli package only
# parses and dispatches, so its modules are listed but not followed) and, through it, the
# phase's stage module; the suite and extract stages then run `madyn step dvc-outs` (this
# module's ensure_stage_outs). The source stage runs `madyn step dvc-outs source` alone (no
# Snakemake).
STAGE_CODE = {
    "source": (None, ("workflow/dvc_stages",)),
    "suite": ("suite.smk", ("stages/suite", "workflow/dvc_stages")),
    "extract": (("extract.smk", "extract_run.smk"), ("stages/extract", "workflow/dvc_stages")),
    "fit": ("fit.smk", ("stages/fit",)),
    "features": ("features.smk", ("stages/features",)),
    "predict": (("predict.smk", "run.smk"), ("stages/predict", "stages/forecast",
                                             "stages/forecast_backtest")),
    "report": (("report.smk", "study.smk", "run.smk"), ("stages/report", "stages/effects")),
}


def stage_outs(root: Path, stage: str, suite: str) -> list[str]:
    """The ``outs`` of DVC stage ``stage`` in ``root/dvc.yaml`` with ``${suite}`` filled
    in: paths relative to ``root`` (metrics and plots left out)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    if stage not in stages:
        raise ValueError(f"dvc.yaml: no stage {stage!r} (stages: {', '.join(stages)})")
    outs = stages[stage].get("outs", [])
    paths = [next(iter(o)) if isinstance(o, dict) else o for o in outs]
    return [p.replace("${suite}", suite) for p in paths]


RELEASED_MANIFEST = "released_manifest.json"


def released_manifest(folder: Path, models: list[str]) -> dict:
    """What a released suite reads from ``folder``: each model's ``exp2_*`` files and its
    ``config.json`` (when there), as relative path -> {size, sha256}. Other files a user
    keeps there are left out: they change no result."""
    from madyn.io import sha256_file
    from madyn.measure import released

    scanned = released.scan(folder)
    paths = [f for m in models for f in scanned.get(m, {}).values()]
    paths += [folder / m / "config.json" for m in models
              if (folder / m / "config.json").is_file()]
    files = {}
    for f in sorted(paths):
        files[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size,
                                                   "sha256": sha256_file(f)}
    return {"files": files}


def ensure_source_link(root: Path, params: str = "params.yaml") -> str | None:
    """Make ``results/<suite>/source``, a dependency of the DVC suite stage, exist: for a
    released suite a link to its released folder, for a run suite a link to the folder
    holding its run folders (:func:`run_folder`) (DVC hashes a dependency through it and
    never writes, caches or deletes it; checked first by :func:`check_source_folder`), for
    any other source an empty folder. Only a link or an empty folder is ever replaced.
    Returns the path when made (relative to ``root``)."""
    from madyn.workflow import params_file, params_values

    cfg = params_file.load(str(root / params))
    suite = params_values.active(cfg)
    rel = f"{params_values.results_dir(cfg)}/source"
    link = root / rel
    target = ((root / suite["path"]).resolve() if suite["source"] == "released"
              else run_folder(root, suite) if suite["source"] == "run" else None)
    if suite["source"] == "run":
        check_source_folder(root, target)
    if target is not None and link.is_symlink() and link.resolve() == target:
        return None
    if target is None and link.is_dir() and not link.is_symlink():
        return None
    if link.is_symlink():
        link.unlink()
    elif link.is_dir():
        if any(link.iterdir()):
            raise ValueError(f"{rel}: not empty; madyn made it empty: remove what is in it")
        link.rmdir()
    elif link.exists():
        raise ValueError(f"{rel}: a file where madyn keeps a folder or link: remove it")
    link.parent.mkdir(parents=True, exist_ok=True)
    if target is None:
        link.mkdir()
    else:
        link.symlink_to(target, target_is_directory=True)
    return rel


def run_folder(root: Path, suite: dict) -> Path:
    """The one folder holding every run folder of a run suite (their common folder: a
    Trainer's output_dir holds its madyn-monitor folder); ValueError when they share none
    but ``/``."""
    import os

    paths = [str((root / m["path"]).resolve()) for m in suite["models"]]
    common = Path(os.path.commonpath(paths))
    if common == Path(common.anchor):
        raise ValueError(f"the run suite's folders ({', '.join(paths)}) share no folder but "
                         f"{common}: under DVC, put them under one folder")
    return common


def check_source_folder(root: Path, folder: Path) -> None:
    """A folder DVC will hash through ``results/<suite>/source`` (every file under it, at
    each ``dvc status``) must not hold the project ``root`` (its results, its venv: a
    run suite's folders whose common folder is the home folder, say), nor anything DVC
    would block on or read without end: a FIFO, a socket or a device, or a link leaving
    the folder (to /dev/zero, or to a folder elsewhere). ValueError naming the entry.
    Only the names and kinds are read (lstat), nothing is opened."""
    import os
    import stat

    from madyn.io import _kind

    root, folder = root.resolve(), folder.resolve()
    if root == folder or folder in root.parents:
        raise ValueError(f"the run suite's folder {folder} holds the project {root}: DVC "
                         "would hash all of it; put the run folders under a folder of "
                         "their own")
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    real = Path(os.path.realpath(e.path))
                    if real != folder and folder not in real.parents:
                        raise ValueError(f"{e.path}: a link to {real}, which leaves the "
                                         f"run suite's folder {folder}: DVC would read it "
                                         "through the link; remove it")
                    continue  # inside the folder: its target is checked where it lies
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(e.path))
                elif not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"{e.path}: {_kind(st.st_mode)}, not a regular file, "
                                     f"in the run suite's folder {folder}: DVC would block "
                                     "or read without end hashing it; remove it")


RUN_MANIFEST = "run_manifest.json"


def run_manifests(suite: dict, cache_file: Path) -> dict:
    """Each model's :func:`madyn.measure.runs.manifest` (what madyn reads of its run folder); the
    sha256 of unchanged files come from ``cache_file`` (madyn's, updated)."""
    from madyn.io import read_json, write_json
    from madyn.measure import runs

    try:
        cache = read_json(cache_file) if cache_file.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    out = {}
    for i, m in enumerate(suite["models"]):
        sc = runs.entry_scan(m, f"model {m['name']} (models.{i}.path)")
        out[m["name"]] = runs.manifest(sc, cache)
    write_json(cache_file, cache)
    return out


def ensure_stage_outs(root: Path, stage: str, params: str = "params.yaml") -> list[str]:
    """Make every ``outs`` folder of DVC stage ``stage`` exist, whatever the active suite's
    source: dvc.yaml names them from ``suite`` alone, so a source with nothing to put in
    one (a released suite trains and measures nothing) gets it empty. A released suite's
    ``results/<suite>/models`` is a folder of madyn's holding the manifest of what it reads
    from the released folder (:func:`released_manifest`): DVC never owns the user's folder,
    and an edited, added or deleted exp2 file changes the manifest, so the stages that
    read it rerun; a run suite's is madyn's folder holding :data:`RUN_MANIFEST` (what
    madyn reads of each run folder, :func:`run_manifests`). Stage ``source`` makes the
    suite stage's ``source`` dependency (:func:`ensure_source_link`) and its own out
    ``source.json``. Returns the paths made (relative to ``root``)."""
    from madyn.io import write_json
    from madyn.workflow import params_file, params_values

    cfg = params_file.load(str(root / params))
    suite = params_values.active(cfg)
    made = []
    if stage == "source":
        if rel := ensure_source_link(root, params):
            made.append(rel)
        write_json(root / f"{params_values.results_dir(cfg)}/source.json",
                   {"source": suite["source"], "path": suite.get("path")})
        return made
    for rel in stage_outs(root, stage, cfg["suite"]):
        out = root / rel
        if suite["source"] == "run" and rel == f"{params_values.results_dir(cfg)}/models":
            out.mkdir(parents=True, exist_ok=True)  # madyn's own folder, never a link
            res = root / params_values.results_dir(cfg)
            write_json(out / RUN_MANIFEST, run_manifests(suite, res / "run_hashes.json"))
            continue
        if suite["source"] == "released" and rel == f"{params_values.results_dir(cfg)}/models":
            if out.is_symlink():  # the link to the released folder earlier versions made
                out.unlink()
            if not out.is_dir():
                out.mkdir(parents=True)
                made.append(rel)
            folder = (root / suite["path"]).resolve()
            write_json(out / RELEASED_MANIFEST,
                       released_manifest(folder, params_values.model_names(suite)))
            continue
        if out.suffix:  # a file (metrics/growth.json): its phase's Snakemake target writes it
            continue
        if not out.exists():
            out.mkdir(parents=True)
            made.append(rel)
    return made


def stale_trained_models(root: Path, params: str = "params.yaml") -> list[str]:
    """Remove the training manifest of every model of the active suite that was trained
    with another recipe than params.yaml's now (its manifest's ``train`` differs from
    :func:`madyn.workflow.params_values.train_spec`). DVC reruns the suite stage when a training
    param changes, but Snakemake without its metadata (a queued experiment's workspace, a
    fresh clone) sees the checkpoints exist and keeps them; without the manifest (the
    training job's completion marker, madyn's own file) it retrains exactly those models,
    and the extract phase remeasures their new weights. Returns the manifests removed
    (relative to ``root``)."""
    import json

    from madyn.io import read_json
    from madyn.train.training import train_record
    from madyn.workflow import params_file, params_values

    cfg = params_file.load(str(root / params))
    suite = params_values.active(cfg)
    if suite["source"] != "local":
        return []
    removed = []
    for name in params_values.model_names(suite):
        rel = f"{params_values.results_dir(cfg)}/models/{name}/manifest.json"
        manifest = root / rel
        if not manifest.is_file():
            continue
        want = json.loads(json.dumps(train_record(params_values.train_spec(suite, name))))
        if read_json(manifest).get("train") != want:
            manifest.unlink()
            removed.append(rel)
    return removed


def compare_drop(suite: str) -> str:
    """The ``dvc exp show --drop`` pattern of ``madyn compare``: every dependency column
    (code and data files: their hashes) and the params of suites other than ``suite``
    (DVC shows the whole params.yaml), so that the headline metrics and the params a
    researcher changes remain."""
    import re

    return rf"(src|workflow|results)/|Snakefile$|suites\.(?!{re.escape(suite)}\.)"


def stage_code_deps(root: Path, stage: str) -> list[str]:
    """The code a DVC stage runs, as paths relative to ``root`` (what dvc.yaml lists)."""
    rules, modules = STAGE_CODE[stage]
    cli = sorted(f for f in (root / "src/madyn/cli").glob("*.py")
           if f.name not in ("__init__.py", "__main__.py"))
    rules = (rules,) if isinstance(rules, str) else rules or ()
    files = cli + ([root / "Snakefile", root / "workflow/rules/common.smk"] if rules else [])
    files += [root / "workflow/rules" / r for r in rules]
    files += [root / "src/madyn" / f"{m}.py" for m in modules]
    deps = import_closure(root, files, leaves=tuple(cli))
    deps.add(Path("src/madyn/schemas/params.schema.yaml"))  # read by madyn.workflow.schema_errors
    return sorted(str(p) for p in deps)


CODE_PREFIXES = ("src/", "workflow/rules/", "Snakefile")


def rewrite_code_deps(text: str, root: Path) -> str:
    """dvc.yaml's text with each stage's code deps replaced by :func:`stage_code_deps`.

    Other deps (data folders, templates), comments and layout stay as they are; the code
    deps follow a stage's other deps, sorted.
    """
    out: list[str] = []
    stage, in_deps = None, False
    for line in text.splitlines():
        head = re.match(r"^  ([A-Za-z_]+):", line)
        if head:
            stage, in_deps = head.group(1), False
        item = re.match(r"^      - ([^\s:#]+)", line)
        if in_deps and item and item.group(1).startswith(CODE_PREFIXES):
            continue
        if in_deps and not item and not line.lstrip().startswith("#"):
            out += [f"      - {d}" for d in stage_code_deps(root, stage)]
            in_deps = False
        if stage in STAGE_CODE and line == "    deps:":
            in_deps = True
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m madyn.workflow.dvc_stages [--write]: each stage's code deps
    import sys

    if sys.argv[1:] == ["--write"]:
        dvc_yaml = Path.cwd() / "dvc.yaml"
        dvc_yaml.write_text(rewrite_code_deps(dvc_yaml.read_text(), Path.cwd()))
    for name in STAGE_CODE:
        print(f"{name}:", *stage_code_deps(Path.cwd(), name), sep="\n  - ")


def sync_after_snakemake(root: Path, suite: str, params: str = "params.yaml") -> str | None:
    """After a plain ``snakemake`` that ran the whole workflow of params.yaml's active suite
    ``suite`` in a DVC repository, record it in DVC as ``dvc repro`` would have: make what
    the DVC stages add beyond Snakemake (the source link and ``source.json``, every
    stage's outs, the HTML report), then ``dvc commit -f``, so that ``dvc status`` is clean
    and ``dvc repro`` runs nothing. Nothing is done inside a DVC stage (``DVC_STAGE`` set),
    outside a DVC repository or for another suite (``--config suite=...``). Returns what
    was done (one line), or None."""
    import os
    import subprocess

    from madyn.workflow import params_file, params_values
    from madyn.workflow.run import tool

    if os.environ.get("DVC_STAGE") or not (root / ".dvc").is_dir():
        return None
    cfg = params_file.load(str(root / params))
    if cfg["suite"] != suite:
        return None
    for stage in ("source", "suite", "extract"):
        ensure_stage_outs(root, stage, params)
    report = f"{params_values.results_dir(cfg)}/report.html"
    for cmd in ([tool("snakemake"), "--nolock", "--report", report],
                [tool("dvc"), "commit", "--force", "--quiet"]):
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if r.returncode:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {r.returncode}): {tail[0]}")
    return f"DVC: {report} made and every stage committed (dvc status is clean)"
