"""Small I/O helpers shared by every phase: atomic writes, JSON, fingerprints."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


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


OUTPUT_MARKER = ".madyn-output"  # in every output folder madyn makes (madyn predict,
# madyn forecast --run): an existing folder is written into only when it holds this


def check_output_folder(path: str | Path) -> None:
    """A folder output may go to ``path`` only when it does not exist, is an empty
    folder, or is a folder madyn made (holding :data:`OUTPUT_MARKER`); else
    :class:`OutputError` naming an entry of it (madyn never replaces a user's file that
    happens to share a name with one of its outputs)."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path}: a link; give a folder path for this output")
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"{path}: not a folder; give a folder path for this output")
    entries = sorted(p.name for p in path.iterdir())
    if entries and OUTPUT_MARKER not in entries:
        raise OutputError(f"{path}: holds {entries[0]}, and madyn did not make this folder "
                          f"(no {OUTPUT_MARKER} in it); give a new or empty folder")


def mark_output_folder(path: str | Path, command: str) -> None:
    """Make folder ``path`` (checked by :func:`check_output_folder` first) and mark it as
    madyn's own (:data:`OUTPUT_MARKER`, naming ``command``), for an output folder filled
    file by file (each file atomically) rather than replaced whole."""
    check_output_folder(path)
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / OUTPUT_MARKER).write_text(json.dumps({"written_by": command}) + "\n")


@contextmanager
def output_folder(path: str | Path, command: str) -> Iterator[Path]:
    """Yield a new temporary folder to fill; on success it replaces ``path`` at once
    (:func:`atomic_path`), with :data:`OUTPUT_MARKER` (naming ``command``) added. ``path``
    must pass :func:`check_output_folder`, and a folder madyn made must hold nothing the
    new one lacks (a file the user put there since)."""
    check_output_folder(path)
    with atomic_path(path, folder=True) as tmp:
        tmp.mkdir()
        yield tmp
        check_output_folder(path)  # made while the caller wrote
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": command}) + "\n")


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


JSON_LIMIT = 16 * 2**20  # bytes: far above any config.json, index or trainer state


class UnsafeFile(ValueError):
    """A user file madyn will not read: not a regular file, or larger than allowed."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open a user's file for reading only if it is a regular file (a symlink to one is
    followed): a FIFO, a device such as /dev/zero, a socket or a folder is refused by
    :class:`UnsafeFile` naming it, before anything blocks or reads without end."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise OSError(f"{path}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise UnsafeFile(f"{path}: {_kind(st.st_mode)}{link}, not a regular file; "
                         "madyn reads only regular files")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never blocks
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the check
        f.close()
        raise UnsafeFile(f"{path}: not a regular file; madyn reads only regular files")
    return f


def read_limited(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (:func:`open_regular`);
    :class:`UnsafeFile` naming it when larger."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"{path}: larger than {limit / 2**20:g} MB, more than a file of "
                         "this kind may hold")
    return data


def read_json(path: str | Path, limit: int = JSON_LIMIT) -> Any:
    """A JSON file (a user's config.json, a weights index, a trainer state, a marker),
    read safely: only a regular file, at most ``limit`` bytes, UTF-8, valid JSON. Every
    failure is a ValueError (OSError when unreadable) whose one-line message names it."""
    data = read_limited(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a JSON file madyn reads (nested too deeply)") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
