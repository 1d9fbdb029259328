"""Pinned CPU kernel paths: the same floats from the same job on every x86-64 machine of one
vendor (an Intel and an AMD processor still differ: docs/reproducibility.md).

torch's own CPU kernels (ATen), MKL (matrix products) and oneDNN (GELU) each pick a code
path by the processor's instruction set, so unpinned training gives different weights on
an AVX-512 Xeon, an AVX-512 EPYC and an AVX2 machine, and a measurement of the same
checkpoint differs in the last bits. madyn's entry points (``madyn ...``, every Snakemake
job, the tests) set :data:`PINNED` before torch is imported:

- ``ATEN_CPU_CAPABILITY=default``: ATen's portable kernels, which every x86-64 CPU runs;
- ``MKL_CBWR=COMPATIBLE``: MKL's reproducible SSE2 branch, the one branch MKL documents as
  identical on Intel and non-Intel processors (``AVX2`` is ignored on AMD);
- ``DNNL_MAX_CPU_ISA=SSE41``: oneDNN's kernels at an instruction set every x86-64 CPU has.

With one thread per job (``threads: 1``, the default) the tiny model of the tests trains
the same weights under every instruction set forced on one machine, Intel or AMD, one hash
per vendor (docs/reproducibility.md;
``tests/test_reproducibility.py``). Pinned kernels cost 3.8x training and 3.5x measuring
time on a 2-core Xeon, so they are opt-in: ``MADYN_KERNELS=pinned`` (the test session sets
it); the default, ``native``, leaves the kernels to the machine (the weights then depend on
the CPU; every manifest records which). The variables must be set before torch is
imported: torch reads ``ATEN_CPU_CAPABILITY`` once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "DNNL_MAX_CPU_ISA": "SSE41",
}
MODE = "MADYN_KERNELS"  # "pinned": set PINNED; "native" (the default): the machine's own
DEFAULT_MODE = "native"


def wanted(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether kernels are to be pinned (``MADYN_KERNELS=pinned``)."""
    environ = os.environ if environ is None else environ
    return environ.get(MODE, DEFAULT_MODE) == "pinned"


def pin_environment(environ: MutableMapping[str, str] | None = None,
                    strict: bool = True) -> None:
    """Set :data:`PINNED` in ``environ`` (default: this process's, inherited by its
    subprocesses), replacing other values, when :func:`wanted`.

    When torch is already imported in this process with other settings (torch has chosen
    its kernel path and would ignore them): RuntimeError if ``strict``, else nothing is
    changed (a manifest then records ``pinned: false``)."""
    target = os.environ if environ is None else environ
    if not wanted(target):
        return
    if environ is None and "torch" in sys.modules and not in_effect():
        if not strict:
            return
        raise RuntimeError("madyn.kernels.pin_environment: torch is already imported with "
                           f"other kernel settings; set {PINNED} before importing torch")
    target.update(PINNED)


def in_effect() -> bool:
    """Whether this process runs the pinned kernel paths (imports torch)."""
    import torch

    return (torch.backends.cpu.get_cpu_capability() == "DEFAULT"
            and all(os.environ.get(k) == v for k, v in PINNED.items()))


def record() -> dict:
    """The kernel settings in effect, for a manifest: ``pinned``, torch's reported CPU
    capability and the three variables (imports torch)."""
    import torch

    return {"pinned": in_effect(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{k: os.environ.get(k) for k in PINNED}}
