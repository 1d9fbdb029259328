"""The released export's extremes sidecar and the committed reference (madyn.workflow.reference)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from madyn.io import read_json, write_json
from madyn.measure import released
from madyn.stages.extract import series
from madyn.train import synthetic
from madyn.workflow.reference import make_reference


def _tables(first_token: bool, steps=(0, 10, 20), n_seq=4, n_layers=2) -> dict:
    """Per-checkpoint tables as the extract stage writes them: layer 1 holds a first-token
    outlier (top1 at position 0, channel 5) when ``first_token``, else a feature outlier."""
    rng = np.random.default_rng(0)
    out = {}
    for k, step in enumerate(steps):
        u = np.abs(rng.normal(size=(n_seq, 3, n_layers)))
        arr = np.empty((n_seq, 4, n_layers))
        arr[:, 3] = 1.0  # median
        arr[:, 2] = 2 + u[:, 2]
        arr[:, 1] = arr[:, 2] + u[:, 1]
        arr[:, 0] = arr[:, 1] + u[:, 0] + 5 + 10 * k  # top1 grows with the step
        df = released.to_table(arr)
        df["top1_token"] = np.where(df["layer"] == 1, 0 if first_token else 17, 3)
        df.loc[df["layer"] == 1, "top1_token"] = (0 if first_token
                                                  else np.arange(n_seq) * 7 + 1)
        df["top1_channel"] = np.where(df["layer"] == 1, 5, df["seq"])
        df["first_norm_ratio"] = np.where(df["layer"] == 1, 6.0 if first_token else 1.1, 1.0)
        df["channel_share"] = np.where(df["layer"] == 1, 0.2 if first_token else 0.9, 0.05)
        df["ratio_excl_token"] = df["ratio"] / np.where(df["layer"] == 1, 3.0, 1.0)
        df["sink_mass"] = 0.5
        out[step] = df
    return out


@pytest.mark.parametrize("first_token", [True, False])
def test_extremes_sidecar_round_trip_gives_the_kinds(tmp_path, first_token):
    tables = _tables(first_token)
    for step, df in tables.items():
        released.write_exp2(df, released.exp2_path(tmp_path / "rel", "m", step))
    released.write_extremes(tables, released.extremes_path(tmp_path / "rel", "m"))
    frame, _ = series("m", str(tmp_path / "s.parquet"), str(tmp_path / "i.json"),
                      released_dir=str(tmp_path / "rel"))
    last = frame[(frame["step"] == 20) & (frame["statistic"] == "ratio")].set_index("layer")
    assert last.loc[1, "kind"] == ("first_token" if first_token else "feature")
    assert last.loc[0, "kind"] == "none"
    sink = frame[(frame["statistic"] == "sink_mass")]["mean"]
    assert np.allclose(sink, 0.5)


def test_released_files_without_sidecar_are_unknown(tmp_path):
    for step, df in _tables(True).items():
        released.write_exp2(df, released.exp2_path(tmp_path / "rel", "m", step))
    frame, _ = series("m", str(tmp_path / "s.parquet"), str(tmp_path / "i.json"),
                      released_dir=str(tmp_path / "rel"))
    assert set(frame["kind"]) == {"unknown"}


def test_malformed_sidecar_is_refused_naming_it(tmp_path):
    p = tmp_path / "m" / "extremes.csv"
    p.parent.mkdir()
    p.write_text("step,seq,layer,top1_token,top1_channel\n0,0,0,__import__,1\n")
    with pytest.raises(released.MalformedStats, match="extremes.csv"):
        released.read_extremes(p)


def _results(tmp_path) -> tuple:
    """A suite's results folder as the workflow leaves it (two models)."""
    res = tmp_path / "results" / "ft"
    tables = _tables(True)
    for m in ("a", "b"):
        for step, df in tables.items():
            released.write_exp2(df, released.exp2_path(res / "released", m, step))
        released.write_extremes(tables, released.extremes_path(res / "released", m))
        write_json(res / "released" / m / "config.json", {"model_type": "gpt2"})
        write_json(res / "models" / m / "manifest.json",
                   {"n_params": 100, "final_loss": 2.0, "steps": [0, 10, 20]})
    write_json(res / "timing" / "train.json",  # where the train_summary rule writes it
               {"models": {"a": 60.0, "b": 90.0}, "wall_s": 120.0, "sum_s": 150.0,
                "threads": [1]})
    synthetic.build_corpus(res / "corpus", synthetic.SyntheticSpec())
    suite = {"source": "local", "description": "x", "train": {"steps": 20},
             "models": [{"name": "a"}, {"name": "b"}]}
    return res, suite


def test_make_reference_copies_and_records(tmp_path):
    res, suite = _results(tmp_path)
    out = tmp_path / "data" / "reference" / "ft"
    m = make_reference(res, out, "ft", suite, remake="snakemake --config suite=ft")
    assert sorted(released.scan(out)) == ["a", "b"]
    assert (out / "a" / "extremes.csv").is_file() and (out / "b" / "config.json").is_file()
    disk = read_json(out / "manifest.json")
    assert disk["training"]["wall_minutes"] == 2.0 and disk["corpus"]["kind"] == "backcopy"
    assert disk["models"]["b"]["train_seconds"] == 90.0 and "torch" in disk["versions"]
    assert m["size_bytes"] == disk["size_bytes"] > 0
    make_reference(res, out, "ft", suite, remake="again")  # its own folder: replaced
    assert read_json(out / "manifest.json")["remake"] == "again"


def test_make_reference_refuses_a_foreign_folder(tmp_path):
    res, suite = _results(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a reference madyn wrote"):
        make_reference(res, out, "ft", suite, remake="x")
    assert (out / "notes.txt").read_text() == "keep me"


def test_feature_table_frame_has_kind_columns():
    """The per-layer growth summary carries the final kinds."""
    from madyn.measure.series import build_series, growth_summary

    tables = _tables(True)
    frame, _ = build_series(tables, {s: {} for s in tables}, "m")
    g = growth_summary({"m": frame})["m"]
    assert g["kind_per_layer"] == ["none", "first_token"]
    assert g["position_per_layer"][1] == 0 and g["channel_per_layer"][1] == 5
    assert isinstance(pd.DataFrame(frame)["kind"].iloc[0], str)
