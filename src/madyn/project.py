"""A copy of madyn's workflow as a separate project (for tests and benchmarks that run
Snakemake and DVC on the smoke suite without touching the checkout's results)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

WORKFLOW_FILES = ("Snakefile", "dvc.yaml")
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


def _imports(path: Path) -> set[str]:
    """``madyn.*`` modules a file imports (module level and inside functions)."""
    import ast
    import re

    text = path.read_text()
    if path.suffix == ".smk" or path.name == "Snakefile":  # Snakemake files: import lines
        names = re.findall(r"^\s*(?:from|import)\s+(madyn[\w.]*)", text, re.M)
        names += [f"madyn.{m}" for m in re.findall(r"^\s*from madyn import (\w+)", text, re.M)]
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
# runs the rules of its phase file, whose jobs call `madyn` (cli.py only parses and
# dispatches, so it is not followed) and, through it, the phase's stage module; the suite
# and extract stages then run `madyn dvc-outs` (this module's ensure_stage_outs).
STAGE_CODE = {
    "suite": ("suite.smk", ("stages/suite", "project")),
    "extract": ("extract.smk", ("stages/extract", "project")),
    "fit": ("fit.smk", ("stages/fit",)),
    "features": ("features.smk", ("stages/features",)),
    "predict": ("predict.smk", ("stages/predict",)),
    "report": ("report.smk", ("stages/report", "stages/effects")),
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


def ensure_stage_outs(root: Path, stage: str, params: str = "params.yaml") -> list[str]:
    """Make every ``outs`` folder of DVC stage ``stage`` exist, whatever the active suite's
    source: dvc.yaml names them from ``suite`` alone, so a source with nothing to put in
    one (a released suite trains and measures nothing) gets it empty. A released suite's
    ``results/<suite>/models`` is a link to its released folder: DVC hashes through it,
    so an edited or deleted exp2 file changes the suite stage's outs and the deps of the
    stages that read them. Returns the paths made (relative to ``root``)."""
    from madyn import config

    cfg = config.load(str(root / params))
    suite = config.active(cfg)
    made = []
    for rel in stage_outs(root, stage, cfg["suite"]):
        out = root / rel
        if suite["source"] == "released" and rel == f"{config.results_dir(cfg)}/models":
            target = (root / suite["path"]).resolve()
            if out.is_symlink() and out.resolve() == target:
                continue
            if out.exists() and not out.is_symlink():
                raise ValueError(f"{rel}: a released suite's models are a link to "
                                 f"suites.{cfg['suite']}.path, but {rel} is a real "
                                 "folder: remove it")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            out.symlink_to(target, target_is_directory=True)
        elif not out.exists():
            if out.suffix:
                raise ValueError(f"dvc.yaml: stage {stage}: out {rel} is missing and is "
                                 "not a folder")
            out.mkdir(parents=True)
        else:
            continue
        made.append(rel)
    return made


def stage_code_deps(root: Path, stage: str) -> list[str]:
    """The code a DVC stage runs, as paths relative to ``root`` (what dvc.yaml lists)."""
    rules, modules = STAGE_CODE[stage]
    cli = root / "src/madyn/cli.py"
    files = [root / "Snakefile", root / "workflow/rules/common.smk",
             root / "workflow/rules" / rules, cli]
    files += [root / "src/madyn" / f"{m}.py" for m in modules]
    deps = import_closure(root, files, leaves=(cli,))
    deps.add(Path("src/madyn/schemas/params.schema.yaml"))  # read by madyn.config
    return sorted(str(p) for p in deps)


if __name__ == "__main__":  # print each stage's code deps: python -m madyn.project
    for name in STAGE_CODE:
        print(f"{name}:", *stage_code_deps(Path.cwd(), name), sep="\n  - ")
