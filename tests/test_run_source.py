"""The ``run`` source on real folders: layouts and steps found, what is skipped (with its
reason, recorded), and each bad input of issue 26 refused with one line or a recorded
skip, never a traceback, never a silent measurement, nothing half-written. Checkpoints are
real tiny ones (the session's trained model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from madyn.measure import runs
from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.run_checkpoints import refuse_distributed
from tests.test_hostile_inputs import _lying_length, _truncate, refused


def madyn(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "madyn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tokens(tmp_path, corpus_dir) -> Path:
    p = tmp_path / "tokens.npy"
    np.save(p, np.load(corpus_dir / "heldout.npy")[:64].reshape(2, 32).astype(np.int64))
    return p


def _ckpt(tiny_model_dir: Path, dst: Path, step: int = 4) -> Path:
    shutil.copytree(tiny_model_dir / f"step{step}", dst)
    return dst


@pytest.fixture
def run_dir(tiny_model_dir, tmp_path) -> Path:
    """A Trainer-style run folder: checkpoint-<N>/ for three real steps, plus the stray
    entries a Trainer output_dir holds."""
    d = tmp_path / "run"
    d.mkdir()
    for s in (1, 4, 10):
        _ckpt(tiny_model_dir, d / f"checkpoint-{s}", s)
    (d / "runs").mkdir()  # TensorBoard logs
    (d / "README.md").write_text("my run\n")
    return d


# ----------------------------------------------------------------- layouts and steps
@pytest.mark.parametrize("name,step", [("checkpoint-12", 12), ("step300", 300),
                                       ("step-0042", 42), ("global_step7", 7),
                                       ("iter_0001000", 1000), ("ckpt-5", None),
                                       ("step12-tokens5B", None)])
def test_layouts_name_their_step(name, step):
    assert runs.step_of(name) == step


def test_step_pattern_names_other_layouts():
    assert runs.step_of("ep3-it250", r"ep\d+-it(\d+)") == 250


def test_scan_finds_checkpoints_and_records_stray_entries(run_dir):
    sc = runs.scan(run_dir)
    assert sc.steps == [1, 4, 10]
    assert set(sc.skipped) == {"runs", "README.md"}
    assert "no step in its name" in sc.skipped["README.md"]


def test_planning_a_run_folder_imports_no_torch(run_dir):
    """Every Snakemake start (each DVC stage is one) plans the run folder: its checks read
    headers and configs, and must not pay for importing torch (seconds per start)."""
    code = ("import sys; from madyn.measure import runs; "
            f"assert runs.scan({str(run_dir)!r}).steps == [1, 4, 10]; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_known_activations_are_transformers_own():
    from transformers.activations import ACT2FN

    from madyn.measure.config_values import known_activations

    assert known_activations() == frozenset(ACT2FN) and "gelu" in known_activations()


def test_trainer_state_global_step_wins_over_the_name(run_dir):
    (run_dir / "checkpoint-10" / "trainer_state.json").write_text(
        json.dumps({"global_step": 11, "log_history": []}))
    assert runs.scan(run_dir).steps == [1, 4, 11]


def test_two_folders_for_one_step_are_both_skipped(run_dir, tiny_model_dir):
    _ckpt(tiny_model_dir, run_dir / "step-4", 4)
    sc = runs.scan(run_dir)
    assert sc.steps == [1, 10]
    assert "also checkpoint-4" in sc.skipped["step-4"]
    assert "also step-4" in sc.skipped["checkpoint-4"]


def test_checkpoint_being_written_is_skipped_then_picked_up(run_dir, tiny_model_dir):
    new = _ckpt(tiny_model_dir, run_dir / "checkpoint-12", 12)
    cfg = (new / "config.json").read_bytes()
    (new / "config.json").unlink()
    sc = runs.scan(run_dir)
    assert 12 not in sc.steps and "no config.json" in sc.skipped["checkpoint-12"]
    weights = (new / "model.safetensors").read_bytes()
    (new / "config.json").write_bytes(cfg)
    (new / "model.safetensors").write_bytes(weights[:len(weights) // 3])  # still writing
    assert "truncated" in runs.scan(run_dir).skipped["checkpoint-12"]
    (new / "model.safetensors").write_bytes(weights)
    assert runs.scan(run_dir).steps == [1, 4, 10, 12]


def test_model_with_no_usable_checkpoint_stops_naming_model_and_folder(tmp_path):
    d = tmp_path / "empty-run"
    d.mkdir()
    (d / "checkpoint-5").mkdir()
    with pytest.raises(runs.RunError, match=r"model m1: no usable checkpoint in .*empty-run"):
        runs.scan(d, where="model m1")


def test_symlink_loop_is_one_line(tmp_path, run_dir):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(runs.RunError, match="symbolic links"):
        runs.scan(loop, where="model m1")
    (run_dir / "checkpoint-99").symlink_to(run_dir / "checkpoint-99")  # a loop inside
    sc = runs.scan(run_dir)
    assert "symbolic links" in sc.skipped["checkpoint-99"] and sc.steps == [1, 4, 10]


# ------------------------------------------------------------------ bad checkpoints
def _missing_shard(c: Path) -> None:
    (c / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors",
                        "b": "model-00002-of-00002.safetensors"}}))


BAD = {  # case -> (how to break checkpoint-4, what its recorded reason / one line says)
    "missing_shard": (_missing_shard, ["model.safetensors.index.json",
                                       "model-00001-of-00002.safetensors", "not in the folder"]),
    "truncated": (lambda c: _truncate(c / "model.safetensors"), ["truncated"]),
    "length_lies": (lambda c: _lying_length(c / "model.safetensors"),
                    ["header length field says"]),
    "encoder_decoder": (lambda c: _edit_config(c, is_encoder_decoder=True),
                        ["not a decoder-only model"]),
    "bert": (lambda c: _edit_config(c, model_type="bert", architectures=["BertModel"]),
             ["not a decoder-only model"]),
    "auto_map": (lambda c: _edit_config(c, auto_map={"AutoModelForCausalLM": "x.Evil"}),
                 ["auto_map", "trust_remote_code"]),
    "dcp": (lambda c: _dcp(c), ["distributed (DCP)", "dcp_to_torch_save"]),
    "mp_rank": (lambda c: (c / "mp_rank_00_model_states.pt").write_bytes(b"x"),
                ["mp_rank", "convert_neox_to_hf.py"]),
}


def _edit_config(c: Path, **changes) -> None:
    cfg = json.loads((c / "config.json").read_text())
    cfg.update(changes)
    (c / "config.json").write_text(json.dumps(cfg))


def _dcp(c: Path) -> None:
    for f in c.iterdir():
        f.unlink()
    (c / ".metadata").write_bytes(b"not opened")
    (c / "__0_0.distcp").write_bytes(b"not opened")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_is_a_recorded_skip_and_a_one_line_refusal(case, run_dir, tokens,
                                                                   tmp_path):
    breaks, needles = BAD[case]
    breaks(run_dir / "checkpoint-4")
    sc = runs.scan(run_dir)
    assert sc.steps == [1, 10]
    for n in needles:
        assert n in sc.skipped["checkpoint-4"], sc.skipped["checkpoint-4"]
    out = tmp_path / "s.parquet"
    refused(madyn("extract", run_dir / "checkpoint-4", "--tokens", tokens, "--out", out,
                  "--device", "cpu"), *needles)
    assert not out.exists()


# ------------------------------------------------------------------------- pickles
CANARY_PICKLE = b"""cos
system
(S'touch {canary}'
tR."""


def _pickle_only(c: Path, payload: bytes | None = None) -> None:
    """checkpoint ``c`` with its weights as a PyTorch pickle only (a real state dict, or a
    pickle whose unpickling would run a command)."""
    import torch
    from safetensors.torch import load_file

    w = c / "model.safetensors"
    if payload is None:
        torch.save(load_file(w), c / "pytorch_model.bin")
    else:
        (c / "pytorch_model.bin").write_bytes(payload)
    w.unlink()


@pytest.mark.parametrize("allow", [False, True])
def test_pickle_that_runs_code_never_runs(allow, run_dir, tokens, tmp_path):
    canary = tmp_path / "canary"
    payload = CANARY_PICKLE.replace(b"{canary}", str(canary).encode())
    _pickle_only(run_dir / "checkpoint-4", payload)
    # a Trainer folder's own pickles are never opened either
    (run_dir / "checkpoint-10" / "optimizer.pt").write_bytes(payload)
    (run_dir / "checkpoint-10" / "rng_state.pth").write_bytes(payload)
    sc = runs.scan(run_dir, allow_pickle=allow)
    args = ["--allow-pickle"] if allow else []
    out = tmp_path / "s.parquet"
    r = madyn("extract", run_dir / "checkpoint-4", "--tokens", tokens, "--out", out,
              "--device", "cpu", *args)
    if allow:  # accepted by the scan, refused by torch.load(weights_only=True)
        assert 4 in sc.steps
        refused(r, "pytorch_model.bin", "weights_only=True", "never unpickles it")
    else:
        assert "allow_pickle" in sc.skipped["checkpoint-4"]
        refused(r, "only PyTorch pickles", "allow_pickle")
    assert not out.exists()
    r10 = madyn("extract", run_dir / "checkpoint-10", "--tokens", tokens, "--out",
               tmp_path / "s10.parquet", "--device", "cpu", *args)
    assert r10.returncode == 0, r10.stderr
    assert not canary.exists()


def test_pickle_weights_with_allow_pickle_measure_as_safetensors(run_dir, tokens, tmp_path):
    from madyn.measure.stats_table import read_stats

    ref = tmp_path / "ref.parquet"
    assert madyn("extract", run_dir / "checkpoint-4", "--tokens", tokens, "--out", ref,
                 "--device", "cpu").returncode == 0
    _pickle_only(run_dir / "checkpoint-4")
    out = tmp_path / "p.parquet"
    r = madyn("extract", run_dir / "checkpoint-4", "--tokens", tokens, "--out", out,
              "--device", "cpu", "--allow-pickle")
    assert r.returncode == 0, r.stderr
    (a, _), (b, meta) = read_stats(ref), read_stats(out)
    assert list(meta["weights"]["shards"]) == ["pytorch_model.bin"]
    np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=1e-6)


def test_manifest_names_weights_with_sizes_and_sha256(run_dir):
    sc = runs.scan(run_dir)
    cache: dict = {}
    m = runs.manifest(sc, cache)
    assert set(m["files"]) == {f"checkpoint-{s}/{f}" for s in (1, 4, 10)
                               for f in ("config.json", "model.safetensors")}
    assert len(cache) == 6 and "README.md" in m["skipped"]
    entry = m["files"]["checkpoint-4/model.safetensors"]
    assert entry["size"] == (run_dir / "checkpoint-4/model.safetensors").stat().st_size
    with open(run_dir / "checkpoint-4/model.safetensors", "r+b") as f:  # one byte changed
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    assert runs.manifest(sc, cache)["files"]["checkpoint-4/model.safetensors"] != entry


def test_distributed_refusal_opens_nothing(tmp_path):
    d = tmp_path / "step-100"
    d.mkdir()
    (d / ".metadata").write_text("")
    with pytest.raises(CheckpointError, match="dcp_to_torch_save"):
        refuse_distributed(d)


def test_dvc_outs_link_the_run_folder_and_write_the_manifest(run_dir, tmp_path):
    """`madyn step dvc-outs source/suite` for a run suite: results/<suite>/source links to the
    run folder (a DVC dependency, never an out), models/ is madyn's folder with the
    manifest; nothing is written into the run folder."""
    import yaml

    from madyn.io import read_json
    from madyn.workflow.dvc_stages import ensure_stage_outs
    from madyn.workflow.scratch_project import copy_workflow
    from tests.helpers import ROOT

    proj = tmp_path / "proj"
    proj.mkdir()
    copy_workflow(ROOT, proj)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["mine"] = {"source": "run", "models": [{"name": "a", "path": str(run_dir)}]}
    cfg["suite"] = "mine"
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg))
    listing = sorted(map(str, run_dir.rglob("*")))
    ensure_stage_outs(proj, "source")
    ensure_stage_outs(proj, "suite")
    assert (proj / "results/mine/source").resolve() == run_dir.resolve()
    models = proj / "results/mine/models"
    assert not models.is_symlink()
    m = read_json(models / "run_manifest.json")["a"]
    assert sorted(m["files"]) == sorted(f"checkpoint-{s}/{f}" for s in (1, 4, 10)
                                        for f in ("config.json", "model.safetensors"))
    assert sorted(map(str, run_dir.rglob("*"))) == listing


@pytest.mark.parametrize("entry,needle", [
    ({"name": "a"}, "suites.mine.models.0"),
    ({"name": "a", "path": "x", "step_pattern": "step-\\d+"}, "needs a group"),
    ({"name": "a", "path": "x", "step_pattern": "step-(\\d+"}, "not a regex"),
    ({"name": "a", "path": "x", "allow_pickle": "yes"}, "allow_pickle"),
    # issue 32: patterns that hung planning or raised inside it
    ({"name": "a", "path": "x", "step_pattern": "ck(\\d+)-(?:a+)+"}, "nested"),
    ({"name": "a", "path": "x", "step_pattern": "ck(\\d+)-(?:a|aa)*"}, "alternation"),
    ({"name": "a", "path": "x", "step_pattern": "ck(\\d+).*.*.*.*"}, "at most 3"),
    ({"name": "a", "path": "x", "step_pattern": "ck-(\\w+)"}, "only digits"),
    ({"name": "a", "path": "x", "step_pattern": "ck-(\\d+)?"}, "optional"),
    ({"name": "a", "path": "x", "step_pattern": "ck-(\\d*)"}, "at least one digit"),
    ({"name": "a", "path": "x", "step_pattern": "(\\d+)-(\\d+)"}, "exactly one group"),
    ({"name": "a", "path": "x", "step_pattern": "ck-(\\d+)|x"}, "optional"),
])
def test_bad_run_entries_are_refused_naming_the_key(entry, needle):
    import yaml

    from madyn.workflow import params_file
    from tests.helpers import ROOT

    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["suites"]["mine"] = {"source": "run", "models": [entry]}
    cfg["suite"] = "mine"
    with pytest.raises(params_file.ConfigError, match=needle):
        params_file.validate(cfg)


def test_checkpoint_that_fails_to_load_is_skipped_and_recorded(run_dir, tokens, tmp_path):
    """A checkpoint that passes the checks made at planning but fails to load (a tensor
    missing from its weights): the run's measuring job names it, goes on, and the series
    records it as skipped with the reason."""
    from safetensors.torch import load_file, save_file

    from madyn.io import read_json

    w = run_dir / "checkpoint-4" / "model.safetensors"
    tensors = load_file(w)
    del tensors[next(k for k in tensors if k.endswith("final_layer_norm.weight"))]
    save_file(tensors, w)
    outs = [tmp_path / f"s{s}.parquet" for s in (1, 4, 10)]
    r = madyn("step", "extract-run", "--checkpoints",
              *(run_dir / f"checkpoint-{s}" for s in (1, 4, 10)),
              "--steps", 1, 4, 10, "--outs", *outs, "--tokens", tokens, "--model", "m",
              "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "skipped step 4" in r.stderr and "final_layer_norm" in r.stderr
    r = madyn("step", "series", "--model", "m", "--stats", *outs, "--out",
              tmp_path / "series.parquet",
              "--integrity", tmp_path / "integrity.json")
    assert r.returncode == 0, r.stderr
    integ = read_json(tmp_path / "integrity.json")
    assert integ["n_checkpoints"] == 2 and "missing" in integ["skipped_files"]["step 4"]


def test_bad_configs_in_a_run_are_skipped_and_measured_tables_kept(run_dir, tiny_model_dir,
                                                                    tokens, tmp_path):
    """Issue 32: checkpoints whose config.json passed the checks and broke transformers
    (an unknown activation, a rotary factor of 5, heads 0 or not dividing the width, a
    width of 10**9, a vocabulary smaller than the embedding) are each skipped by the run's
    measuring job with one line naming the file and the key; the job goes on and exits 0,
    and the tables measured before are kept (a failed job would lose them all)."""
    from madyn.measure.stats_table import read_stats
    from tests.test_hostile_inputs import HOSTILE

    cases = ["act_unknown", "rotary_5_rope", "heads_0", "heads_3", "hidden_1e9", "vocab_10"]
    bad = {}
    for i, case in enumerate(cases, start=20):
        d = _ckpt(tiny_model_dir, run_dir / f"checkpoint-{i}")
        HOSTILE[case][0](d)
        bad[i] = HOSTILE[case][1]
    good = [1, 10]
    outs = {s: tmp_path / f"s{s}.parquet" for s in good + list(bad)}
    r = madyn("step", "extract-run", "--checkpoints", *(run_dir / f"checkpoint-{s}" for s in good),
              "--steps", *good, "--outs", *(outs[s] for s in good), "--tokens", tokens,
              "--model", "m", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    before = {s: outs[s].stat().st_mtime_ns for s in good}
    steps = good + list(bad)
    r = madyn("step", "extract-run", "--checkpoints", *(run_dir / f"checkpoint-{s}" for s in steps),
              "--steps", *steps, "--outs", *(outs[s] for s in steps), "--tokens", tokens,
              "--model", "m", "--device", "cpu", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert {s: outs[s].stat().st_mtime_ns for s in good} == before  # kept, not remeasured
    for s, needles in bad.items():
        line = next(x for x in r.stderr.splitlines() if f"skipped step {s} " in x)
        _, meta = read_stats(outs[s])
        for n in needles:
            assert n in line and n in meta["skipped"], (n, line)



def test_step_pattern_with_nested_quantifiers_is_refused_at_once(tmp_path):
    """``ck(\\d+)-(a+)+`` against a 36-character name backtracks for minutes (x4 per 2
    characters): the scan refuses the pattern before matching any name."""
    d = tmp_path / "run"
    (d / ("ck1-" + "a" * 31 + "!")).mkdir(parents=True)
    code = ("from madyn.measure import runs\n"
            "try:\n"
            f"    runs.scan({str(d)!r}, step_pattern=r'ck(\\d+)-(a+)+', where='m')\n"
            "except runs.RunError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "m: step_pattern" in r.stdout and "nested" in r.stdout


@pytest.mark.parametrize("where,value", [("trainer_state", 2**70),
                                         ("name", 10**30)])
def test_step_beyond_int64_is_a_recorded_skip(where, value, run_dir):
    """A step no table can hold (int64): a ``global_step`` of 2**70 in trainer_state.json,
    or a folder named with 31 digits, is skipped naming it (it broke ``madyn step series`` with
    an OverflowError)."""
    if where == "trainer_state":
        (run_dir / "checkpoint-4" / "trainer_state.json").write_text(
            json.dumps({"global_step": value}))
        name = "checkpoint-4"
    else:
        name = f"checkpoint-{value}"
        (run_dir / "checkpoint-4").rename(run_dir / name)
    sc = runs.scan(run_dir)
    assert sc.steps == [1, 10]
    assert str(value) in sc.skipped[name] and "int64" in sc.skipped[name]
    if where == "trainer_state":
        assert "trainer_state.json" in sc.skipped[name]


def test_schema_names_the_first_checkpoints_tokenizer_as_the_code_does():
    """The default tokenizer of a run entry is the first checkpoint's (common.smk's
    ``RunSource.tokenizer_arg``, the docs' table); the schema said the last's (issue 32)."""
    from madyn.settings import params_schema
    from tests.helpers import ROOT

    entry = params_schema()["$defs"]["run_suite"]["properties"]["models"]["items"]
    said = entry["properties"]["tokenizer"]["description"]
    assert "first checkpoint" in said and "last" not in said
    smk = (ROOT / "workflow/rules/common.smk").read_text()
    assert "sc.checkpoints[min(sc.checkpoints)]" in smk
    assert "| the first checkpoint's own tokenizer files |" in (
        ROOT / "docs/your-own-run.md").read_text()


def _dvc_project(tmp_path: Path, paths: list[Path]) -> Path:
    """A scratch project whose active suite is a run suite of ``paths``."""
    import yaml

    from madyn.workflow.scratch_project import copy_workflow
    from tests.helpers import ROOT

    proj = tmp_path / "proj"
    proj.mkdir()
    copy_workflow(ROOT, proj)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["mine"] = {"source": "run", "models": [
        {"name": f"m{i}", "path": str(p)} for i, p in enumerate(paths)]}
    cfg["suite"] = "mine"
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg))
    return proj


@pytest.mark.parametrize("case,needle", [
    ("fifo", "named pipe"),
    ("dev_zero", "leaves the run suite.s folder"),
    ("outside", "leaves the run suite.s folder"),
])
def test_dvc_source_link_refuses_what_dvc_would_hang_on(case, needle, run_dir, tmp_path):
    """Issue 32: DVC hashes every file under results/<suite>/source: a FIFO in a run
    folder, or a link to /dev/zero, hung `dvc status`. The source stage refuses them,
    naming the entry, and makes no link."""
    from madyn.workflow.dvc_stages import ensure_stage_outs

    bad = run_dir / "runs" / "pipe"
    if case == "fifo":
        os.mkfifo(bad)
    elif case == "dev_zero":
        bad.symlink_to("/dev/zero")
    else:
        (tmp_path / "elsewhere").mkdir()
        bad.symlink_to(tmp_path / "elsewhere")
    proj = _dvc_project(tmp_path, [run_dir])
    with pytest.raises(ValueError, match=needle) as e:
        ensure_stage_outs(proj, "source")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert not os.path.lexists(proj / "results/mine/source")


def test_dvc_source_link_refuses_a_folder_holding_the_project(run_dir, tmp_path,
                                                              tiny_model_dir):
    """Two run folders whose common folder holds the project (and its venv): DVC would
    hash all of it (over 60 s at `dvc status`). Refused, naming both."""
    from madyn.workflow.dvc_stages import ensure_stage_outs

    other = tmp_path / "other"
    other.mkdir()
    _ckpt(tiny_model_dir, other / "checkpoint-1", 1)
    proj = _dvc_project(tmp_path, [run_dir, other])
    with pytest.raises(ValueError, match="holds the project") as e:
        ensure_stage_outs(proj, "source")
    assert str(tmp_path) in str(e.value)
    assert not os.path.lexists(proj / "results/mine/source")


def test_make_run_checks_params_before_dvc_parses_it(tmp_path):
    """Issue 32: a YAML alias bomb in params.yaml took DVC to 3.4 GB before madyn's guard
    ran. `make run` checks the file with madyn's bounded loader first: one line, exit
    non-zero, fast, within 4 GB, nothing started."""
    import resource
    import signal

    from tests.helpers import ROOT

    proj = tmp_path / "proj"
    proj.mkdir()
    for f in ("Makefile", "dvc.yaml"):
        shutil.copy(ROOT / f, proj / f)
    for f in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / f, proj / f)
        os.utime(proj / f, (0, 0))  # older than the venv's stamp: no install
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        rows.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    (proj / "params.yaml").write_text("\n".join(rows) + "\nsuite: embedded\n")
    subprocess.run([str(ROOT / ".venv/bin/dvc"), "init", "--no-scm", "-q"], cwd=proj,
                   check=True, timeout=120)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    p = subprocess.Popen(["make", "run", f"VENV={ROOT / '.venv'}", "EXTRA_SUITES="],
                         cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, preexec_fn=limit)
    try:
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode != 0
    assert "madyn run: params.yaml: more than 100000 values" in err, err[-2000:]
    assert "Traceback" not in err
    assert not (proj / "results").exists()


def test_measuring_the_same_weights_again_writes_the_same_file(run_dir, tokens, tmp_path):
    """Issue 32: a table records no wall time, so a fresh clone that measures the same
    weights on the same machine writes byte-identical stats (and DVC the same hash)."""
    import hashlib

    digests = []
    for i in (1, 2):
        out = tmp_path / f"run{i}" / "s1.parquet"
        r = madyn("step", "extract-run", "--checkpoints", run_dir / "checkpoint-1",
                  "--steps", 1, "--outs", out, "--tokens", tokens, "--model", "m",
                  "--device", "cpu")
        assert r.returncode == 0, r.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
