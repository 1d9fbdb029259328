"""The embedded suite's headline as other x86-64 machines would compute it: the whole
workflow (`snakemake --cores 2`, native kernels, the default) in a scratch copy under each
instruction set this machine offers, forced as in tests/test_reproducibility.py. Used by
the slow test there, and run by hand to measure the spread the docs state:

    python tests/isa_headline.py [--machines avx2 default] [--keep DIR]

prints each headline metric per emulated machine next to the committed one, and which lie
outside :data:`madyn.report.headline.MACHINE_TOLERANCE`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from madyn import kernels  # noqa: E402
from madyn.report.headline import flatten, outside_tolerance  # noqa: E402
from madyn.workflow.scratch_project import copy_workflow  # noqa: E402
from tests.test_reproducibility import MACHINES, _offered  # noqa: E402

COMMITTED = ROOT / "results" / "embedded" / "metrics" / "headline.json"


def machine_env(machine: str) -> dict[str, str]:
    """The environment of an emulated machine: its instruction-set ceilings, madyn's
    native kernels (nothing pinned) and this venv's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in kernels.PINNED}
    env.update(MACHINES[machine])
    env[kernels.MODE] = "native"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def headline_on(machine: str, work: Path, cores: int = 2) -> tuple[dict, float]:
    """The embedded suite's headline trained and analysed from scratch in ``work`` as
    ``machine`` would; and the wall seconds it took."""
    work.mkdir(parents=True, exist_ok=True)
    proj = copy_workflow(ROOT, work, suite="embedded")
    t0 = time.monotonic()
    r = subprocess.run(["snakemake", "--cores", str(cores)], cwd=proj,
                       env=machine_env(machine), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"snakemake under {machine} failed:\n{r.stderr[-3000:]}")
    doc = json.loads((proj / "results" / "embedded" / "metrics" / "headline.json").read_text())
    return doc, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", nargs="+", default=None, choices=list(MACHINES),
                    help="emulated machines (default: every one this machine offers)")
    ap.add_argument("--keep", type=Path, help="work under this folder and keep it")
    args = ap.parse_args()
    machines = args.machines or _offered()
    base = args.keep or Path(tempfile.mkdtemp(prefix="madyn-isa-"))
    reference = json.loads(COMMITTED.read_text())
    committed = flatten(reference)
    got = {}
    for m in machines:
        doc, secs = headline_on(m, base / m)
        got[m] = flatten(doc)
        print(f"{m}: {secs / 60:.1f} min; outside the tolerance: "
              f"{outside_tolerance(reference, doc) or 'none'}",
              flush=True)
    print("| metric | committed | " + " | ".join(machines) + " |")
    print("|---|---|" + "---|" * len(machines))
    for k, v in committed.items():
        print(f"| `{k}` | {v} | " + " | ".join(str(got[m].get(k)) for m in machines) + " |")


if __name__ == "__main__":
    main()
