"""No value of params.yaml runs a shell command (no shell injection through params.yaml).

Every rule's shell command is swept with hostile values: a dry run prints each job's
command, and each command is run by bash with a ``madyn`` on PATH that only records its
arguments. A canary file must never appear, and a path with spaces and shell characters
must reach madyn as one argument, unchanged. Names that become paths (suite, model,
design) and hub ids are refused by validation instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from madyn.workflow import params_file
from madyn.workflow.scratch_project import copy_workflow
from tests.helpers import ROOT

HOSTILE = "rel $(touch {canary}) `touch {canary}` ; touch {canary} 'q\" &"
FAKE_MADYN = """#!{python}
import json, sys
with open({record!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


# a rule starts a line: `rule name:`, or `rule:` with a `name:` (rules made in a loop)
_RULE_START = re.compile(r"\n(?=[ ]*rule(?: \w+)?:)")


def _rule_blocks() -> dict[str, str]:
    """rule name (a loop's rule: its name's literal part) -> its text, for every rule."""
    out = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in _RULE_START.split(smk.read_text()):
            m = re.match(r"\s*rule (\w+):", block) or \
                re.match(r'\s*rule:\s*name:\s*f?"(\w+)', block)
            if m:
                out[m[1]] = block
    return out


def _shell_rules() -> set[str]:
    """Every rule of the workflow that has a ``shell:`` command."""
    return {r for r, block in _rule_blocks().items() if re.search(r"\n\s+shell:", block)}


def _shell_templates() -> dict[str, str]:
    """rule name -> its shell command template (the concatenated string literals)."""
    out = {}
    for rule, block in _rule_blocks().items():
        parts = re.split(r"\n\s+shell:", block, maxsplit=1)
        if len(parts) == 2:
            out[rule] = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', parts[1]))
    return out


def test_every_placeholder_in_a_shell_command_is_quoted():
    """Static half of the sweep: each ``{...}`` of every shell command ends in ``:q``."""
    templates = _shell_templates()
    assert set(templates) == _shell_rules() and len(templates) >= 15
    unquoted = {rule: [p for p in re.findall(r"\{([^{}]+)\}", cmd) if not p.endswith(":q")]
                for rule, cmd in templates.items()}
    assert not {r: p for r, p in unquoted.items() if p}, unquoted


def _released_folder(root: Path, models: dict[str, int], steps=(0, 1, 2, 4, 8, 16, 32)):
    """A folder in the study's released layout: exp2 files of B x 4 x L statistics."""
    rng = np.random.default_rng(0)
    for model, layers in models.items():
        stats = root / model / "stats"
        stats.mkdir(parents=True)
        for s in steps:
            med = rng.uniform(0.5, 1.0, size=(2, 1, layers))
            top1 = med * (2 + s / 4 + rng.uniform(0, 1, size=(2, 1, layers)))
            arr = np.concatenate([top1, top1 / 2, top1 / 3, med], axis=1)
            (stats / f"exp2_{model}_step{s}").write_text(repr(arr.tolist()))
        (root / model / "config.json").write_text(json.dumps(
            {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
             "num_hidden_layers": layers, "hidden_size": 32, "num_attention_heads": 2,
             "intermediate_size": 128, "vocab_size": 320, "rotary_pct": 0.25}))


def _hub_cache(root: Path, repos: list[str]) -> None:
    """config.json of each repo, laid out as the hub cache holds it after a fetch."""
    for repo in repos:
        d = root / ("models--" + repo.replace("/", "--"))
        snap = d / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps(
            {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
             "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
             "intermediate_size": 128, "vocab_size": 320}))
        (d / "refs").mkdir()
        (d / "refs" / "main").write_text("0" * 40)


def _project(tmp_path: Path, suite: str, entry: dict | None) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_workflow(ROOT, proj, suite="smoke")
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    if entry is not None:
        cfg["suites"][suite] = entry
    cfg["suite"] = suite
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return proj


def _planned_commands(proj: Path, env: dict) -> list[tuple[str, str]]:
    """(rule, shell command) of every job a forced dry run plans."""
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall",
                        "--cores", "2", "--quiet", "host"], cwd=proj, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", r.stdout + r.stderr):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if rule and cmd and cmd[1] != "None":
            out.append((rule[1], cmd[1]))
    return out


def _hub_entry(base: dict) -> dict:
    return {**base["suites"]["pythia"], "analyse_steps": [0, 1, 2, 4, 8, 16],
            "models": [{"name": "p1", "repo": "org/model-a", "tokenizer": "org/tok.v2"},
                       {"name": "p2", "repo": "org/model-b"}]}


@pytest.mark.parametrize("source", ["local", "hub", "released", "run"])
def test_hostile_values_never_run_in_any_shell_command(tmp_path, source, request):
    canary = tmp_path / "CANARY"
    hostile = HOSTILE.format(canary=canary)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    expected = None
    if source == "local":
        proj = _project(tmp_path, "smoke", None)
    elif source == "hub":
        _hub_cache(tmp_path / "hub", ["org/model-a", "org/model-b"])
        env["HF_HUB_CACHE"] = str(tmp_path / "hub")
        proj = _project(tmp_path, "hubsuite", _hub_entry(base))
    elif source == "run":  # a run folder whose path is hostile, real tiny checkpoints
        import shutil

        tiny = request.getfixturevalue("tiny_model_dir")
        folder = tmp_path / hostile
        folder.mkdir(parents=True)
        for d in tiny.glob("step*"):
            shutil.copytree(d, folder / f"checkpoint-{d.name[4:]}")
        expected = None
        proj = _project(tmp_path, "mine", {"source": "run", "models": [
            {"name": "r.a", "path": str(folder)}, {"name": "r-b", "path": str(folder)}]})
    else:
        folder = tmp_path / hostile
        _released_folder(folder, {"m.a": 2, "m-b": 3})
        expected = str(folder)
        proj = _project(tmp_path, "study", {
            "source": "released", "path": expected,
            "models": [{"name": "m.a"}, {"name": "m-b", "design": "d+1"}]})
    commands = _planned_commands(proj, env)
    planned = {rule for rule, _ in commands}
    study = {"evaluate", "predict_example", "effects"}  # a run suite is analysed as runs
    want = {"local": {"corpus", "train", "train_summary", "eval_tokens", "extract_model"} | study,
            "hub": {"corpus_manifest", "eval_tokens", "download", "extract_checkpoint"} | study,
            "released": study,
            "run": {"corpus_manifest", "eval_tokens", "extract_run_0_r_a",
                    "extract_run_1_r_b", "forecast_run", "run_summary", "run_headline"}
            }[source] | {
        "series", "plot_series", "growth", "fit", "plot_fit", "fit_summary", "model_config",
        "features", "report_figures"}
    assert want <= planned, want - planned

    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "argv.jsonl"
    (fake / "madyn").write_text(FAKE_MADYN.format(python=sys.executable, record=str(record)))
    (fake / "madyn").chmod(0o755)
    run_env = {**env, "PATH": f"{fake}{os.pathsep}{env['PATH']}"}
    for rule, cmd in commands:
        for log in re.findall(r"(?:2>|tee) ('[^']*'|[^\s)]+)", cmd):  # the log's folder
            (proj / os.path.dirname(log.strip("'"))).mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", cmd], cwd=proj, env=run_env, timeout=60,
                       capture_output=True)
        assert not canary.exists(), f"rule {rule} ran a command from params.yaml: {cmd}"
    argv = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(argv) == len(commands)
    if expected is not None:  # the hostile path arrives as one argument, unchanged
        series = next(a for a in argv if a[:2] == ["step", "series"])
        assert series[series.index("--released") + 1] == expected
        configs = [a for a in argv if a[:2] == ["step", "config-json"]]
        assert {a[2] for a in configs} == {f"{expected}/m.a", f"{expected}/m-b"}


def test_released_folder_with_shell_characters_measured_for_real(tmp_path):
    """The series and model_config jobs of a released folder whose name holds spaces and
    shell syntax: they run (real madyn), read the right folder, and run nothing else."""
    canary = tmp_path / "CANARY"
    folder = tmp_path / HOSTILE.format(canary=canary)
    _released_folder(folder, {"m.a": 2})
    proj = _project(tmp_path, "study", {"source": "released", "path": str(folder),
                                        "models": [{"name": "m.a"}]})
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1",
                        "results/study/series/m.a.parquet", "results/study/configs/m.a.json"],
                       cwd=proj, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert not canary.exists()
    assert json.loads((proj / "results/study/configs/m.a.json").read_text())[
        "num_hidden_layers"] == 2


# ---------------------------------------------------------------- names become paths
def _cfg() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("name", ["x$(touch PWNED)", "../../escape", "a/b", "smoke\n",
                                  "x" * 250, ".hidden", "a b", ""])
def test_suite_names_that_are_not_plain_names_are_refused(name):
    cfg = _cfg()
    cfg["suites"][name] = cfg["suites"]["smoke"]
    cfg["suite"] = name
    with pytest.raises(params_file.ConfigError, match=r"^invalid params.yaml: suite"):
        params_file.validate(cfg)


@pytest.mark.parametrize("name", ["s2$(id)", "s2-w32-h2\n", "x" * 250, "../s2", "a;b"])
def test_model_names_that_are_not_plain_names_are_refused(name):
    cfg = _cfg()
    cfg["suites"]["smoke"]["models"][0]["name"] = name
    cfg["suite"] = "smoke"
    with pytest.raises(params_file.ConfigError, match=r"suites\.smoke\.models\.0\.name"):
        params_file.validate(cfg)


@pytest.mark.parametrize("key,value", [("tokenizer", "t/k$(touch PWNED)"),
                                       ("repo", "org/m$(touch PWNED)"),
                                       ("repo", "org/m\n"), ("tokenizer", "a/b/c"),
                                       ("repo", "org/" + "m" * 200)])
def test_hub_ids_with_shell_characters_are_refused(key, value):
    cfg = _cfg()
    cfg["suites"]["pythia"]["models"][0][key] = value
    cfg["suite"] = "pythia"
    with pytest.raises(params_file.ConfigError, match=rf"suites\.pythia\.models\.0\.{key}"):
        params_file.validate(cfg)


def test_design_with_shell_characters_is_refused():
    cfg = _cfg()
    cfg["suites"]["interventions"]["models"][0]["design"] = "base$(id)"
    with pytest.raises(params_file.ConfigError, match=r"suites\.interventions\.models\.0\.design"):
        params_file.validate(cfg)


def test_snakemake_refuses_a_hostile_suite_name_before_any_job(tmp_path):
    canary = tmp_path / "PWNED"
    name = f"x$(touch {canary})"
    cfg = _cfg()
    cfg["suites"][name] = cfg["suites"]["smoke"]
    cfg["suite"] = name
    (tmp_path / "proj").mkdir()
    proj = copy_workflow(ROOT, tmp_path / "proj")
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=proj,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "madyn: invalid params.yaml: suite" in r.stdout + r.stderr
    assert not canary.exists() and not (proj / "results").exists()


# ------------------------------------------------------- a params file that hangs or lies
def _bomb(levels: int = 9) -> str:
    """A YAML alias bomb: 10 ** levels leaves from a few hundred bytes."""
    lines = ['l0: &l0 ["a","a","a","a","a","a","a","a","a","a"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,message", [
    (_bomb() + (ROOT / "params.yaml").read_text(), "more than 100000 values"),
    ("suite: smoke\n" + (ROOT / "params.yaml").read_text(), "duplicate key 'suite' (line"),
    ("a: &a [*a]\n", "refers to itself"),
    ("x: " + "[" * 200 + "]" * 200 + "\n", "nested"),
])
def test_hostile_params_files_are_refused_fast(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    r = subprocess.run(["madyn", "check", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_huge_params_file_refused_unread(tmp_path):
    path = tmp_path / "params.yaml"
    with open(path, "w") as f:
        f.write("suite: smoke\n")
        f.write("# padding\n" * 5_000_000)
    with pytest.raises(params_file.ConfigError, match=r"params.yaml: \d+ bytes, larger than"):
        params_file.read(str(path))


def test_params_file_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    with pytest.raises(params_file.ConfigError, match="not a regular file"):
        params_file.read(str(fifo))


@pytest.mark.parametrize("prefix,message", [
    (_bomb(), "more than 100000 values"),
    ("suite: smoke\n", "duplicate key 'suite'")])
def test_snakemake_refuses_a_hostile_params_file_before_reading_it(tmp_path, prefix, message):
    (tmp_path / "proj").mkdir()
    proj = copy_workflow(ROOT, tmp_path / "proj")
    (proj / "params.yaml").write_text(prefix + (proj / "params.yaml").read_text())
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], cwd=proj,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and message in r.stdout + r.stderr, r.stderr[-2000:]


def test_the_example_prediction_passes_the_examples_lr(tmp_path):
    """predict.example's lr reaches `madyn predict` (the embedded suite's lr varies, so the
    default predictor needs the example's: without it the predict stage failed)."""
    proj = _project(tmp_path, "smoke", None)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["predict"]["example"] = {"layers": 5, "width": 80, "heads": 4, "optimizer": "adamw",
                                 "lr": 0.02, "eps": 1e-8}
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmds = dict(_planned_commands(proj, {**os.environ}))
    assert ("--layers 5 --width 80 --heads 4 --optimizer adamw --lr 0.02 --eps 1e-08 "
            in cmds["predict_example"])
