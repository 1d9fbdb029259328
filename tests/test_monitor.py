"""Live monitoring (:mod:`madyn.measure.monitor`) with the real HF ``Trainer`` and a hand-written
nanoGPT-style loop on the CPU: training is bit-identical with and without it, the live
tables equal ``madyn extract`` on the checkpoint saved at the same step, and a ``run``
suite over the Trainer's output folder runs through Snakemake to the report (a checkpoint
added afterwards is the only one measured by the next run)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from madyn.measure.monitor import Monitor, due
from madyn.measure.stats_table import STAT_COLUMNS, read_stats
from madyn.workflow.scratch_project import copy_workflow
from tests.helpers import ROOT
from tests.trainer_run import probe_tokens, train

pytest.importorskip("accelerate")  # the HF Trainer needs it


def test_schedule_is_log_spaced_then_every_k():
    assert [s for s in range(0, 301) if due(s, 16, 100)] == [0, 1, 2, 4, 8, 16, 100, 200,
                                                              300]


# --------------------------------------------------------------- a hand-written loop
@dataclass
class GPTConfig:
    vocab_size: int = 300
    n_layer: int = 2
    n_embd: int = 32
    n_head: int = 2
    block_size: int = 32
    dropout: float = 0.1


def _nanogpt(cfg: GPTConfig):
    """nanoGPT's structure (transformer.h, c_fc/gelu/c_proj), tiny."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.n_embd
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.ModuleDict({"c_fc": nn.Linear(d, 4 * d), "gelu": nn.GELU(),
                                      "c_proj": nn.Linear(4 * d, d)})
            self.drop = nn.Dropout(cfg.dropout)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, cfg.n_head, -1).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=cfg.dropout if self.training else 0)
            x = x + self.drop(self.c_proj(y.transpose(1, 2).reshape(b, t, d)))
            m = self.mlp
            return x + self.drop(m["c_proj"](m["gelu"](m["c_fc"](self.ln_2(x)))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg
            self.transformer = nn.ModuleDict({
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList(Block() for _ in range(cfg.n_layer)),
                "ln_f": nn.LayerNorm(cfg.n_embd)})
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

        def forward(self, idx, targets=None):
            pos = torch.arange(idx.shape[1])
            x = self.transformer["drop"](self.transformer["wte"](idx)
                                         + self.transformer["wpe"](pos))
            for block in self.transformer["h"]:
                x = block(x)
            logits = self.lm_head(self.transformer["ln_f"](x))
            if targets is None:
                return logits, None
            return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                           targets.reshape(-1))

    return GPT()


def _hand_loop(corpus_dir: Path, out: Path | None, steps: int = 20, **monitor_kw):
    """nanoGPT's loop: ``mon(step)`` after ``step`` updates, in a ``with Monitor(...)``
    block (its close probes the last step)."""
    import torch

    torch.manual_seed(0)
    model = _nanogpt(GPTConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.as_tensor(np.load(corpus_dir / "train.npy").astype(np.int64))
    mon = Monitor(model, probe_tokens(corpus_dir), out, log_until=4, every=10,
                  optimizer=opt, max_steps=steps, **monitor_kw) if out else None
    model.train()
    with mon or contextlib.nullcontext():
        for step in range(steps + 1):
            if mon:
                mon(step)  # after `step` updates
            if step == steps:
                break
            starts = torch.randint(0, len(ids) - 33, (4,))
            x = torch.stack([ids[s:s + 32] for s in starts])
            y = torch.stack([ids[s + 1:s + 33] for s in starts])
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _steps(folder: Path) -> list[int]:
    return sorted(int(p.stem[4:]) for p in folder.glob("step*.parquet"))


def test_hand_written_loop_is_bit_identical_and_recorded(corpus_dir, tmp_path, capsys):
    import torch

    from madyn.architecture import architecture
    from madyn.io import read_json

    plain = _hand_loop(corpus_dir, None, steps=23)
    watched = _hand_loop(corpus_dir, tmp_path / "mon", steps=23, verbose=True)
    for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    assert watched.training  # train mode restored
    assert _steps(tmp_path / "mon") == [0, 1, 2, 4, 10, 20, 23]  # 23: the close
    df, meta = read_stats(tmp_path / "mon" / "step20.parquet")
    assert list(df.columns) == ["seq", "layer", *STAT_COLUMNS]
    assert sorted(df["layer"].unique()) == [0, 1]  # transformer.h, found by structure
    assert df["mlp_active_token"].between(0, 1).all() and df["sink_mass"].isna().all()
    assert meta["step"] == 20 and meta["live"]
    # the recipe from the optimizer, the planned last step, a config from GPTConfig
    rec = read_json(tmp_path / "mon/madyn_monitor.json")
    assert rec["recipe"] == {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.999],
                             "eps": 1e-8, "weight_decay": 0.01}
    assert rec["max_steps"] == 23
    arch = architecture(read_json(tmp_path / "mon/config.json"))
    assert (arch["num_hidden_layers"], arch["hidden_size"], arch["num_attention_heads"],
            arch["vocab_size"]) == (2, 32, 2, 300)
    # a line per probe, and the figure
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.startswith("madyn monitor: step")]
    assert [int(ln.split()[3].rstrip(":")) for ln in lines] == [0, 1, 2, 4, 10, 20, 23]
    assert (tmp_path / "mon/madyn_monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------- the HF Trainer
def test_trainer_is_bit_identical_with_and_without_the_callback(corpus_dir, tmp_path):
    import torch

    from madyn.io import read_json

    plain = train(corpus_dir, tmp_path / "a", steps=22, monitor=False, dropout=0.1,
                  save=False)
    watched = train(corpus_dir, tmp_path / "b", steps=22, monitor=True, dropout=0.1,
                    every=5, save=False)
    mon = tmp_path / "b/madyn-monitor"
    assert _steps(mon) == [0, 1, 2, 4, 5, 8, 10, 15, 16, 20, 22]  # 22: at the train end
    for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    rec = read_json(mon / "madyn_monitor.json")
    assert rec["recipe"] == {"optimizer": "adamw", "lr": 3e-3, "betas": [0.9, 0.999],
                             "eps": 1e-8, "weight_decay": 0.0, "lr_scheduler": "linear",
                             "warmup_steps": 10}
    assert rec["max_steps"] == 22


def test_a_resumed_trainer_run_repeats_no_row(corpus_dir, tmp_path, monkeypatch):
    """Trained to step 10, then resumed from checkpoint-10 to step 20: the boundary step
    is not measured, nor logged to DVCLive, a second time."""
    dvclive = pytest.importorskip("dvclive")
    from madyn.io import read_json

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    for steps, resume in ((10, False), (20, True)):
        with dvclive.Live(str(tmp_path / "dvclive"), save_dvc_exp=False,
                          resume=resume) as live:
            train(corpus_dir, out, steps=steps, save_steps=10, every=5, live=live,
                  resume=resume)
    rows = pd.read_csv(tmp_path / "dvclive/plots/metrics/madyn/layer1/ratio.tsv", sep="\t")
    assert list(rows["step"]) == [0, 1, 2, 4, 5, 8, 10, 15, 16, 20]
    assert _steps(out / "madyn-monitor") == [0, 1, 2, 4, 5, 8, 10, 15, 16, 20]
    assert read_json(out / "madyn-monitor/madyn_monitor.json")["max_steps"] == 20


def test_a_failing_probe_never_stops_training(corpus_dir, tmp_path, capsys):
    """The monitor's folder replaced by a file while the Trainer runs: the probe at step 4
    fails, one line says so, probing stops, training goes on to the end, unchanged."""
    import torch
    from transformers import TrainerCallback

    class Clobber(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                mon = Path(args.output_dir) / "madyn-monitor"
                shutil.rmtree(mon)
                mon.write_text("not a folder any more")

    plain = train(corpus_dir, tmp_path / "a", steps=8, monitor=False, save=False)
    watched = train(corpus_dir, tmp_path / "b", steps=8, every=5, save=False,
                    callbacks=(Clobber(),))
    for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    said = [ln for ln in capsys.readouterr().err.splitlines() if "madyn monitor" in ln]
    assert len(said) == 1 and "step 4" in said[0] and "stopped probing" in said[0], said


@pytest.fixture(scope="module")
def trainer_run(corpus_dir, tmp_path_factory):
    """A real Trainer run (160 steps, a checkpoint every 20, the callback every 20) whose
    last checkpoint is held back, to be added later."""
    out = tmp_path_factory.mktemp("trainer") / "out"
    train(corpus_dir, out, steps=160, save_steps=20, every=20)
    held = out.parent / "held"
    held.mkdir()
    shutil.move(out / "checkpoint-160", held / "checkpoint-160")
    return out


def _madyn(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "madyn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("step", [20, 140])
def test_live_statistics_equal_extract_on_the_saved_checkpoint(trainer_run, step, tmp_path):
    mon = trainer_run / "madyn-monitor"
    out = tmp_path / "x.parquet"
    r = _madyn("extract", trainer_run / f"checkpoint-{step}", "--tokens",
               mon / "probe_tokens.npy", "--out", out, "--step", step, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    (post, _), (live, meta) = read_stats(out), read_stats(mon / f"step{step}.parquet")
    assert list(live.columns) == list(post.columns) and meta["step"] == step
    np.testing.assert_allclose(live.to_numpy(float), post.to_numpy(float), rtol=1e-5)


def _run_project(tmp_path: Path, run: Path | None, *more: dict) -> Path:
    proj = copy_workflow(ROOT, tmp_path)
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    models = [{"name": "trainer", "path": str(run)},
              {"name": "live", "path": str(run / "madyn-monitor")}] if run else []
    cfg["suites"]["mine"] = {"source": "run", "models": [*models, *more]}
    cfg["suite"] = "mine"
    cfg["predict"].pop("example", None)
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return proj


def _snakemake(proj: Path, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=proj,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_run_suite_over_a_trainer_folder_runs_to_the_report(trainer_run, tmp_path):
    from madyn.io import read_json

    proj = _run_project(tmp_path, trainer_run)
    _snakemake(proj)
    res = proj / "results/mine"
    assert (res / "report/peak_heatmaps.png").exists()
    assert (res / "metrics/forecast.json").exists()
    stats = res / "stats/trainer"
    assert sorted(int(p.stem[4:]) for p in stats.glob("*.parquet")) == list(range(20, 141, 20))
    series = pd.read_parquet(res / "series/live.parquet")
    assert sorted(series["step"].unique())[:5] == [0, 1, 2, 4, 8]  # read as recorded
    integ = read_json(res / "integrity/trainer.json")
    assert integ["skipped_files"] == {"madyn-monitor": "no step in its name (not a "
                                                        "checkpoint)"}
    design = read_json(res / "configs/trainer.json")["madyn_design"]
    assert design["optimizer"] == "adamw" and design["lr"] == 3e-3  # the monitor's record
    # the evaluation batch: the run's own monitor probe, so the two entries agree
    from madyn.io import sha256_file

    _, meta = read_stats(stats / "step20.parquet")
    assert meta["tokens_sha256"] == sha256_file(trainer_run / "madyn-monitor/probe_tokens.npy")
    assert not (res / "eval/tokens_run-trainer.npy").exists()

    # a checkpoint that appears later is the only one measured by the next run
    before = {p.name: p.read_bytes() for p in stats.glob("*.parquet")}
    shutil.move(trainer_run.parent / "held" / "checkpoint-160", trainer_run / "checkpoint-160")
    _snakemake(proj, "extract_all")
    log = (res / "logs/extract/trainer.log").read_text()
    assert "measured 1 checkpoints, kept 7 up to date" in log, log
    after = {p.name: p.read_bytes() for p in stats.glob("*.parquet")}
    assert set(after) - set(before) == {"step160.parquet"}
    assert all(after[k] == v for k, v in before.items())  # kept as they were
    assert read_json(res / "integrity/trainer.json")["n_checkpoints"] == 8


def test_a_nanogpt_monitor_folder_gives_a_run_suite_its_config(corpus_dir, tmp_path):
    """A nanoGPT-style loop's monitor folder in a run suite: the model's config.json
    (written from GPTConfig's attributes) is what the suite's model_config job reads
    (before, Snakemake stopped with MissingInputException in rule model_config)."""
    from madyn.architecture import architecture
    from madyn.io import read_json

    _hand_loop(corpus_dir, tmp_path / "nano", steps=11)  # 6 tables
    (tmp_path / "p").mkdir()
    proj = _run_project(tmp_path / "p", None, {"name": "nano", "path": str(tmp_path / "nano")})
    _snakemake(proj, "results/mine/configs/nano.json")
    cfg = read_json(proj / "results/mine/configs/nano.json")
    assert architecture(cfg)["num_hidden_layers"] == 2
    assert cfg["madyn_design"]["optimizer"] == "adamw" and cfg["madyn_design"]["lr"] == 1e-3


def test_dvclive_logs_each_layers_ratio(corpus_dir, tmp_path, monkeypatch):
    dvclive = pytest.importorskip("dvclive")
    monkeypatch.chdir(tmp_path)
    import transformers

    model = transformers.GPTNeoXForCausalLM(
        __import__("tests.trainer_run", fromlist=["x"]).tiny_config(300))
    with dvclive.Live(str(tmp_path / "dvclive"), save_dvc_exp=False) as live:
        mon = Monitor(model, probe_tokens(corpus_dir), tmp_path / "mon", live=live)
        mon(0)
        mon(1)
    tsv = tmp_path / "dvclive/plots/metrics/madyn/layer1/ratio.tsv"
    rows = pd.read_csv(tsv, sep="\t")
    assert list(rows["step"]) == [0, 1] and (rows["ratio"] > 1).all()


def test_lightning_callback_is_bit_identical_and_records(corpus_dir, tmp_path):
    pytest.importorskip("lightning")
    import lightning as L
    import torch

    from madyn.io import read_json
    from madyn.measure.monitor_lightning import MadynLightningCallback

    ids = torch.as_tensor(np.load(corpus_dir / "train.npy").astype(np.int64))
    data = [ids[i * 32:(i + 1) * 32] for i in range(64)]

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = _nanogpt(GPTConfig())

        def training_step(self, batch, _):
            return self.model(batch[:, :-1], batch[:, 1:])[1]

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def fit(callbacks):
        L.seed_everything(0, verbose=False)
        mod = Module()
        L.Trainer(max_steps=12, accelerator="cpu", logger=False, callbacks=callbacks,
                  enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False).fit(
            mod, torch.utils.data.DataLoader(data, batch_size=4, shuffle=True))
        return mod

    plain = fit([])
    watched = fit([MadynLightningCallback(probe_tokens(corpus_dir), tmp_path / "mon",
                                          log_until=4, every=10)])
    for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    assert _steps(tmp_path / "mon") == [0, 1, 2, 4, 10, 12]  # 12: at the train end
    rec = read_json(tmp_path / "mon/madyn_monitor.json")
    assert rec["recipe"] == {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.999],
                             "eps": 1e-8, "weight_decay": 0.01}
    assert rec["max_steps"] == 12


@pytest.mark.slow
def test_run_suite_under_dvc_reads_the_folder_and_never_writes_it(trainer_run, tmp_path):
    """`dvc repro` over the Trainer folder runs to the report; the folder is a dependency
    through madyn's link (never an output, nothing written into it); a checkpoint added
    afterwards reruns the stages and is the only one measured."""
    from madyn.io import read_json

    def dvc(*args):
        r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=proj, text=True,
                           capture_output=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    if (trainer_run / "checkpoint-160").exists():  # added by an earlier test: held back
        shutil.move(trainer_run / "checkpoint-160", trainer_run.parent / "held")
    listing = lambda: sorted(str(p.relative_to(trainer_run)) for p in trainer_run.rglob("*"))  # noqa: E731
    before = listing()
    proj = _run_project(tmp_path, trainer_run)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "i"]):
        if cmd[1] == "add":
            dvc("init", "-q")
        subprocess.run(cmd, cwd=proj, check=True, capture_output=True)
    out = dvc("repro")
    assert "Running stage 'report'" in out
    res = proj / "results/mine"
    assert (res / "source").resolve() == trainer_run.resolve()
    manifest = read_json(res / "models/run_manifest.json")
    assert "checkpoint-140/model.safetensors" in manifest["trainer"]["files"]
    assert listing() == before  # DVC wrote nothing into the user's folder
    shutil.move(trainer_run.parent / "held" / "checkpoint-160", trainer_run / "checkpoint-160")
    assert "results/mine/source" in dvc("status")
    out = dvc("repro")
    assert "Running stage 'extract'" in out
    assert "measured 1 checkpoints, kept" in (res / "logs/extract/trainer.log").read_text()
    assert "Data and pipelines are up to date" in dvc("repro")


# ------------------------------------------------------------------ hostile inputs
def _probe_and_model(corpus_dir):
    import torch

    torch.manual_seed(0)
    return probe_tokens(corpus_dir), _nanogpt(GPTConfig())


@pytest.mark.parametrize("kw", [{"every": 0}, {"every": 2.5}, {"batch_size": -1},
                                {"log_until": -1}, {"every": True}])
def test_bad_schedule_arguments_are_refused_at_construction(corpus_dir, tmp_path, kw):
    pytest.importorskip("lightning")
    from madyn.measure.monitor_hf import MadynCallback
    from madyn.measure.monitor_lightning import MadynLightningCallback

    probe, model = _probe_and_model(corpus_dir)
    name = next(iter(kw))
    for make in (lambda: Monitor(model, probe, tmp_path / "m", **kw),
                 lambda: MadynCallback(probe, **kw),
                 lambda: MadynLightningCallback(probe, tmp_path / "m", **kw)):
        with pytest.raises(ValueError, match=rf"^Monitor: {name} must be a whole number"):
            make()
    assert not (tmp_path / "m").exists()


def test_a_probe_the_model_cannot_read_is_refused_at_construction(corpus_dir, tmp_path):
    """Longer than the model's positions (nanoGPT's block_size, a transformers model's
    max_position_embeddings), or ids beyond its input embedding (a model whose config does
    not say its vocabulary): one line at construction, not an IndexError at the first
    probe."""
    from types import SimpleNamespace

    from transformers import GPTNeoXForCausalLM

    from tests.trainer_run import tiny_config

    probe, model = _probe_and_model(corpus_dir)
    long = np.zeros((2, 33), dtype=np.int64)
    with pytest.raises(ValueError, match=r"^Monitor: probe .*33 .*block_size 32"):
        Monitor(model, long, tmp_path / "a")
    neox = GPTNeoXForCausalLM(tiny_config(300))
    with pytest.raises(ValueError, match=r"^Monitor: probe .*65 .*max_position_embeddings 64"):
        Monitor(neox, np.zeros((1, 65), dtype=np.int64), tmp_path / "b")
    model.config = SimpleNamespace(n_layer=2, n_embd=32, n_head=2, block_size=32)
    beyond = probe.copy()
    beyond[0, 0] = 300
    with pytest.raises(ValueError, match=r"^Monitor probe: token ids span .*300"):
        Monitor(model, beyond, tmp_path / "c", config={**vars(model.config),
                                                       "vocab_size": 300})
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_model_without_a_readable_config_needs_config(corpus_dir, tmp_path):
    """No config.json can be written from the attributes: one line naming config=."""
    from types import SimpleNamespace

    probe, model = _probe_and_model(corpus_dir)
    model.config = SimpleNamespace(n_layer=2, n_embd=32, block_size=32)  # no heads
    with pytest.raises(ValueError, match=r"^Monitor: .*pass config="):
        Monitor(model, probe, tmp_path / "m")
    with pytest.raises(ValueError, match=r"^Monitor: config=.*heads"):
        Monitor(model, probe, tmp_path / "m", config={"n_layer": 2, "n_embd": 32,
                                                      "vocab_size": 300})
    mon = Monitor(model, probe, tmp_path / "m", config={"n_layer": 2, "n_embd": 32,
                                                        "n_head": 2, "vocab_size": 300})
    mon(0)
    assert (tmp_path / "m/config.json").is_file()


def test_a_resumed_monitor_with_another_probe_is_refused(corpus_dir, tmp_path):
    probe, model = _probe_and_model(corpus_dir)
    Monitor(model, probe, tmp_path / "m")(0)
    with pytest.raises(ValueError, match=r"^Monitor: probe: .*probe_tokens.npy"):
        Monitor(model, probe[::-1], tmp_path / "m")
    assert _steps(tmp_path / "m") == [0]


def test_a_new_run_in_a_monitor_folder_of_another_run_is_refused(corpus_dir, tmp_path):
    """A run that starts at step 0 where an earlier run's tables are: refused before it
    trains, the earlier tables kept."""
    probe, model = _probe_and_model(corpus_dir)
    Monitor(model, probe, tmp_path / "m")(0)
    before = (tmp_path / "m/step0.parquet").read_bytes()
    again = Monitor(model, probe, tmp_path / "m")
    with pytest.raises(ValueError, match=r"^Monitor: .*m holds the tables of an earlier run"):
        again(0)
    assert (tmp_path / "m/step0.parquet").read_bytes() == before


def test_monitor_never_writes_into_a_users_folder(corpus_dir, tmp_path):
    """A folder holding the user's own config.json, step0.parquet and a folder named like
    madyn's temporary folders: refused, nothing in it replaced or deleted."""
    probe, model = _probe_and_model(corpus_dir)
    user = tmp_path / "mine"
    (user / ".config.json.tmpabcd1234").mkdir(parents=True)
    (user / ".config.json.tmpabcd1234/config.json").write_text("the user's")
    (user / "config.json").write_text('{"mine": true}')
    (user / "step0.parquet").write_bytes(b"the user's own table")

    def snapshot():
        return {str(p.relative_to(user)): p.read_bytes() if p.is_file() else None
                for p in user.rglob("*")}

    before = snapshot()
    with pytest.raises(ValueError, match=r"^Monitor: .*mine holds .*madyn did not write"):
        Monitor(model, probe, user)(0)
    assert snapshot() == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"^Monitor: .*afile is not a folder"):
        Monitor(model, probe, tmp_path / "afile")
