"""`madyn predict` input handling: bad input gives one clear line, exit code 2, no output."""

from __future__ import annotations

import json
import time

import pytest

from madyn.cli.main import main
from madyn.predict.features import build_feature_table, write_feature_table
from madyn.train.training import ModelSpec
from tests.helpers import SYNTHETIC_SUITE, neox_config, synthetic_fit_table

SETTINGS = json.dumps({"parametrisation": "original", "predict_model": "mean", "n_boot": 2})


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> str:
    fit, _ = synthetic_fit_table()
    configs = {s.name: neox_config(s) for s in SYNTHETIC_SUITE}
    table = build_feature_table(fit, configs, "original", "ratio")
    path = tmp_path_factory.mktemp("ft") / "ft.parquet"
    write_feature_table(table, path, path.with_suffix(".csv"))
    return str(path)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(["predict", *argv])
    return rc, capsys.readouterr().err


def _bad(argv: list[str], features: str, tmp_path, capsys, match: str) -> str:
    out = tmp_path / "out"
    rc, err = _run([*argv, "--features", features, "--settings-json", SETTINGS,
                    "--out", str(out)], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("madyn predict: "), err
    assert match in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def test_malformed_json_config(features, tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"num_hidden_layers": 2,')
    line = _bad(["--config", str(cfg)], features, tmp_path, capsys, "not valid JSON")
    assert str(cfg) in line


def test_json_list_config(features, tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps([neox_config(ModelSpec("x", 2, 32, 2))]))
    _bad(["--config", str(cfg)], features, tmp_path, capsys, "JSON object")


def test_missing_config_file(features, tmp_path, capsys):
    _bad(["--config", str(tmp_path / "nope.json")], features, tmp_path, capsys, "cannot read")


def test_zero_layers(features, tmp_path, capsys):
    _bad(["--layers", "0", "--width", "64", "--heads", "4"], features, tmp_path, capsys,
         "layers 0 outside 1..512")


def test_heads_not_dividing_width(features, tmp_path, capsys):
    _bad(["--layers", "2", "--width", "64", "--heads", "5"], features, tmp_path, capsys,
         "heads 5 do not divide width 64")


def test_more_heads_than_width(features, tmp_path, capsys):
    _bad(["--layers", "2", "--width", "8", "--heads", "16"], features, tmp_path, capsys,
         "heads 16 outside 1..width")


@pytest.mark.parametrize("flags", [["--layers", "100000", "--width", "64", "--heads", "4"],
                                   ["--layers", "2", "--width", "1000000", "--heads", "4"]])
def test_huge_shapes_refused_fast(flags, features, tmp_path, capsys):
    t0 = time.monotonic()
    _bad(flags, features, tmp_path, capsys, "outside")
    assert time.monotonic() - t0 < 5


def test_huge_config_refused(features, tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**neox_config(ModelSpec("x", 2, 32, 2)),
                               "num_hidden_layers": 100000}))
    _bad(["--config", str(cfg)], features, tmp_path, capsys, "layers 100000 outside 1..512")


def test_partial_shape_flags(features, tmp_path, capsys):
    _bad(["--layers", "2", "--width", "64"], features, tmp_path, capsys,
         "give all of --layers, --width and --heads")


def test_bad_steps(features, tmp_path, capsys):
    _bad(["--layers", "2", "--width", "64", "--heads", "4", "--steps", "1,x"], features,
         tmp_path, capsys, "'x' is not an integer step")


def test_settings_json_needs_features(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(["--layers", "2", "--width", "64", "--heads", "4", "--settings-json",
                    SETTINGS, "--out", str(out)], capsys)
    assert rc == 2 and "--features is required with --settings-json" in err
    assert not out.exists()


def test_help_states_bounds(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "layers 1-512" in text and "width 8-65536" in text and "heads 1-width" in text


def test_good_input_predicts(features, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(["--layers", "3", "--width", "48", "--heads", "4", "--features", features,
                    "--settings-json", SETTINGS, "--out", str(out), "--steps", "0,10,100"],
                   capsys)
    assert rc == 0, err
    assert (out / "summary.json").exists() and "layer 2:" in err


def test_query_outside_training_range_warns(features, tmp_path, capsys):
    """The training models have 2-8 layers, width 32-128, 2-8 heads: a 70B-like query warns
    once on stderr and records the extrapolation in summary.json; one inside does not."""
    out = tmp_path / "far"
    rc, err = _run(["--layers", "80", "--width", "8192", "--heads", "64", "--features",
                    features, "--settings-json", SETTINGS, "--out", str(out),
                    "--steps", "0,10,100"], capsys)
    assert rc == 0, err
    warn = [line for line in err.splitlines() if "warning" in line]
    assert len(warn) == 1 and warn[0].startswith("madyn predict: warning: outside the "
                                                 "training range"), err
    assert "layers 80 (trained on 2-8: 10x the largest)" in warn[0]
    assert "width 8192 (trained on 32-128: 64x the largest)" in warn[0]
    assert "heads 64 (trained on 2-8: 8x the largest)" in warn[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["extrapolation"] == {"layers": {"query": 80, "min": 2, "max": 8},
                                        "width": {"query": 8192, "min": 32, "max": 128},
                                        "heads": {"query": 64, "min": 2, "max": 8}}
    assert summary["warning"] in warn[0]
    near = tmp_path / "near"
    rc, err = _run(["--layers", "3", "--width", "48", "--heads", "4", "--features", features,
                    "--settings-json", SETTINGS, "--out", str(near), "--steps", "0,10"],
                   capsys)
    assert rc == 0 and "warning" not in err, err
    summary = json.loads((near / "summary.json").read_text())
    assert summary["extrapolation"] == {} and "warning" not in summary


def test_out_on_a_users_folder_is_refused_and_kept(features, tmp_path, capsys):
    """Issue 32: ``--out`` on a folder holding the user's own curves.csv replaced it; a
    folder madyn did not make (no marker) is refused unless empty, madyn's own rewritten."""
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "curves.csv").write_text("my,data\n1,2\n")
    argv = ["--layers", "3", "--width", "48", "--heads", "4", "--features", features,
            "--settings-json", SETTINGS, "--steps", "0,10,100", "--out"]
    rc, err = _run([*argv, str(mine)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert str(mine) in lines[0] and "curves.csv" in lines[0] and "madyn" in lines[0]
    assert sorted(p.name for p in mine.iterdir()) == ["curves.csv"]
    assert (mine / "curves.csv").read_text() == "my,data\n1,2\n"
    for _ in range(2):  # a new folder, then madyn's own folder again
        rc, err = _run([*argv, str(tmp_path / "new")], capsys)
        assert rc == 0, err
    assert (tmp_path / "new" / "summary.json").exists()


def test_query_outside_the_training_recipe_says_so(tmp_path, capsys):
    """The training models are GPT-NeoX (parallel residual) trained at lr 0.03: a
    Llama-like query (gated MLP, sequential residual) at 10x their lr and another schedule
    length is named on stderr and recorded; a query inside says nothing."""
    import math

    fit, _ = synthetic_fit_table()
    table = build_feature_table(fit, {s.name: neox_config(s) for s in SYNTHETIC_SUITE},
                                "original", "ratio")
    lr, last = 0.03, int(table["last_step"].max())
    table["f_log_lr"] = math.log10(lr)
    features = str(tmp_path / "ft.parquet")
    write_feature_table(table, features, tmp_path / "ft.csv")
    out = tmp_path / "far"
    rc, err = _run(["--layers", "3", "--width", "48", "--heads", "4", "--family", "llama",
                    "--lr", str(10 * lr), "--last-step", str(4 * last), "--features",
                    features, "--settings-json", SETTINGS, "--out", str(out), "--steps",
                    "0,10"], capsys)
    assert rc == 0, err
    line = [x for x in err.splitlines() if "do not cover the query's recipe" in x]
    assert len(line) == 1 and "block layout (gated_mlp) not among" in line[0], err
    assert f"lr {10 * lr:.4g} (trained on {lr:.4g}-{lr:.4g})" in line[0]
    assert f"last_step {4 * last}" in line[0]
    cov = json.loads((out / "summary.json").read_text())["recipe_coverage"]
    assert set(cov["outside"]) == {"block_layout", "lr", "last_step"}
    rc, err = _run(["--layers", "3", "--width", "48", "--heads", "4", "--lr", str(lr),
                    "--last-step", str(last), "--features", features, "--settings-json",
                    SETTINGS, "--out", str(tmp_path / "near"), "--steps", "0,10"], capsys)
    assert rc == 0 and "do not cover" not in err, err
    cov = json.loads((tmp_path / "near/summary.json").read_text())["recipe_coverage"]
    assert cov == {"outside": {}, "unknown": []}
