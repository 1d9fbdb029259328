"""What several test modules share (constants and builders); fixtures are in conftest.py.

Test modules import from here, never from conftest.py or from one another.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.curves import hypotheses
from madyn.train.training import ModelSpec, TrainSpec, checkpoint_steps, model_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT / "profiles/slurm/local-cluster.sh"  # the local SLURM cluster
SLURM_STOP_FILE = "MADYN_TEST_SLURM_STOP"  # env: the file whose presence says "stop SLURM"

TINY_TRAIN = TrainSpec(steps=12, batch_size=4, seq_len=32, lr=1e-2, warmup=2,
                       min_lr_ratio=0.1, weight_decay=0.0, beta1=0.9, beta2=0.95, seed=0,
                       log_until=4, every=5)
TINY_MODEL = ModelSpec(name="tiny", layers=2, width=32, heads=2)

# sha256 of the tiny model's final weights (TINY_MODEL / TINY_TRAIN, 1 thread) under the
# pinned kernel paths (madyn.kernels, which conftest sets), by CPU vendor: the same under
# every instruction set forced on one machine (tests/test_reproducibility.py), but not the
# same on an Intel and an AMD processor (measured on an AVX-512 Xeon and an AVX-512 EPYC,
# docs/reproducibility.md). The machine's own kernels give a hash per instruction set
# (e44d6938... on the Xeon; fa21a421..., 868b9b38..., c7842a18... for avx512, avx2,
# default on the EPYC). Tests compare with the entry of the machine's vendor where there is
# one, and always with the same recipe trained beside it, so none passes or fails by the
# machine.
PINNED_SHA256 = {
    "GenuineIntel": "b23377c8d5096c8c8ab8a28031d7d0980f3d9d1d13f0e31926c21ce98c2cba2b",
    "AuthenticAMD": "c62f4587b142aa4922a6d4c4ac6c5db29fa7c5f420ff7d5022d94cb389509a3f",
}


def cpu_vendor() -> str | None:
    """The processor's vendor string (``GenuineIntel``, ``AuthenticAMD``) from
    /proc/cpuinfo, or None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("vendor_id")), None)


# six models whose fits the synthetic fit table holds
SYNTHETIC_SUITE = [ModelSpec("l2-w32-h2", 2, 32, 2), ModelSpec("l2-w64-h4", 2, 64, 4),
                   ModelSpec("l4-w64-h4", 4, 64, 4), ModelSpec("l4-w128-h4", 4, 128, 4),
                   ModelSpec("l6-w96-h6", 6, 96, 6), ModelSpec("l8-w64-h8", 8, 64, 8)]
STEPS = np.array(checkpoint_steps(1200, 64, 100), float)


def neox_config(spec: ModelSpec) -> dict:
    """The config.json (GPT-NeoX) of ``spec``, as the suite's trainer writes it."""
    return model_config(spec, vocab_size=512, seq_len=128, eot_id=0).to_dict()


def _true_params(spec: ModelSpec, layer: int) -> list[float]:
    """Original-form parameters, smooth in relative depth r and width d."""
    r = (layer + 1) / spec.layers
    d = spec.width
    return [4.0 + 6.0 * r * (1 - r) + d / 64,           # A
            0.3 + 0.8 * (1 - r) ** 2,                    # lambda
            0.004 * (1 + 0.5 * r) * (64 / d) ** 0.3,     # gamma (1 / steps)
            1.2 + r,                                     # t0
            3.0 + 12.0 * r + 4.0 * np.log(d / 32)]       # K


def synthetic_fit_table(fail: tuple[str, int] | None = ("l8-w64-h8", 7)
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A fit table (original + reparam rows per layer) and observed series (with flags)."""
    orig, rep = hypotheses.get("original"), hypotheses.get("reparam")
    from madyn.curves.hypotheses import original_to_reparam

    rng = np.random.default_rng(0)
    rows, series = [], []
    for spec in SYNTHETIC_SUITE:
        for layer in range(spec.layers):
            p = np.array(_true_params(spec, layer))
            y = orig.func(STEPS, *p)
            obs = y * (1 + 0.01 * rng.standard_normal(len(STEPS)))
            flagged = np.zeros(len(STEPS), bool)
            flagged[3] = True
            obs[3] *= 5  # a corrupted checkpoint, flagged
            series.append(pd.DataFrame({"model": spec.name, "step": STEPS.astype(int),
                                        "layer": layer, "quantity": "ratio", "value": obs,
                                        "flagged": flagged}))
            for hyp, pp, winner in ((orig, p, True), (rep, original_to_reparam(p), False)):
                ok = not (hyp.name == "original" and fail == (spec.name, layer))
                pk = hyp.peak_step(pp)
                rows.append({
                    "model": spec.name, "quantity": "ratio", "layer": layer,
                    "n_layers": spec.layers, "hypothesis": hyp.name, "family": "emlog",
                    "n": len(STEPS), "k": 5, "r2": 0.99 if winner else 0.98, "aic": -10.0,
                    "aicc": -9.0, "bic": -8.0, "akaike_weight": 0.7 if winner else 0.3,
                    "is_winner": winner, "success": ok, "reason": "" if ok else "max_nfev",
                    "param_names": json.dumps(list(hyp.param_names)),
                    "popt": json.dumps([float(v) for v in pp] if ok else [None] * 5),
                    "perr": json.dumps([0.0] * 5), "asymptote": float(pp[-1]),
                    "final_value": float(obs[-1]), "peak_step": pk,
                    "peak_in_range": bool(np.isfinite(pk) and pk < STEPS[-1]),
                    "last_step": int(STEPS[-1])})
    return pd.DataFrame(rows), pd.concat(series, ignore_index=True)
