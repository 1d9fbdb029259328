"""Benchmark of the fitting phase on the study's workload (synthetic series).

Nine Pythia models (188 layers: 6, 6, 12, 24, 16, 24, 32, 32, 36) x 3 quantities x every
registered hypothesis, 39 checkpoints per series (steps 0, 1, 2, 4, ..., 512, then 28 steps
spread up to 143000). Series are drawn from known reparam / original parameters (shallow
layers peak early and decay, middle layers still grow) with 5 % multiplicative noise, and
fitted in a process pool over (model, layer), as the workflow parallelises.

Run: ``python benchmarks/fit.py [--workers 2] [--models 9]``. Target: <= 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool

import numpy as np

from madyn.curves.fit import fit_series
from madyn.curves.hypotheses import get
from madyn.settings import FitSettings

LAYERS = {"14m": 6, "31m": 6, "70m": 12, "160m": 24, "410m": 16, "1b": 24, "1.4b": 32,
          "2.8b": 32, "6.9b": 36}  # 188 layers, as in the study
QUANTITIES = ("ratio", "top1", "median")
STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
                 + list(np.linspace(1000, 143000, 28).round(-3).astype(int)), float)


def synthetic_series(seed: int, depth: float, noise: float = 0.05
                     ) -> tuple[np.ndarray, str, np.ndarray]:
    """One series (39 values) from random reparam/original parameters at relative depth
    ``depth`` in [0, 1]; returns values, generating hypothesis and its raw parameters."""
    rng = np.random.default_rng(seed)
    edge = depth < 0.15 or depth > 0.9
    beta = 10 ** rng.uniform(0.5, 1.7) if edge else rng.uniform(0.0, 1.0)  # normalised decay
    tau0 = 10 ** rng.uniform(-6, -3.5)  # normalised: 0.14 .. 45 steps
    a1 = 10 ** rng.uniform(0, 2)
    a2 = a1 * (-np.log(tau0) + rng.uniform(-1, 0.5))
    p_n = np.array([a1, a2, beta, tau0, 10 ** rng.uniform(0.5, 1.5)])
    h = get("reparam")
    p = h.to_raw(p_n, STEPS[-1], 0.0, 1.0)
    y = h.func(STEPS, *p)
    return y * (1 + noise * rng.standard_normal(len(y))), "reparam", p


def _task(args: tuple[str, int, int, int]) -> list[tuple[float, float, int, float, float]]:
    """Fit the three quantities of one layer; per quantity (best emlog R^2, winner R^2,
    successful fits, CPU seconds, R^2 of the generating curve itself)."""
    model, layer, n_layers, seed = args
    out = []
    settings = FitSettings()
    for qi, _ in enumerate(QUANTITIES):
        y, name, p = synthetic_series(seed * 10 + qi, (layer + 0.5) / n_layers)
        truth = get(name).func(STEPS, *p)
        oracle = 1 - np.sum((y - truth) ** 2) / np.sum((y - y.mean()) ** 2)
        cpu = time.process_time()
        res = fit_series(STEPS, y, settings)
        cpu = time.process_time() - cpu
        emlog = [r.r2 for r in res if r.success and r.hypothesis in ("original", "reparam")]
        win = [r.r2 for r in res if r.is_winner]
        out.append((max(emlog, default=np.nan), win[0] if win else np.nan,
                    sum(r.success for r in res), cpu, oracle))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", type=int, default=len(LAYERS))
    a = ap.parse_args()
    tasks = []
    for mi, (model, n) in enumerate(list(LAYERS.items())[: a.models]):
        tasks += [(model, layer, n, 1000 * mi + layer) for layer in range(n)]
    n_hyp = len(FitSettings().hypotheses)
    t0 = time.perf_counter()
    with Pool(a.workers) as pool:
        res = [x for chunk in pool.imap_unordered(_task, tasks, chunksize=4) for x in chunk]
    dt = time.perf_counter() - t0
    best = np.array([r[0] for r in res])
    win = np.array([r[1] for r in res])
    n_fits = len(res) * n_hyp
    print(f"layers {len(tasks)}, series {len(res)}, hypotheses {n_hyp}, fits {n_fits} "
          f"({sum(r[2] for r in res)} succeeded), workers {a.workers}")
    cpu = sum(r[3] for r in res)
    print(f"total {dt:.1f} s wall, {n_fits / dt:.1f} fits/s, {len(res) / dt:.1f} series/s; "
          f"CPU {cpu:.1f} s in fits ({1000 * cpu / len(res):.0f} ms/series, "
          f"{cpu / a.workers:.1f} s per worker if the cores are free)")
    print(f"mean best R^2 (best of original/reparam) {np.nanmean(best):.4f}, "
          f"min {np.nanmin(best):.4f}; mean AICc-winner R^2 {np.nanmean(win):.4f}; "
          f"generating curve R^2 {np.mean([r[4] for r in res]):.4f} "
          f"(min {np.min([r[4] for r in res]):.4f})")


if __name__ == "__main__":
    main()
