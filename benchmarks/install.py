"""`make install`'s two ways, measured side by side in one run: pip for everything (as
before) against pip for torch and uv for the rest (the Makefile now). Each builds a new
virtual environment from this checkout's pyproject.toml and constraints.txt, with empty
package caches (what a fresh machine has), then checks that both hold the same packages
at the same versions. Prints wall seconds and the ratio.

    python benchmarks/install.py [--torch torch==2.13.0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ".[dev,slurm,docs]"


def _run(cmd: list[str], env: dict) -> None:
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")


def pip_way(venv: Path, torch: str, env: dict) -> None:
    """The former Makefile recipe: pip for torch, then pip for madyn and its tools."""
    py = str(venv / "bin" / "python")
    _run(["python3", "-m", "venv", str(venv)], env)
    _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], env)
    _run([py, "-m", "pip", "install", "-q", torch], env)
    _run([py, "-m", "pip", "install", "-q", "-c", "constraints.txt", "-e", EXTRAS], env)


def uv_way(venv: Path, torch: str, env: dict) -> None:
    """The Makefile's recipe: pip for torch (a wheel on this disk) and uv, uv for the rest."""
    py = str(venv / "bin" / "python")
    _run(["python3", "-m", "venv", str(venv)], env)
    _run([py, "-m", "pip", "install", "-q", torch, "uv==0.13.9"], env)
    _run([str(venv / "bin" / "uv"), "pip", "install", "-q", "--compile-bytecode",
          "--python", py, "-c", "constraints.txt", "-e", EXTRAS], env)


def import_seconds(venv: Path, repeats: int = 3) -> float:
    """Median wall seconds of a job's imports (pandas, scikit-learn, Snakemake, madyn's
    extract stage) in ``venv``: a venv without compiled bytecode pays ~3x here at every
    job's start (this machine sets PYTHONDONTWRITEBYTECODE, so Python never caches it)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import pandas, sklearn, snakemake, madyn.stages.extract"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def freeze(venv: Path) -> set[str]:
    """name==version of every distribution in ``venv`` (pip and uv themselves left out)."""
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print('\\n'.join(sorted("
                          "f\"{d.metadata['Name'].lower().replace('_', '-')}=={d.version}\" "
                          "for d in m.distributions())))"],
                         capture_output=True, text=True, check=True).stdout
    return {x for x in out.split() if x.split("==")[0] not in ("pip", "uv", "setuptools")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", default="torch==2.13.0")
    ap.add_argument("--keep", help="build the environments here and keep them")
    args = ap.parse_args()
    where = Path(args.keep or tempfile.mkdtemp(prefix="madyn-install-"))
    where.mkdir(parents=True, exist_ok=True)
    times, venvs = {}, {}
    try:
        for name, way in (("pip", pip_way), ("uv", uv_way)):
            cache = where / f"cache-{name}"
            env = {**os.environ, "PIP_CACHE_DIR": str(cache / "pip"),
                   "UV_CACHE_DIR": str(cache / "uv")}
            venvs[name] = where / f"venv-{name}"
            t = time.perf_counter()
            way(venvs[name], args.torch, env)
            times[name] = time.perf_counter() - t
            print(f"{name:4s} {times[name]:6.1f} s wall", flush=True)
        a, b = freeze(venvs["pip"]), freeze(venvs["uv"])
        if a != b:
            raise SystemExit(f"the two environments differ: pip only {sorted(a - b)}, "
                             f"uv only {sorted(b - a)}")
        print(f"same {len(a)} packages at the same versions; "
              f"pip / uv = {times['pip'] / times['uv']:.1f}x")
        imp = {name: import_seconds(v) for name, v in venvs.items()}
        print(f"a job's imports: pip {imp['pip']:.2f} s, uv {imp['uv']:.2f} s")
        if imp["uv"] > 1.5 * imp["pip"]:
            raise SystemExit("uv's environment starts jobs slower: bytecode not compiled?")
    finally:
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
