"""The package's folders are its floors: no module imports a floor above its own, the
sibling floors ``train`` and ``measure`` do not import each other, and no module-level
import cycle exists (checked on the source, with Python's own parser)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# folder -> floor; top-level modules (io, settings, ...) are the foundation, floor 0
FLOORS = {"": 0, "train": 1, "measure": 1, "curves": 2, "predict": 3, "report": 4,
          "workflow": 5, "stages": 6, "cli": 7}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "madyn").rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ""


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """madyn modules ``path`` imports (``from madyn.x import y`` counts y when y is a
    module)."""
    mods = _modules()
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("madyn")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("madyn"):
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found = subs & mods.keys()
            out |= found or {node.module}
    return out & mods.keys()


def test_every_folder_is_a_known_floor():
    folders = {p.name for p in (SRC / "madyn").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= FLOORS.keys()


def test_no_import_reaches_up_or_sideways():
    bad = []
    for name, path in _modules().items():
        here = _folder(name)
        for imp in _imports(path, top_level_only=False):
            there = _folder(imp)
            if imp == "madyn" or there == here:
                continue
            if FLOORS[there] >= FLOORS[here]:
                bad.append(f"{name} imports {imp}")
    assert not bad, "\n".join(bad)


def test_no_module_level_import_cycle():
    graph = {name: _imports(path, top_level_only=True) - {name, "madyn"}
             for name, path in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
