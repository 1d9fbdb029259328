"""The monitor under multi-process training, launched for real: two CPU processes
(``torchrun --nproc_per_node 2``, gloo) of the HF ``Trainer`` (DDP), Lightning
(``strategy="ddp"``) and a hand-written FSDP2 loop (tests/distributed_run.py), each with a
timeout so a deadlock fails the test. Each probes without deadlock, only rank 0 writes
(the monitor's lines come from rank 0 alone, one per step), the last table equals the
single-process measurement of the same weights (relative 1e-5), and training is
bit-identical with and without the monitor. FSDP1 is refused in one line on every rank.
A ``torch.compile``'d model is measured as the eager one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from madyn.measure.monitor import OWN_FILES
from madyn.measure.stats_table import STAT_COLUMNS, read_stats
from tests.distributed_run import EVERY, STEPS
from tests.helpers import ROOT
from tests.trainer_run import probe_tokens, tiny_config

pytest.importorskip("accelerate")  # the HF Trainer needs it
TIMEOUT = 240  # seconds; a run that deadlocks fails here instead of hanging CI


def _launch(kind: str, corpus: Path, out: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 --tee 3`` (each line prefixed with its
    rank: ``[default0]:``) of tests/distributed_run.py."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", "--tee", "3", str(ROOT / "tests/distributed_run.py"),
           kind, str(corpus), str(out)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              cwd=out)
    except subprocess.TimeoutExpired as e:  # the process group is killed with it
        pytest.fail(f"{kind}: no end within {TIMEOUT} s (a deadlock?): "
                    f"{str(e.stdout)[-2000:]}")


def _probe_lines(text: str) -> dict[int, list[int]]:
    """rank -> the steps of its 'madyn monitor: step N:' lines."""
    found: dict[int, list[int]] = {0: [], 1: []}
    for rank, step in re.findall(r"\[default(\d)\]:madyn monitor: step (\d+):", text):
        found[int(rank)].append(int(step))
    return found


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _check_run(kind: str, corpus: Path, out: Path, steps: list[int]) -> None:
    import torch
    from transformers import GPTNeoXForCausalLM

    from madyn.measure.statistics import measure

    done = _launch(kind, corpus, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert "[default0]:world 2 gloo" in text and "[default1]:world 2 gloo" in text
    # one process writes: rank 0 says each probe once, rank 1 never
    assert _probe_lines(text) == {0: steps, 1: []}, text[-3000:]
    mon = out / "mon"
    # the tables of those steps and the monitor's own files, nothing half-written
    assert {p.name for p in mon.iterdir()} == {f"step{s}.parquet" for s in steps} | set(
        OWN_FILES)
    # training is bit-identical with and without the monitor
    plain, watched = _weights(out / "plain.safetensors"), _weights(out / "watched.safetensors")
    assert plain.keys() == watched.keys()
    for k in plain:
        assert torch.equal(plain[k], watched[k]), k
    # the last table (the final weights) equals one process measuring the same weights
    model = GPTNeoXForCausalLM(tiny_config(300))
    model.load_state_dict(watched)
    ref = measure(model, probe_tokens(corpus), extreme_tokens=True)
    live, meta = read_stats(mon / f"step{steps[-1]}.parquet")
    assert meta["step"] == steps[-1] and meta["live"]
    _assert_same_table(live, ref, kind)


def _assert_same_table(live, ref, what: str) -> None:
    """Every statistic within relative 1e-5; the largest relative difference is printed
    (``pytest -s``)."""
    worst = 0.0
    for col in STAT_COLUMNS:
        a, b = live[col].to_numpy(float), ref[col].to_numpy(float)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12, err_msg=col)
        both = np.isfinite(a) & np.isfinite(b) & (b != 0)
        if both.any():
            worst = max(worst, float(np.max(np.abs(a[both] - b[both]) / np.abs(b[both]))))
    print(f"{what}: largest relative difference {worst:.3g}")


def test_trainer_ddp_two_processes(corpus_dir, tmp_path):
    """The HF Trainer under torchrun (2 CPU processes, DDP over gloo)."""
    _check_run("trainer", corpus_dir, tmp_path, [0, 1, 2, 4, EVERY, STEPS])


def test_lightning_ddp_two_processes(corpus_dir, tmp_path):
    """Lightning, strategy="ddp", devices=2 on the CPU, launched by torchrun."""
    pytest.importorskip("lightning")
    _check_run("lightning", corpus_dir, tmp_path, [0, 1, 2, 4, EVERY, STEPS])


def test_fsdp2_probe_runs_on_every_rank_and_rank0_writes(corpus_dir, tmp_path):
    """FSDP2 (fully_shard on each layer and the root): every rank runs the probe's
    forward pass (it gathers the shards), rank 0 writes."""
    _check_run("fsdp", corpus_dir, tmp_path, [0, 1, 2, 4, EVERY, STEPS])


def test_fsdp1_is_refused_in_one_line_on_every_rank(corpus_dir, tmp_path):
    done = _launch("fsdp1", corpus_dir, tmp_path)
    assert done.returncode != 0  # both ranks exit 2, none hangs
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if "refused:" in ln]
    assert sorted(ln.split(":", 1)[0] for ln in lines) == ["[default0]", "[default1]"]
    assert all("Monitor: the model is wrapped in FSDP1" in ln and "fully_shard" in ln
               for ln in lines)
    assert not (tmp_path / "mon").exists()  # nothing written


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor",
                                                               marks=pytest.mark.slow)])
def test_a_compiled_model_is_measured_as_the_eager_one(corpus_dir, tmp_path, backend,
                                                        request):
    """torch.compile'd (``torch.compile(model)`` and ``model.compile()``): the monitor
    probes the module behind it eagerly; its table equals the eager measurement of the
    same weights, and training with the monitor equals training without it. One thread:
    inductor's CPU kernels accumulate the embedding's gradient with atomic adds across
    threads, so with 2 threads two runs without the monitor already differed."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from madyn.measure.monitor import Monitor
    from madyn.measure.statistics import measure

    ids = np.load(corpus_dir / "train.npy").astype(np.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))

    def run(out: Path | None, in_place: bool):
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM(tiny_config(300, dropout=0.1))
        if in_place:
            model.compile(backend=backend)
            trained = model
        else:
            trained = torch.compile(model, backend=backend)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        mon = Monitor(trained, probe_tokens(corpus_dir), out, log_until=2, every=10,
                      figure=False) if out else None
        trained.train()
        for step in range(4):
            if mon:
                mon(step)
            x = torch.as_tensor(ids[step * 128:(step + 1) * 128].reshape(4, 32))
            trained(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
        if mon:
            mon.close(4)
        return model

    plain = run(None, in_place=False)
    for in_place in (False, True):
        out = tmp_path / f"mon-{in_place}"
        watched = run(out, in_place)
        for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items(),
                                  strict=True):
            assert torch.equal(a, b), k
        eager = GPTNeoXForCausalLM(tiny_config(300))
        eager.load_state_dict(watched.state_dict())
        ref = measure(eager, probe_tokens(corpus_dir), extreme_tokens=True)
        live, _ = read_stats(out / "step4.parquet")
        assert sorted(int(p.stem[4:]) for p in out.glob("step*.parquet")) == [0, 1, 2, 4]
        _assert_same_table(live, ref, f"compile ({backend}, in place {in_place})")


def test_wrappers_are_found_by_structure():
    """DDP's and torch.compile's module is the one behind them, however deep; a model
    fully_shard'ed is sharded, a plain one is not (one process, gloo)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from madyn.measure import distributed

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert distributed.unwrapped(torch.compile(model, backend="eager")) is model
    assert distributed.rank() == 0 and not distributed.is_sharded(model)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        assert distributed.unwrapped(torch.compile(ddp, backend="eager")) is model
        assert not distributed.is_sharded(distributed.unwrapped(ddp))
        from torch.distributed.fsdp import fully_shard

        other = torch.nn.Sequential(torch.nn.Linear(4, 4))
        fully_shard(other)
        assert distributed.is_sharded(other) and distributed.rank() == 0
        assert distributed.agree({"x": 1}) == {"x": 1}
    finally:
        dist.destroy_process_group()


def test_a_monitor_made_on_another_rank_writes_nothing(corpus_dir, tmp_path, monkeypatch):
    """Made before the process group is up on a process that torchrun gave RANK=1: it
    measures nothing and makes no folder; with RANK=0 it writes."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from madyn.measure.monitor import Monitor

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(tiny_config(300))
    for rank, written in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        out = tmp_path / f"rank{rank}"
        with Monitor(model, probe_tokens(corpus_dir), out, figure=False) as mon:
            table = mon(0)
        assert (table is not None) is written
        assert out.exists() is written and mon.written == ([out / "step0.parquet"]
                                                           if written else [])
