"""One GPU per measuring job on a multi-GPU box: real processes, real lock files.

Snakemake's ``--resources gpu=N`` bounds how many measuring jobs run at once but does not
say which GPU each gets; before ``madyn.measure.gpus`` every job measured on ``cuda`` (GPU 0).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from madyn.measure.gpus import claimed_device

HOLD = """
import json, sys, time
from pathlib import Path
from madyn.measure.gpus import claimed_device
lock_dir, n, hold, out = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
with claimed_device("cuda", n_gpus=n, lock_dir=lock_dir, poll_s=0.05) as dev:
    t0 = time.time()
    print(dev, flush=True)
    time.sleep(hold)
    json.dump({"device": dev, "start": t0, "end": time.time()}, open(out, "w"))
"""


def _job(tmp_path, name: str, n: int, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "locks"), str(n),
                             str(hold), str(tmp_path / f"{name}.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_distinct_gpus_and_wait_for_a_free_one(tmp_path):
    """Three jobs on a 2-GPU box (as if snakemake ran them with gpu=3 by mistake): two
    start at once on different GPUs, the third waits, saying so, and takes a freed one."""
    jobs = [_job(tmp_path, f"job{i}", n=2, hold=1.5) for i in range(3)]
    outs = [j.communicate(timeout=60) for j in jobs]
    assert all(j.returncode == 0 for j in jobs), outs
    runs = sorted((json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(3)),
                  key=lambda r: r["start"])
    assert {r["device"] for r in runs[:2]} == {"cuda:0", "cuda:1"}
    for a in runs:  # no two jobs on one GPU at the same time
        for b in runs:
            if a is not b and a["device"] == b["device"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"]
    assert runs[2]["start"] >= min(r["end"] for r in runs[:2]) - 0.01  # it waited
    assert sum("all 2 GPUs are held by other madyn jobs" in o[0] + o[1] for o in outs) == 1


def test_a_killed_job_frees_its_gpu(tmp_path):
    holder = _job(tmp_path, "holder", n=2, hold=600)
    assert holder.stdout.readline().strip() == "cuda:0"
    with claimed_device("cuda", n_gpus=2, lock_dir=tmp_path / "locks") as mine:
        assert mine == "cuda:1"  # GPU 0 is held
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with claimed_device("cuda", n_gpus=2, lock_dir=tmp_path / "locks") as again:
            assert again == "cuda:0"  # the OS released the killed job's lock
    with claimed_device("cuda", n_gpus=2, lock_dir=tmp_path / "locks") as after:
        assert after == "cuda:0"  # released on leaving the block


@pytest.mark.parametrize(("device", "n", "want"), [
    ("cpu", 4, "cpu"), ("cuda:3", 4, "cuda:3"), ("cuda", 1, "cuda"), ("auto", 0, "cpu"),
    ("auto", 1, "cuda"), ("auto", 2, "cuda:0")])
def test_devices_that_need_no_claim_pass_through(tmp_path, device, n, want):
    t0 = time.monotonic()
    with claimed_device(device, n_gpus=n, lock_dir=tmp_path / "locks") as dev:
        assert dev == want
    assert (tmp_path / "locks").exists() == (n > 1 and device in ("auto", "cuda"))
    assert time.monotonic() - t0 < 1
