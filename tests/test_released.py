"""The released-file parser: an iterative scanner that never executes, never recurses and
keeps memory near the file size; bad files are skipped and named, not fatal."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from madyn.measure import released
from madyn.measure.released import MalformedStats


def _arr(n_seqs: int = 3, n_layers: int = 4, seed: int = 0) -> np.ndarray:
    """A valid B x 4 x L array: top1 >= top2 >= top3 of order 5..50, median 0.5..1."""
    rng = np.random.default_rng(seed)
    top = np.sort(rng.uniform(5, 50, size=(n_seqs, 3, n_layers)), axis=1)[:, ::-1, :]
    med = rng.uniform(0.5, 1.0, size=(n_seqs, 1, n_layers))
    return np.concatenate([top, med], axis=1)


def _write(root, model: str, step: int, text: str):
    path = released.exp2_path(root, model, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _valid(root, model: str, step: int, n_layers: int = 4):
    path = released.exp2_path(root, model, step)
    released.write_exp2(released.to_table(_arr(n_layers=n_layers, seed=step)), path)
    return path


def test_round_trip_with_write_exp2(tmp_path):
    arrs = {s: _arr(seed=s) for s in (0, 1, 2, 4)}
    for s, a in arrs.items():
        released.write_exp2(released.to_table(a), released.exp2_path(tmp_path, "m_1", s))
    tables = released.read_model(released.scan(tmp_path)["m_1"])
    assert sorted(tables) == [0, 1, 2, 4] and tables.skipped == {}
    for s, a in arrs.items():
        np.testing.assert_array_equal(released.from_table(tables[s]), a)  # repr is exact


@pytest.mark.parametrize("text, shape", [
    ("array([[[3.0], [2.0], [1.0], [0.5]]], dtype=float16)", (1, 4, 1)),
    ("tensor([[[3., 2.], [2., 1.5], [1., 1.], [5e-1, 1E-2]]], dtype=torch.float16)\n",
     (1, 4, 2)),
    ("np.array([[[+3], [2], [1], [.5]], [[4], [4], [4], [1]]])", (2, 4, 1)),
    ("  [[[3.0,], [2.0,], [1.0,], [0.5,],],]  \n", (1, 4, 1)),
])
def test_accepted_literal_forms(text, shape):
    assert released.parse_exp2(text).shape == shape


HOSTILE = {
    "code": "__import__('os').system('touch {pwned}')",
    "code_in_wrapper": "array(__import__('os').system('touch {pwned}'))",
    "call_in_list": "[[[open('{pwned}', 'w')], [2.0], [1.0], [0.5]]]",
    "call_after_list": "array([[[3.0], [2.0], [1.0], [0.5]]]).tofile('{pwned}')",
    "lambda": "(lambda: open('{pwned}', 'w'))()",
    "name": "[[[x], [2.0], [1.0], [0.5]]]",
    "nested_minus": "[[[" + "-(" * 200 + "1" + ")" * 200 + "], [2.0], [1.0], [0.5]]]",
    "minus_signs": "- " * 10_000 + "1",
    "deep": "[" * 100_000 + "]" * 100_000,
    "four_levels": "[[[[3.0], [2.0], [1.0], [0.5]]]]",
    "two_levels": "[[3.0, 2.0, 1.0, 0.5]]",
    "unbalanced_open": "[[[3.0], [2.0], [1.0], [0.5]]",
    "unbalanced_close": "[[[3.0], [2.0], [1.0], [0.5]]]]",
    "two_lists": "[[[3.0], [2.0], [1.0], [0.5]]] [[[3.0], [2.0], [1.0], [0.5]]]",
    "ragged": "[[[3.0], [2.0, 1.0], [1.0], [0.5]]]",
    "ragged_outer": "[[[3.0], [2.0], [1.0], [0.5]], [[3.0], [2.0], [1.0]]]",
    "missing_comma": "[[[3.0 2.0], [2.0], [1.0], [0.5]]]",
    "double_comma": "[[[3.0,, 2.0], [2.0], [1.0], [0.5]]]",
    "shape": "[[[1.0, 2.0], [1.0, 1.0]]]",
    "negative": "[[[-3.0], [2.0], [1.0], [0.5]]]",
    "order": "[[[1.0], [2.0], [3.0], [0.5]]]",
    "nan": "[[[nan], [2.0], [1.0], [0.5]]]",
    "median_zero": "[[[3.0], [2.0], [1.0], [0.0]]]",
    "empty": "",
    "non_ascii": "[[[3.0], [2.0], [1.0], [0.5\u00e9]]]",
    "other_wrapper": "list([[[3.0], [2.0], [1.0], [0.5]]])",
    "wrapper_kwarg": "array([[[3.0], [2.0], [1.0], [0.5]]], copy=__import__('os'))",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_or_malformed_file_rejected_and_skipped(kind, tmp_path):
    pwned = tmp_path / "PWNED"
    _valid(tmp_path, "m", 0)
    bad = _write(tmp_path, "m", 1, HOSTILE[kind].format(pwned=pwned))
    with pytest.raises(MalformedStats):
        released.read_exp2(bad)
    warnings: list[str] = []
    tables = released.read_model(released.scan(tmp_path)["m"], warn=warnings.append)
    assert sorted(tables) == [0] and list(tables.skipped) == [str(bad)]
    assert len(warnings) == 1 and bad.name in warnings[0]
    assert not pwned.exists()


@pytest.mark.parametrize("text", ["-" * 1200 + "1", "[[[" + "-" * 1200 + "1]]]",
                                  "[[[" + "-(" * 600 + "1" + ")" * 600 + "]]]"])
def test_nested_minus_file_of_1kb_is_a_clean_rejection(text, tmp_path):
    """An ast-based parser overflows the stack on 1.2 KB of minus signs; the scanner names
    the token."""
    bad = _write(tmp_path, "m", 0, text)
    with pytest.raises(MalformedStats, match="unexpected '-"):
        released.read_exp2(bad)


def test_median_zero_rejected_with_reason():
    with pytest.raises(MalformedStats, match="median <= 0"):
        released.parse_exp2("[[[3.0], [2.0], [1.0], [0.0]]]")


def test_file_over_max_bytes_rejected_unread(tmp_path):
    big = released.exp2_path(tmp_path, "m", 0)
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:  # sparse: no disk, and reading it would take seconds
        f.truncate(released.MAX_BYTES + 1)
    t0 = time.perf_counter()
    with pytest.raises(MalformedStats, match="larger than"):
        released.read_exp2(big)
    assert time.perf_counter() - t0 < 0.5


def test_parsing_memory_is_a_small_multiple_of_the_file_size(tmp_path):
    path = released.exp2_path(tmp_path, "m", 0)
    released.write_exp2(released.to_table(_arr(n_seqs=10, n_layers=1000)), path)
    size = path.stat().st_size
    assert 0.5e6 < size < 1.5e6
    tracemalloc.start()
    try:
        arr = released.read_exp2(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert arr.shape == (10, 4, 1000)
    assert peak < 8 * size, f"peak {peak / size:.1f} x the file size"


def test_minority_layer_count_skipped_and_named(tmp_path):
    for s in (0, 1, 2):
        _valid(tmp_path, "m", s, n_layers=2)
    odd = _valid(tmp_path, "m", 3, n_layers=3)
    warnings: list[str] = []
    tables = released.read_model(released.scan(tmp_path)["m"], warn=warnings.append)
    assert sorted(tables) == [0, 1, 2]
    assert tables.skipped == {str(odd): "3 layers where 2 is the majority"}
    assert warnings == [f"skipping {odd}: 3 layers where 2 is the majority"]


def test_layer_count_tie_keeps_the_smaller(tmp_path):
    _valid(tmp_path, "m", 0, n_layers=3)
    _valid(tmp_path, "m", 1, n_layers=2)
    tables = released.read_model(released.scan(tmp_path)["m"], warn=lambda _: None)
    assert sorted(tables) == [1] and len(tables.skipped) == 1


def test_all_malformed_model_names_model_folder_and_reasons(tmp_path):
    _write(tmp_path, "m_x", 0, "[[[3.0], [2.0], [1.0], [0.0]]]")
    _write(tmp_path, "m_x", 5, "import os")
    with pytest.raises(MalformedStats) as err:
        released.read_model(released.scan(tmp_path)["m_x"], warn=lambda _: None)
    msg = str(err.value)
    assert msg.startswith(f"model m_x: no usable exp2 file under {tmp_path / 'm_x' / 'stats'}")
    assert "(2 skipped: exp2_m_x_step0: median <= 0" in msg and "exp2_m_x_step5" in msg
