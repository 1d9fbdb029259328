"""A suite's models generated from a declared design space (params.yaml ``design_space``).

The space names axes (a range, linear or log, or a list of choices), how many designs to
draw, how many of them to train with several seeds, and a space-filling sampler with a
fixed seed (``scipy.stats.qmc``: Latin hypercube or scrambled Sobol). :func:`expand` turns
it into concrete model entries, the same on every machine: design ``i`` is row ``i`` of
the sampler's unit-cube draw, each axis reading its own column.

An axis may hold only for some designs (``when: {family: neox}``: GPT-NeoX's parallel
residual and rotary fraction); elsewhere the model keeps its default. ``warmup_fraction``
is the warmup as a fraction of the design's ``steps``. The checkpoint schedule follows
each design's own ``steps``: ``log_until`` then ``checkpoints`` evenly spaced ones.
"""

from __future__ import annotations

import math
from typing import Any

# axes that are not model-entry keys: derived from the design's other values
DERIVED = ("warmup_fraction",)


def _unit_draw(n: int, d: int, method: str, seed: int):
    """n x d points in [0, 1): a scrambled Sobol sequence's first n, or a Latin hypercube."""
    if method == "sobol":
        import warnings

        from scipy.stats import qmc

        with warnings.catch_warnings():  # n need not be a power of two here
            warnings.simplefilter("ignore", UserWarning)
            return qmc.Sobol(d, scramble=True, seed=seed).random(n)
    return latin_hypercube(n, d, seed)


def latin_hypercube(n: int, d: int, seed: int):
    """n x d Latin hypercube points in [0, 1): ``scipy.stats.qmc.LatinHypercube(d,
    seed=seed).random(n)`` (scrambled, strength 1) to the bit, written out here because
    importing ``scipy.stats`` costs about 1 s, paid at every check of params.yaml (each
    Snakemake start and DVC stage); a test compares the two."""
    import numpy as np

    rng = np.random.default_rng(seed)
    within = rng.uniform(size=(n, d))  # where in its stratum each point lies
    strata = np.tile(np.arange(1, n + 1), (d, 1))
    for i in range(d):
        rng.shuffle(strata[i, :])
    return (strata.T - within) / n


def _value(axis: dict, u: float) -> Any:
    """The axis's value at the unit coordinate ``u`` in [0, 1)."""
    if "choices" in axis:
        c = axis["choices"]
        return c[min(int(u * len(c)), len(c) - 1)]
    lo, hi = axis["range"]
    if axis.get("scale", "linear") == "log":
        x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:
        x = lo + u * (hi - lo)
    if axis.get("integer"):
        return int(round(x))
    return float(f"{x:.3g}")  # three significant digits: readable, and what was trained


def _applies(axis: dict, design: dict) -> bool:
    return all(design.get(k) in (v if isinstance(v, list) else [v])
               for k, v in axis.get("when", {}).items())


def _short(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def design_name(i: int, d: dict) -> str:
    """A readable, deterministic name: index, family, depth x width, peak lr, steps
    (e.g. ``a07-llama-l4w64-lr3e-3-t600``)."""
    parts = [f"a{i:02d}"]
    if "family" in d:
        parts.append(str(d["family"]))
    if "layers" in d and "width" in d:
        parts.append(f"l{d['layers']}w{d['width']}")
    if "lr" in d:
        parts.append(f"lr{_short(d['lr'])}")
    if "steps" in d:
        parts.append(f"t{d['steps']}")
    return "-".join(parts)


def designs(space: dict) -> list[dict]:
    """The ``n_designs`` design points of ``space`` (axis values, each a dict with its
    ``design`` label), in the sampler's order."""
    axes = space["axes"]
    names = list(axes)  # the YAML's order: a column per axis, whether or not it applies
    s = space["sampler"]
    u = _unit_draw(space["n_designs"], len(names), s["method"], s["seed"])
    out = []
    for i, row in enumerate(u):
        d: dict = {}
        # unconditional axes first, so that a `when` can read any of them
        for pass_ in (False, True):
            for j, name in enumerate(names):
                axis = axes[name]
                if ("when" in axis) == pass_ and _applies(axis, d):
                    d[name] = _value(axis, float(row[j]))
        if "warmup_fraction" in d:
            d["warmup"] = max(1, int(round(d.pop("warmup_fraction") * d["steps"])))
        d["design"] = design_name(i, d)
        out.append(d)
    return out


def _schedule(space: dict, steps: int) -> dict:
    """A design's checkpoint schedule: powers of two up to ``log_until``, then every
    ``steps / checkpoints`` steps (at least 1)."""
    c = space["checkpoints"]
    return {"log_until": c["log_until"], "every": max(1, steps // c["count"])}


def expand(space: dict) -> list[dict]:
    """The model entries of ``space``: every design with seed 0, then the first
    ``seeded_designs`` designs again with seeds 1 .. ``seeds`` - 1. Names are the design's
    label plus ``-s{seed}``. A design without a ``steps`` axis gets no schedule keys (the
    suite's ``train`` schedule applies)."""
    models = []
    points = designs(space)
    for seed in range(space["seeds"]):
        chosen = points if seed == 0 else points[:space["seeded_designs"]]
        for d in chosen:
            entry = {"name": f"{d['design']}-s{seed}", **d, "seed": seed}
            if "steps" in d:
                entry.update(_schedule(space, d["steps"]))
            models.append(entry)
    return models


def check(space: dict) -> list[str]:
    """What the schema cannot say about ``space``, one message per problem, each naming
    its key under ``design_space``: ranges in order (positive for a log scale), at most
    ``n_designs`` seeded designs, ``when`` naming a choices axis, ``warmup_fraction``
    needing a ``steps`` axis."""
    bad = []
    axes = space["axes"]
    for name, a in axes.items():
        if "range" in a:
            lo, hi = a["range"]
            if not lo < hi:
                bad.append(f"axes.{name}.range: {lo} is not below {hi}")
            if a.get("scale") == "log" and lo <= 0:
                bad.append(f"axes.{name}.range: a log scale needs a positive lower end")
        for k in a.get("when", {}):
            if k not in axes or "choices" not in axes[k] or "when" in axes[k]:
                bad.append(f"axes.{name}.when: {k!r} is not an unconditional choices axis")
    if "warmup_fraction" in axes and "steps" not in axes:
        bad.append("axes.warmup_fraction: needs a steps axis")
    if "warmup" in axes and "warmup_fraction" in axes:
        bad.append("axes.warmup: give warmup or warmup_fraction, not both")
    if space["seeded_designs"] > space["n_designs"]:
        bad.append(f"seeded_designs: {space['seeded_designs']} exceeds n_designs "
                   f"{space['n_designs']}")
    return bad


def table(models: list[dict]) -> str:
    """The expanded models as a text table (``madyn check --suite``): one row per model,
    one column per key any model has."""
    cols = ["name"] + sorted({k for m in models for k in m} - {"name", "design"})
    rows = [[_cell(m.get(c, "")) for c in cols] for m in models]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, *body])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
