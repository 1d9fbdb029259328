"""The Pythia plan, offline: 333 measuring jobs with resources from each model's config,
333 download jobs gated so the revisions on disk stay within extract.disk_budget_gb."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from madyn.measure.memory_estimates import needs_layerwise
from madyn.workflow.resources import download_windows, extract_plan, peak_disk_gb
from madyn.workflow.scratch_project import copy_workflow
from tests.helpers import ROOT

# The nine Pythia shapes (layers, width, heads, vocab), as in their config.json files.
PYTHIA = {"14m": (6, 128, 4, 50304), "70m": (6, 512, 8, 50304), "160m": (12, 768, 12, 50304),
          "410m": (24, 1024, 16, 50304), "1b": (16, 2048, 8, 50304),
          "1.4b": (24, 2048, 16, 50304), "2.8b": (32, 2560, 32, 50304),
          "6.9b": (32, 4096, 32, 50432), "12b": (36, 5120, 40, 50688)}
BUDGET_GB = 60.0


def _config(layers, width, heads, vocab) -> dict:
    return {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "num_hidden_layers": layers, "hidden_size": width, "num_attention_heads": heads,
            "intermediate_size": 4 * width, "vocab_size": vocab, "rotary_pct": 0.25,
            "tie_word_embeddings": False, "use_parallel_residual": True}


def _hub_cache(root) -> None:
    """config.json of each Pythia repo laid out as the hub cache holds it after a fetch."""
    for name, shape in PYTHIA.items():
        repo = root / f"models--EleutherAI--pythia-{name}"
        snap = repo / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps(_config(*shape)))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)


def _job_resources(text: str, rule: str) -> list[dict]:
    """Per job of ``rule`` in a dry run's printout: its wildcards and resources."""
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        if not re.match(rf"(localrule|rule) {rule}:", block):
            continue
        wc = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"wildcards: (.*)", block)[1]))
        res = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"resources: (.*)", block)[1]))
        inp = re.search(r"input: (.*)", block)
        out.append({**wc, **res, "input": inp[1] if inp else ""})
    return out


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_pythia_dry_run_plan(tmp_path, device):
    """``auto`` on this GPU-less machine plans CPU jobs; ``cuda`` (a GPU box, or planning
    for one) gives every measuring job gpu=1, which the profile caps at 1 GPU."""
    cache = tmp_path / "hub"
    _hub_cache(cache)
    (tmp_path / "proj").mkdir()
    proj = copy_workflow(ROOT, tmp_path / "proj", suite="pythia")
    cfg = yaml.safe_load((proj / "params.yaml").read_text())
    cfg["suites"]["pythia"]["extract"]["disk_budget_gb"] = BUDGET_GB
    cfg["suites"]["pythia"]["extract"]["device"] = device
    (proj / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "16", "--quiet",
                        "host"], cwd=proj, env=env, capture_output=True, text=True,
                       timeout=600)  # --quiet host: the job blocks the profile hides
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    extract = _job_resources(text, "extract_checkpoint")
    downloads = _job_resources(text, "download")
    assert len(extract) == 333 and len(downloads) == 333
    # resources from each model's parameter count, within the suite's memory budget: the
    # 12b job (24 GB of float16 weights) is measured layer by layer, in the budget
    ext = cfg["suites"]["pythia"]["extract"]
    per_model = {j["model"]: int(j["mem_mb"]) for j in extract}
    plan_12b = extract_plan(_config(*PYTHIA["12b"]), ext)
    assert needs_layerwise(_config(*PYTHIA["12b"]), ext["dtype"], ext["batch_size"],
                           ext["seq_len"], ext["max_memory_gb"])
    assert not needs_layerwise(_config(*PYTHIA["6.9b"]), ext["dtype"], ext["batch_size"],
                               ext["seq_len"], ext["max_memory_gb"])
    assert per_model["pythia-12b"] == plan_12b["mem_mb"] < 24e9 / 2**20  # a 24 GB machine
    assert plan_12b["mem_mb"] < extract_plan(_config(*PYTHIA["12b"]),
                                             {**ext, "max_memory_gb": None})["mem_mb"]
    assert per_model["pythia-14m"] < per_model["pythia-1b"] < per_model["pythia-12b"]
    assert all(int(j["runtime"]) >= 1 for j in extract)
    if device == "auto":  # no GPU visible here
        assert all(j["gpu"] == "0" and j["gpu_mem_mb"] == "0" for j in extract)
    else:  # one GPU per model, the GPU memory its weights and batch need; at most one at once
        assert all(j["gpu"] == "1" for j in extract)
        assert {j["model"]: int(j["gpu_mem_mb"]) for j in extract}["pythia-12b"] == \
            plan_12b["gpu_mem_mb"] < 24e9 / 2**20
        profile = yaml.safe_load((proj / "profiles" / "default" / "config.yaml").read_text())
        assert "gpu=1" in profile["resources"]
    # downloads: one after another, each waiting for what the disk budget requires
    order = [(m["name"], s) for m in cfg["suites"]["pythia"]["models"]
             for s in cfg["suites"]["pythia"]["analyse_steps"]]
    first = next(d for d in downloads if (d["model"], d["step"]) == ("pythia-14m", "1"))
    assert "downloads/pythia-14m/step0.json" in first["input"]
    gb = {m: extract_plan(_config(*PYTHIA[m.split("-")[1]]), {})["download_gb"]
          for m, _ in order}
    sizes = [gb[m] for m, _ in order]
    windows = download_windows(sizes, BUDGET_GB)
    assert max(sizes) < BUDGET_GB and peak_disk_gb(sizes, windows) <= BUDGET_GB
    i12 = order.index(("pythia-12b", 1000))
    gated = next(d for d in downloads if (d["model"], d["step"]) == ("pythia-12b", "1000"))
    assert f"stats/{order[windows[i12]][0]}/step{order[windows[i12]][1]}.parquet" in \
        gated["input"]
    assert sum(gb[m] for m, _ in order) > 10 * BUDGET_GB  # unbounded, the schedule would not fit


def test_download_size_from_the_stored_dtype():
    """A revision's size on disk: its parameters in the dtype config.json names (Pythia:
    torch_dtype float16; transformers 5 writes dtype), unrounded, so that a checkpoint of
    a few hundred kB still counts against a budget."""
    cfg = _config(2, 32, 2, 300)
    n = 44672  # architecture.architecture's count for this shape
    assert extract_plan(cfg, {})["download_gb"] == pytest.approx(n * 2 / 1e9)
    assert extract_plan({**cfg, "torch_dtype": "float16"}, {})["download_gb"] == \
        pytest.approx(n * 2 / 1e9)
    assert extract_plan({**cfg, "dtype": "float32"}, {})["download_gb"] == \
        pytest.approx(n * 4 / 1e9)
    sizes = [extract_plan({**cfg, "dtype": "float32"}, {})["download_gb"]] * 5
    assert download_windows(sizes, 2.5 * n * 4 / 1e9) == [-1, -1, 0, 1, 2]
