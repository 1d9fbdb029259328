"""The same trained weights on every x86-64 machine: `madyn step train` (what the Snakemake rule
runs) under each instruction set this machine offers, forced as if it were another machine's
best (torch's ATEN_CPU_CAPABILITY, MKL's MKL_ENABLE_INSTRUCTIONS, oneDNN's DNNL_MAX_CPU_ISA,
glibc's hwcaps), trains the tiny model to one recorded hash (madyn.kernels)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from madyn import kernels
from madyn.train.training import spec_record, train_record
from tests.helpers import PINNED_SHA256, ROOT, TINY_MODEL, TINY_TRAIN, cpu_vendor

# an emulated machine: its best instruction set for each library (ceilings, not requests)
MACHINES = {
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "DNNL_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "DNNL_MAX_CPU_ISA": "AVX2", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "DNNL_MAX_CPU_ISA": "SSE41",
                "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA,-AVX"},
}
LEVELS = ["DEFAULT", "AVX2", "AVX512"]  # torch's names, lowest first


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in kernels.PINNED and k != kernels.MODE}
    return {**env, **extra, "OMP_NUM_THREADS": "1"}


def _offered() -> list[str]:
    """The emulated machines this one can play: its own best level and those below."""
    best = subprocess.run(
        [sys.executable, "-c",
         "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=_clean_env(), capture_output=True, text=True, check=True).stdout.split()[-1]
    top = LEVELS.index(best) if best in LEVELS else 0
    return [m for m, level in zip(MACHINES, ["AVX512", "AVX2", "DEFAULT"], strict=True)
            if LEVELS.index(level) <= top]


def _train_cli(corpus_dir, out, env: dict[str, str]) -> dict:
    explicit = dataclasses.replace(TINY_TRAIN, optimizer="adamw", eps=1e-8, momentum=0.9)
    spec = dataclasses.replace(TINY_MODEL, family="neox", parallel_residual=True)
    subprocess.run([sys.executable, "-m", "madyn.cli", "step", "train",
                    "--spec-json", json.dumps(spec_record(spec)),
                    "--train-json", json.dumps(train_record(explicit)),
                    "--corpus", str(corpus_dir), "--out", str(out), "--threads", "1"],
                   env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads((out / "manifest.json").read_text())


def test_every_forced_instruction_set_trains_the_same_weights(corpus_dir, tmp_path):
    machines = _offered()
    assert "default" in machines  # every x86-64 machine plays at least the portable one
    got = {}
    for m in machines:
        man = _train_cli(corpus_dir, tmp_path / m,
                         _clean_env(**MACHINES[m], **{kernels.MODE: "pinned"}))
        assert man["kernels"] == {"pinned": True, "cpu_capability": "DEFAULT",
                                  **kernels.PINNED}, m
        got[m] = man["weights_sha256"][str(TINY_TRAIN.steps)]
    assert len(set(got.values())) == 1, got  # one hash under every instruction set
    assert got["default"] == PINNED_SHA256.get(cpu_vendor(), got["default"])  # the vendor's


def test_native_kernels_are_recorded_as_such(corpus_dir, tmp_path):
    """The default (native kernels) trains with the machine's own kernels and says so in
    the manifest."""
    man = _train_cli(corpus_dir, tmp_path, _clean_env(**MACHINES["default"]))
    assert man["kernels"]["pinned"] is False
    assert man["kernels"]["MKL_CBWR"] is None


def test_pinning_after_torch_is_imported_is_refused():
    code = ("import torch, os; os.environ['ATEN_CPU_CAPABILITY'] = 'avx2'\n"
            "from madyn import kernels\n"
            "try:\n    kernels.pin_environment()\nexcept RuntimeError as e:\n"
            "    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(
        ATEN_CPU_CAPABILITY="avx2", **{kernels.MODE: "pinned"}), capture_output=True,
        text=True, check=True).stdout
    assert out.startswith("refused madyn.kernels.pin_environment: torch is already imported")


def test_not_strict_pinning_leaves_an_unpinned_torch_alone():
    """What madyn.cli.main does in a process that imported torch first: no error, no
    change (torch would ignore it; the manifest says pinned: false)."""
    code = ("import torch, os\n"
            "from madyn import kernels\nkernels.pin_environment(strict=False)\n"
            "print(os.environ.get('MKL_CBWR'), torch.backends.cpu.get_cpu_capability())\n")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(
        ATEN_CPU_CAPABILITY="avx2", **{kernels.MODE: "pinned"}), capture_output=True,
        text=True, check=True).stdout
    assert out.split() == ["None", "AVX2"]


@pytest.mark.parametrize("mode", [None, "native", "pinned"])
def test_pin_environment_sets_the_three_variables_when_asked(mode):
    env = {"ATEN_CPU_CAPABILITY": "avx512", **({kernels.MODE: mode} if mode else {})}
    before = dict(env)
    kernels.pin_environment(env)
    assert env == ({**kernels.PINNED, kernels.MODE: "pinned"} if mode == "pinned" else before)


@pytest.mark.slow
def test_the_headline_holds_under_every_instruction_set(tmp_path):
    """What the docs claim of the default (native) kernels across machines: the embedded
    suite trained and analysed under each instruction set this machine offers gives a
    headline within MACHINE_TOLERANCE of the committed one (about 8 min per instruction
    set on 2 cores)."""
    from madyn.report.headline import outside_tolerance
    from tests.isa_headline import COMMITTED, headline_on

    committed = json.loads(COMMITTED.read_text())
    for m in _offered():
        doc, _ = headline_on(m, tmp_path / m)
        assert outside_tolerance(committed, doc) == [], m


def test_machine_tolerance_names_what_moves():
    from madyn.report.headline import outside_tolerance, tolerance

    ref = json.loads((ROOT / "results/embedded/metrics/headline.json").read_text())
    assert outside_tolerance(ref, ref) == []
    assert tolerance("suite.n_models") == ("abs", 0.0)
    moved = json.loads(json.dumps(ref))
    moved["suite"]["n_models"] += 1
    moved["growth"]["ratio_mid_mean"] *= 1.5
    bad = outside_tolerance(ref, moved)
    assert [b.split(":")[0] for b in bad] == ["growth.ratio_mid_mean", "suite.n_models"]
    del moved["interventions"]
    assert any(b.startswith("interventions.kurtosis_cos_sim_rho: ")
               for b in outside_tolerance(ref, moved))
