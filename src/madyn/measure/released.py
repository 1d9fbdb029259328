"""The released data-set layout of *Hidden Dynamics of Massive Activations in Transformer
Training* (Gallego-Feliciano et al., arXiv 2508.03616), read and written safely.

``{model}/stats/exp2_{model}_step{N}``: text holding a B x Q x L nested list (B sequences,
Q = top1, top2, top3, median, L layers), meant by its authors for Python's ``eval``.
madyn never evaluates it: :func:`parse_exp2` is a small iterative scanner that accepts only
brackets, commas, numbers (sign, decimals, exponent), ``nan``/``inf`` names, exactly three
list levels and an optional single ``array(...)`` / ``tensor(...)`` wrapper with an optional
``dtype=...`` keyword. Anything else is rejected with a short reason; nothing is executed,
nothing recurses, and values go straight into a compact float buffer (8 bytes each).
"""

from __future__ import annotations

import os
import re
import sys
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

QUANTITIES = ["top1", "top2", "top3", "median"]
MAX_BYTES = 64 * 1024 * 1024
DEPTH = 3  # list levels of a B x Q x L literal
_NAME = re.compile(r"^exp2_(?P<model>.+)_step(?P<step>\d+)$")
# one token after optional whitespace: a number, a nan/inf name, or a bracket / comma
_TOKEN = re.compile(
    r"\s*(?:(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[+-]?(?:nan|NaN|inf|Infinity))(?![\w.])"
    r"|(?P<p>[\[\],]))")
_HEAD = re.compile(r"\s*(?:(?:np|numpy|torch)\.)?(?:array|tensor)\(")
_TAIL = re.compile(r"\s*(?:,\s*dtype\s*=\s*[A-Za-z_][\w.]*\s*)?,?\s*\)\s*")
_SPACE = re.compile(r"\s*")


class MalformedStats(ValueError):
    """A released stats file that is not a valid B x Q x L literal."""


def _unwrap(text: str) -> tuple[int, int]:
    """Span [start, end) of the list literal inside an optional array(...)/tensor(...)."""
    head = _HEAD.match(text)
    if head is None:
        return 0, len(text)
    end = text.rfind("]") + 1
    if end == 0 or not _TAIL.fullmatch(text, end):
        raise MalformedStats("wrapper call must be array([...]) or tensor([...]) "
                             "with at most a dtype= keyword")
    return head.end(), end


def _where(text: str, pos: int) -> str:
    return f"{text[pos:pos + 16].strip()[:16]!r} at offset {pos}"


def _scan(text: str, start: int, end: int) -> tuple[array, tuple[int, int, int]]:
    """Scan ``text[start:end]`` as a rectangular 3-level list: flat values and (B, Q, L)."""
    values = array("d")
    shape = [-1] * DEPTH  # element count of every list at depth d (set by the first one)
    count = [0] * (DEPTH + 1)  # elements seen so far in the open list at each depth
    depth, pos = 0, start
    expect_value = True  # after '[' or ',': a value or ']' may come; else ',' or ']'
    done = False
    while pos < end:
        m = _TOKEN.match(text, pos, end)
        if m is None:
            if _SPACE.match(text, pos, end).end() == end:
                break
            raise MalformedStats(f"unexpected {_where(text, pos)}")
        tok, pos = m.group("p"), m.end()
        if done:
            raise MalformedStats(f"text after the closing bracket: {_where(text, m.start())}")
        if tok == "[":
            if not expect_value:
                raise MalformedStats(f"missing comma before {_where(text, m.start())}")
            if depth == DEPTH:
                raise MalformedStats(f"nested deeper than {DEPTH} list levels")
            depth += 1
            count[depth] = 0
        elif tok == "]":
            if depth == 0:
                raise MalformedStats(f"unbalanced ']' at offset {m.start()}")
            if shape[depth - 1] == -1:
                shape[depth - 1] = count[depth]
            elif shape[depth - 1] != count[depth]:
                raise MalformedStats(f"ragged lists: {count[depth]} elements at level {depth}"
                                     f" where {shape[depth - 1]} came before")
            depth -= 1
            count[depth] += 1
            expect_value = False
            done = depth == 0
        elif tok == ",":
            if expect_value or depth == 0:
                raise MalformedStats(f"misplaced comma at offset {m.start()}")
            expect_value = True
        else:  # a number or a nan/inf name
            if not expect_value or depth != DEPTH:
                raise MalformedStats(f"number outside a level-{DEPTH} list: "
                                     f"{_where(text, m.start())}")
            values.append(float(m.group("num") or m.group("name")))
            count[depth] += 1
            expect_value = False
    if not done:
        raise MalformedStats("unbalanced brackets: the list is not closed"
                             if depth else "no list literal")
    if -1 in shape:
        raise MalformedStats("not a 3-level B x Q x L list")
    return values, (shape[0], shape[1], shape[2])


def _check(arr: np.ndarray) -> np.ndarray:
    """Validate a B x 4 x L array of magnitudes."""
    if arr.shape[1] != len(QUANTITIES) or min(arr.shape) == 0:
        raise MalformedStats(f"shape {arr.shape} is not B x 4 x L")
    if not np.isfinite(arr).all():
        raise MalformedStats("non-finite values")
    if (arr < 0).any():
        raise MalformedStats("negative magnitudes")
    if (arr[:, 3, :] <= 0).any():
        raise MalformedStats("median <= 0 (top1/median undefined)")
    top = arr[:, :3, :]
    if (np.diff(top, axis=1) > 1e-6 * np.abs(top[:, :1, :]).clip(min=1)).any():
        raise MalformedStats("top1 >= top2 >= top3 does not hold")
    return arr


def parse_exp2(text: str) -> np.ndarray:
    """Parse a released stats text into a float64 array B x 4 x L, validated."""
    if len(text) > MAX_BYTES:
        raise MalformedStats(f"larger than {MAX_BYTES} bytes")
    start, end = _unwrap(text)
    values, shape = _scan(text, start, end)
    arr = np.frombuffer(values, dtype=np.float64).reshape(shape)
    return _check(arr)


def read_exp2(path: str | Path) -> np.ndarray:
    """Parse one released stats file (size checked before reading: > MAX_BYTES is refused
    unread; non-ASCII text is refused)."""
    size = os.stat(path).st_size
    if size > MAX_BYTES:
        raise MalformedStats(f"{size} bytes, larger than {MAX_BYTES}")
    try:
        text = Path(path).read_bytes().decode("ascii")
    except UnicodeDecodeError as e:
        raise MalformedStats(f"not ASCII text (byte {e.start})") from None
    return parse_exp2(text)


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


# madyn's own addition beside the study's layout: per (step, seq, layer) where the top1 entry
# sits and the extreme-token statistics, so a released suite can classify its layers
EXTREMES = "extremes.csv"
EXTREME_COLUMNS = ["top1_token", "top1_channel", "first_norm_ratio", "first_peak_ratio",
                   "ratio_excl_token", "channel_share", "sink_mass"]


def extremes_path(root: str | Path, model: str) -> Path:
    """``{root}/{model}/extremes.csv`` (madyn's sidecar; the study's files have none)."""
    return Path(root) / model / EXTREMES


def write_extremes(tables: dict[int, pd.DataFrame], path: str | Path) -> None:
    """Write the :data:`EXTREME_COLUMNS` present in the tables (step -> seq x layer table)
    as one CSV (step, seq, layer, ...; 5 significant digits), atomically."""
    from madyn.io import atomic_path

    parts = []
    for step, df in sorted(tables.items()):
        cols = [c for c in EXTREME_COLUMNS if c in df.columns]
        if {"top1_token", "top1_channel"} <= set(cols):
            parts.append(df[["seq", "layer", *cols]].assign(step=int(step)))
    if not parts:
        return
    out = pd.concat(parts, ignore_index=True)
    out = out[["step", "seq", "layer", *[c for c in EXTREME_COLUMNS if c in out.columns]]]
    for c in ("step", "seq", "layer", "top1_token", "top1_channel"):
        out[c] = out[c].astype(int)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format="%.5g")


def read_extremes(path: str | Path) -> dict[int, pd.DataFrame]:
    """A sidecar written by :func:`write_extremes`: step -> table (seq, layer, columns);
    {} when there is none. Only numeric columns of :data:`EXTREME_COLUMNS` are kept;
    anything else is refused with MalformedStats naming the file."""
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as e:
        raise MalformedStats(f"{p}: not a readable CSV ({e})") from None
    need = {"step", "seq", "layer", "top1_token", "top1_channel"}
    if not need <= set(df.columns):
        raise MalformedStats(f"{p}: lacks columns {sorted(need - set(df.columns))}")
    keep = ["step", "seq", "layer", *[c for c in EXTREME_COLUMNS if c in df.columns]]
    df = df[keep]
    if not all(pd.api.types.is_numeric_dtype(df[c]) for c in keep):
        raise MalformedStats(f"{p}: non-numeric values")
    return {int(s): g.drop(columns="step").reset_index(drop=True)
            for s, g in df.groupby("step")}


def scan(root: str | Path) -> dict[str, dict[int, Path]]:
    """Models and steps of a released folder: model -> step -> file path."""
    out: dict[str, dict[int, Path]] = {}
    for f in sorted(Path(root).glob("*/stats/exp2_*")):
        m = _NAME.match(f.name)
        if m and m["model"] == f.parent.parent.name:
            out.setdefault(m["model"], {})[int(m["step"])] = f
    return out


def config_file(root: str | Path, model: str) -> Path:
    """Where a released model's architecture may lie: ``{root}/{model}/config.json``."""
    return Path(root) / model / "config.json"


class ModelTables(dict):
    """step -> per-checkpoint table of one model, plus ``skipped``: file path -> reason
    for every file left out (malformed, unreadable, or a minority layer count)."""

    def __init__(self, tables: dict[int, pd.DataFrame], skipped: dict[str, str]):
        super().__init__(tables)
        self.skipped = skipped


def _majority(counts: dict[int, int]) -> int:
    """The layer count most files share (ties: the smaller count)."""
    tally = Counter(counts.values())
    return min(tally, key=lambda n_layers: (-tally[n_layers], n_layers))


def _model_and_folder(files: dict[int, Path]) -> tuple[str, str]:
    f = Path(next(iter(files.values())))
    m = _NAME.match(f.name)
    return (m["model"] if m else f.parent.parent.name), str(f.parent)


def read_model(files: dict[int, Path], warn=None) -> ModelTables:
    """Parse one model's released files (step -> path).

    Returns the good tables (step -> table) as a :class:`ModelTables`, whose ``skipped``
    maps every file left out to its reason: malformed or unreadable files, and files whose
    layer count disagrees with the majority. ``warn`` (default: stderr) gets one line per
    skipped file. Raises MalformedStats naming the model and folder when none is usable.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if not files:
        raise MalformedStats("read_model: no files given")
    tables: dict[int, pd.DataFrame] = {}
    skipped: dict[str, str] = {}
    for step, f in sorted(files.items()):
        try:
            tables[step] = to_table(read_exp2(f))
        except (MalformedStats, OSError) as e:
            skipped[str(f)] = str(e)
    if tables:
        layers = {s: int(t["layer"].nunique()) for s, t in tables.items()}
        keep = _majority(layers)
        for s, n in layers.items():
            if n != keep:
                skipped[str(files[s])] = f"{n} layers where {keep} is the majority"
                del tables[s]
    for f, why in skipped.items():
        warn(f"skipping {f}: {why}")
    if not tables:
        model, folder = _model_and_folder(files)
        first = "; ".join(f"{Path(f).name}: {why}" for f, why in list(skipped.items())[:3])
        raise MalformedStats(f"model {model}: no usable exp2 file under {folder} "
                             f"({len(skipped)} skipped: {first})")
    return ModelTables(dict(sorted(tables.items())), skipped)
