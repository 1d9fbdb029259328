"""The design atlas: a suite's models generated from its declared design space
(madyn.workflow.design_space, params.yaml's `design_space`), the per-model recipe options it
uses (steps, warmup, batch size, a linear schedule, a BOS token on text), and the suites'
workflows (one training rule per checkpoint schedule; the committed reference's DAG)."""

from __future__ import annotations

import copy
import math
import re
import shutil

import numpy as np
import pytest

from madyn.io import read_json
from madyn.train.training import ModelSpec, TrainSpec, checkpoint_steps, lr_at, train_model
from madyn.workflow import design_space, params_file, params_values
from madyn.workflow.scratch_project import copy_workflow
from tests.helpers import ROOT
from tests.test_workflow import _snakemake


@pytest.fixture(scope="module")
def cfg() -> dict:
    return params_file.load(str(ROOT / "params.yaml"))


def _raw() -> dict:
    return params_file.read(str(ROOT / "params.yaml"))


def _refused(raw: dict, match: str) -> None:
    with pytest.raises(params_file.ConfigError, match=match):
        params_file.validate(raw)


def test_expansion_is_deterministic_and_counts_designs_and_seeds(cfg):
    space = cfg["suites"]["atlas"]["design_space"]
    models = design_space.expand(space)
    assert models == design_space.expand(copy.deepcopy(space))
    n, k, seeds = space["n_designs"], space["seeded_designs"], space["seeds"]
    assert len(models) == n + k * (seeds - 1)
    assert len({m["name"] for m in models}) == len(models)
    by_design: dict[str, list[dict]] = {}
    for m in models:
        by_design.setdefault(m["design"], []).append(m)
    assert len(by_design) == n
    replicated = {d: ms for d, ms in by_design.items() if len(ms) > 1}
    assert len(replicated) == k
    for ms in replicated.values():  # the seeds of a design differ in name and seed only
        assert sorted(m["seed"] for m in ms) == list(range(seeds))
        strip = [{x: v for x, v in m.items() if x not in ("name", "seed")} for m in ms]
        assert all(s == strip[0] for s in strip)
        assert all(m["name"] == f"{m['design']}-s{m['seed']}" for m in ms)


@pytest.mark.parametrize("n, d, seed", [(48, 16, 0), (5, 3, 7), (100, 1, 123), (1, 4, 0)])
def test_latin_hypercube_is_scipys_to_the_bit(n, d, seed):
    """madyn draws the hypercube itself (importing scipy.stats costs about 1 s at every
    params check); the designs must stay scipy's, the ones the committed atlas trained."""
    from scipy.stats import qmc

    ours = design_space.latin_hypercube(n, d, seed)
    assert np.array_equal(ours, qmc.LatinHypercube(d, seed=seed).random(n))
    assert ours.shape == (n, d) and ours.min() >= 0 and ours.max() < 1


@pytest.mark.parametrize("method", ["lhs", "sobol"])
def test_expansion_respects_ranges_choices_and_conditions(cfg, method):
    space = {**cfg["suites"]["atlas"]["design_space"], "sampler": {"method": method, "seed": 0}}
    axes = space["axes"]
    points = design_space.designs(space)
    assert points == design_space.designs(copy.deepcopy(space))  # the same on every call
    assert len(points) == space["n_designs"]
    other = "sobol" if method == "lhs" else "lhs"
    assert points != design_space.designs({**space, "sampler": {"method": other, "seed": 0}})
    for d in points:
        for name, axis in axes.items():
            if name == "warmup_fraction":
                lo, hi = axis["range"]
                assert lo * d["steps"] - 1 <= d["warmup"] <= hi * d["steps"] + 1
                continue
            if "when" in axis and d["family"] != axis["when"]["family"]:
                assert name not in d  # the model keeps its default
                continue
            if "choices" in axis:
                assert d[name] in axis["choices"]
            else:
                lo, hi = axis["range"]
                assert lo * 0.995 <= d[name] <= hi * 1.005
    lrs = [d["lr"] for d in points]
    assert math.log10(max(lrs) / min(lrs)) >= 1.4  # the sampler fills the 1.7 decades
    # a space-filling design: every choice of every choices axis is drawn
    for name, axis in axes.items():
        if "choices" in axis and "when" not in axis:
            assert {d[name] for d in points} == set(axis["choices"]), name


def test_default_atlas_covers_what_the_issue_asks(cfg):
    suite = cfg["suites"]["atlas"]
    labels = params_values.design_labels(suite)
    counts = {d: list(labels.values()).count(d) for d in set(labels.values())}
    assert len(counts) >= 48 and sum(c >= 3 for c in counts.values()) >= 8
    axes = suite["design_space"]["axes"]
    assert {"layers", "width", "heads", "ff_mult", "family", "parallel_residual",
            "rotary_pct", "lr", "warmup_fraction", "schedule", "steps", "weight_decay",
            "beta2", "eps", "batch_size", "bos"} <= set(axes)
    assert set(axes["family"]["choices"]) == {"neox", "llama", "qwen3", "olmo2", "gpt2"}
    assert set(axes["schedule"]["choices"]) == {"cosine", "constant", "linear"}
    lo, hi = axes["lr"]["range"]
    assert axes["lr"]["scale"] == "log" and math.log10(hi / lo) >= 1.5
    for m in params_values.model_names(suite):  # each model's checkpoints end at its steps
        t = params_values.train_spec(suite, m)
        st = params_values.steps(suite, m)
        assert st[-1] == t.steps and st == checkpoint_steps(t.steps, t.log_until, t.every)
    assert len({params_values.train_spec(suite, m).steps for m in labels}) >= 3


def test_released_suite_takes_its_models_from_the_design_space(cfg):
    ref = cfg["suites"]["atlas-reference"]
    atlas = cfg["suites"]["atlas"]
    assert params_values.model_names(ref) == params_values.model_names(atlas)
    m = atlas["models"][0]
    assert params_values.known_recipe(ref, m["name"]) == params_values.known_recipe(
        atlas, m["name"])
    assert params_values.design_labels(ref) == params_values.design_labels(atlas)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s["sampler"].update(method="halton"),
     r"suites\.atlas\.design_space\.sampler\.method"),
    (lambda s: s["axes"].update(depth={"choices": [2]}),
     r"suites\.atlas\.design_space\.axes.*depth"),
    (lambda s: s["axes"]["lr"].update(range=[0.05, 0.001]),
     r"suites\.atlas\.design_space\.axes\.lr\.range: 0\.05 is not below"),
    (lambda s: s["axes"]["eps"].update(range=[0.0, 1e-4]),
     r"suites\.atlas\.design_space\.axes\.eps\.range: a log scale"),
    (lambda s: s["axes"]["family"].update(choices=["neox", "mamba"]),
     r"suites\.atlas\.design_space\.axes\.family: 'mamba' is not one of"),
    (lambda s: s["axes"]["steps"].update(choices=[200, 0]),
     r"suites\.atlas\.design_space\.axes\.steps: 0 is less than"),
    (lambda s: s.update(seeded_designs=s["n_designs"] + 1),
     r"suites\.atlas\.design_space\.seeded_designs: \d+ exceeds n_designs"),
    (lambda s: s["axes"]["rotary_pct"].update(when={"depth": "neox"}),
     r"suites\.atlas\.design_space\.axes\.rotary_pct\.when: 'depth'"),
    (lambda s: s.pop("sampler"), r"suites\.atlas: 'sampler' is a required property|sampler"),
])
def test_a_bad_design_space_is_refused_naming_its_key(edit, match):
    raw = _raw()
    edit(raw["suites"]["atlas"]["design_space"])
    _refused(raw, match)


def test_models_beside_a_design_space_must_be_its_expansion():
    raw = _raw()
    raw["suites"]["atlas"]["models"] = [{"name": "x", "layers": 2, "width": 32, "heads": 2}]
    _refused(raw, r"suites\.atlas\.models: give models or design_space, not both")
    raw = _raw()
    params_file.validate(raw)  # expanded in place; validating again keeps it
    assert params_file.validate(raw)["suites"]["atlas"]["models"] == design_space.expand(
        raw["suites"]["atlas"]["design_space"])


def test_design_space_from_must_name_a_local_design_space():
    raw = _raw()
    raw["suites"]["atlas-reference"]["design_space_from"] = "embedded"
    _refused(raw, r"suites\.atlas-reference\.design_space_from: 'embedded' is not a local "
                  "suite with a design_space")


def test_a_model_warmup_beyond_its_own_steps_is_refused():
    raw = _raw()
    m = raw["suites"]["embedded"]["models"][0]
    m.update(steps=50, warmup=60)
    _refused(raw, r"suites\.embedded\.models\.0\.warmup: 60 must be < its steps 50")


def test_linear_schedule_decays_linearly_to_the_floor():
    t = TrainSpec(steps=110, batch_size=2, seq_len=8, lr=1.0, warmup=10, min_lr_ratio=0.1,
                  weight_decay=0.0, beta1=0.9, beta2=0.95, seed=0, log_until=0, every=10,
                  schedule="linear")
    assert lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(10, t) == pytest.approx(1.0)
    assert lr_at(60, t) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert lr_at(110, t) == pytest.approx(0.1)
    cos = TrainSpec(**{**t.__dict__, "schedule": "cosine"})
    assert lr_at(35, cos) > lr_at(35, t)  # cosine stays higher early on


def test_a_tiny_run_with_a_linear_schedule_and_a_bos_token(corpus_dir, tmp_path):
    """A real training run of the recipe options the atlas draws: its own step count and
    checkpoint schedule, a linear decay, a BOS token at position 0 of a text corpus."""
    spec = ModelSpec(name="t", layers=2, width=32, heads=2, ff_mult=2, family="neox",
                     rotary_pct=0.5, parallel_residual=False)
    train = TrainSpec(steps=12, batch_size=2, seq_len=16, lr=0.01, warmup=2,
                      min_lr_ratio=0.1, weight_decay=0.01, beta1=0.9, beta2=0.99, seed=0,
                      log_until=2, every=6, schedule="linear", bos=True, eps=1e-6)
    man = train_model(spec, train, corpus_dir, tmp_path / "m", threads=1)
    assert man["steps"] == [0, 1, 2, 6, 12]
    assert man["train"]["schedule"] == "linear" and man["train"]["bos"] is True
    assert all((tmp_path / "m" / f"step{s}" / "model.safetensors").is_file()
               for s in man["steps"])
    assert np.isfinite(man["final_loss"])
    cfgj = read_json(tmp_path / "m" / "step12" / "config.json")
    assert cfgj["intermediate_size"] == 64
    assert cfgj["rope_parameters"]["partial_rotary_factor"] == 0.5


def test_text_eval_batch_with_bos_starts_with_the_end_of_text_token(corpus_dir, tmp_path):
    from transformers import AutoTokenizer

    from madyn.stages.extract import eval_tokens

    kw = {"n_seqs": 3, "seq_len": 16, "seed": 0}
    man = str(corpus_dir / "manifest.json")
    tok = str(corpus_dir / "tokenizer")
    plain = eval_tokens(man, tok, str(tmp_path / "a.npy"), **kw)
    bos = eval_tokens(man, tok, str(tmp_path / "b.npy"), bos=True, **kw)
    eot = AutoTokenizer.from_pretrained(tok).eos_token_id
    assert (bos[:, 0] == eot).all() and (bos[:, 1:] == plain[:, 1:]).all()


def test_madyn_check_lists_the_designs(tmp_path):
    from madyn.stages.suite import check

    out = check(str(ROOT / "params.yaml"), "atlas")
    lines = out.splitlines()
    assert "generated from its design_space (48 designs by lhs seed 0, 8 with 3 seeds)" in lines[0]
    assert lines[1].split()[:2] == ["name", "batch_size"]
    assert len(lines) == 2 + 48 + 16 and lines[2].startswith("a00-")


@pytest.mark.slow
def test_atlas_dag_has_a_training_rule_per_schedule(tmp_path):
    proj = copy_workflow(ROOT, tmp_path)
    r = _snakemake(proj, "-n", "--cores", "2", "--config", "suite=atlas")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = r.stdout
    for rule in ("train", "train_2", "train_3", "train_4", "extract_model_4"):
        assert f"\n{rule} " in jobs, rule


def test_committed_reference_is_the_design_space_expansion(cfg):
    """data/reference/atlas holds every model the atlas's design space expands to, each
    trained with the recipe its manifest records (the same expansion, not a stale one)."""
    ref = ROOT / "data" / "reference" / "atlas"
    man = read_json(ref / "manifest.json")
    assert man["recipe"]["models"] == cfg["suites"]["atlas"]["models"]
    assert man["recipe"]["design_space"] == cfg["suites"]["atlas"]["design_space"]
    files = params_file.check_released_folder({**cfg, "suite": "atlas-reference"})
    for m in params_values.model_names(cfg["suites"]["atlas"]):
        st = params_values.steps(cfg["suites"]["atlas"], m)
        assert sorted(files[m]) == st and man["models"][m]["steps"] == st


def test_atlas_reference_dag_builds(tmp_path):
    proj = copy_workflow(ROOT, tmp_path)
    shutil.copytree(ROOT / "data" / "reference" / "atlas", proj / "data" / "reference" / "atlas")
    r = _snakemake(proj, "-n", "--cores", "2", "--config", "suite=atlas-reference")
    assert r.returncode == 0, r.stderr[-3000:]
    n = len(design_space.expand(params_file.load(str(ROOT / "params.yaml"))["suites"]["atlas"][
        "design_space"]))
    assert re.search(rf"\nfit\s+{n}\n", r.stdout), r.stdout[-2000:]
    assert "\ntrain " not in r.stdout and "extract_model" not in r.stdout
    # model_figures: false: no per-model figure jobs; backtest: false
    assert "plot_series" not in r.stdout and "plot_fit" not in r.stdout
