"""Small I/O helpers shared by every phase: atomic writes, JSON, fingerprints."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output path madyn must not write to; the message names it and says why."""


def refuse_folder(path: str | Path) -> None:
    """A single-file output must not be an existing folder (madyn would lose it)."""
    if Path(path).is_dir():
        raise OutputError(f"{path}: is a folder; give a file path for this output "
                          "(madyn never replaces a folder it did not write)")


def _stale_tmp(path: Path) -> list[Path]:
    """Temporary folders an :func:`atomic_path` writer killed -9 left beside ``path``:
    named as ``tempfile.mkdtemp`` names them, holding nothing but what that writer put
    there (``path``'s name, or the folder it was replacing). A user's file or folder that
    only looks alike is not one of them."""
    pat = re.compile(re.escape(f".{path.name}.tmp") + r"[a-z0-9_]{8}")
    return [d for d in path.parent.glob(f".{glob.escape(path.name)}.tmp*")
            if pat.fullmatch(d.name) and d.is_dir() and not d.is_symlink()
            and {e.name for e in d.iterdir()} <= {path.name, _OLD}]


_OLD = ".madyn-replaced"  # where atomic_path moves the folder it replaces, then drops it


def _lost(old: Path, new: Path) -> str | None:
    """The first entry of folder ``old`` (relative path) that folder ``new`` has no
    namesake of; None when replacing ``old`` by ``new`` loses nothing madyn did not write."""
    for entry in sorted(old.rglob("*")):
        rel = entry.relative_to(old)
        twin = new / rel
        if not (twin.exists() or twin.is_symlink()) or (
                entry.is_dir() and not entry.is_symlink() and not twin.is_dir()):
            return str(rel)
    return None


@contextmanager
def atomic_path(path: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Whatever the caller creates at the yielded path replaces ``path`` atomically
    (``os.replace``), so a killed job never leaves a half-written output behind.
    A file output (the default) never replaces a folder: :class:`OutputError`, before the
    caller writes anything. ``folder``: the caller writes a folder; an existing folder at
    ``path`` is replaced only when every entry in it has a namesake in the new one (what
    madyn wrote there before), else :class:`OutputError` names the entry that would be lost.
    """
    path = Path(path)
    if not folder:
        refuse_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_tmp(path):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not folder:
            refuse_folder(path)  # made while the caller wrote
        elif path.is_dir() and not path.is_symlink():
            lost = _lost(path, target)
            if lost is not None:
                raise OutputError(f"{path}: holds {lost}, which madyn did not write; "
                                  "move it away, or write elsewhere")
            path.rename(tmp / _OLD)  # dropped with tmp below
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def jsonable(obj: Any) -> Any:
    """Make ``obj`` strict-JSON: dict keys become str, tuples lists, numpy arrays and scalars
    Python lists and scalars, NaN/inf None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
