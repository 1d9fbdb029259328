"""The study's released data-set layout (seed 001), read and written safely.

``{model}/stats/exp2_{model}_step{N}``: text holding a B x Q x L nested list (B sequences,
Q = top1, top2, top3, median, L layers), meant by its authors for Python's ``eval``.
madyn never evaluates it: :func:`parse_exp2` walks the syntax tree and accepts only
numbers, lists/tuples, unary minus, ``nan``/``inf`` names and an optional ``array(...)`` /
``tensor(...)`` wrapper; everything else is rejected, and nothing is ever executed.
"""

from __future__ import annotations

import ast
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

QUANTITIES = ["top1", "top2", "top3", "median"]
MAX_BYTES = 64 * 1024 * 1024
_NAME = re.compile(r"^exp2_(?P<model>.+)_step(?P<step>\d+)$")
_WRAPPERS = {"array", "tensor", "np.array", "numpy.array", "torch.tensor"}
_NAMES = {"nan": math.nan, "inf": math.inf, "NaN": math.nan, "Infinity": math.inf}


class MalformedStats(ValueError):
    """A released stats file that is not a valid B x Q x L literal."""


def _literal(node: ast.AST):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, float):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    raise MalformedStats(f"unexpected {type(node).__name__} at line {getattr(node, 'lineno', '?')}")


def _callee(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_callee(node.value)}.{node.attr}"
    return "?"


def parse_exp2(text: str) -> np.ndarray:
    """Parse a released stats text into a float64 array B x 4 x L, validated."""
    if len(text) > MAX_BYTES:
        raise MalformedStats("file too large")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError) as e:
        raise MalformedStats(f"not a literal: {e}") from None
    if isinstance(tree, ast.Call):  # array([...], dtype=...) / tensor([...])
        if _callee(tree.func) not in _WRAPPERS or len(tree.args) != 1:
            raise MalformedStats(f"call to {_callee(tree.func)!r} is not allowed")
        tree = tree.args[0]
    try:
        arr = np.asarray(_literal(tree), dtype=np.float64)
    except ValueError as e:  # ragged lists
        raise MalformedStats(f"not a rectangular B x Q x L list: {e}") from None
    if arr.ndim != 3 or arr.shape[1] != len(QUANTITIES) or min(arr.shape) == 0:
        raise MalformedStats(f"shape {arr.shape} is not B x 4 x L")
    if not np.isfinite(arr).all():
        raise MalformedStats("non-finite values")
    if (arr < 0).any():
        raise MalformedStats("negative magnitudes")
    top = arr[:, :3, :]
    if (np.diff(top, axis=1) > 1e-6 * np.abs(top[:, :1, :]).clip(min=1)).any():
        raise MalformedStats("top1 >= top2 >= top3 does not hold")
    return arr


def to_table(arr: np.ndarray) -> pd.DataFrame:
    """B x 4 x L array -> tidy table with the columns of madyn's per-checkpoint stats."""
    b, _, n_layers = arr.shape
    df = pd.DataFrame({"seq": np.repeat(np.arange(b), n_layers),
                       "layer": np.tile(np.arange(n_layers), b)})
    for q, name in enumerate(QUANTITIES):
        df[name] = arr[:, q, :].reshape(-1)
    df["ratio"] = df["top1"] / df["median"]
    df["nonfinite"] = 0
    return df


def from_table(df: pd.DataFrame) -> np.ndarray:
    """Per-checkpoint stats table -> B x 4 x L array (inverse of :func:`to_table`)."""
    d = df.sort_values(["seq", "layer"])
    b, n_layers = d["seq"].nunique(), d["layer"].nunique()
    return np.stack([d[q].to_numpy().reshape(b, n_layers) for q in QUANTITIES], axis=1)


def exp2_path(root: str | Path, model: str, step: int) -> Path:
    return Path(root) / model / "stats" / f"exp2_{model}_step{step}"


def write_exp2(df: pd.DataFrame, path: str | Path) -> None:
    """Write a per-checkpoint table in the released text layout (a nested list)."""
    from madyn.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(repr(from_table(df).tolist()) + "\n")


def scan(root: str | Path) -> dict[str, dict[int, Path]]:
    """Models and steps of a released folder: model -> step -> file path."""
    out: dict[str, dict[int, Path]] = {}
    for f in sorted(Path(root).glob("*/stats/exp2_*")):
        m = _NAME.match(f.name)
        if m and m["model"] == f.parent.parent.name:
            out.setdefault(m["model"], {})[int(m["step"])] = f
    return out


def read_model(files: dict[int, Path], warn=None) -> dict[int, pd.DataFrame]:
    """Parse one model's released files; malformed ones are reported by name and skipped."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    tables: dict[int, pd.DataFrame] = {}
    for step, f in sorted(files.items()):
        try:
            tables[step] = to_table(parse_exp2(f.read_text(errors="replace")))
        except MalformedStats as e:
            warn(f"skipping {f}: {e}")
    layers = {t["layer"].nunique() for t in tables.values()}
    if len(layers) > 1:
        raise MalformedStats(f"files disagree on the number of layers: {sorted(layers)}")
    return tables
