"""Leave-one-design-out of the curve-space predictors
(:mod:`madyn.predict.design_predictors`) on a suite's rows
(:class:`madyn.predict.design_curves.DesignData`, n rows of (N_GRID,) log curves).

:func:`lodo` leaves one design out (all its seeds); the held-out models' predicted curves
are mapped back onto their observed steps and scored against the observed values (curve
R^2 per layer, relative error of the final value, log10 error of the peak step).
``nested`` is the model-selection procedure itself: inside each outer fold, grouped K-fold
over the remaining designs picks the kind with the smallest log-space error, which then
predicts the held-out design (it never sees that design). :func:`winner` is that
selection applied to every design; :func:`sample_efficiency` the error on unseen designs
against the number of training designs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from madyn.predict.curves import curve_scores
from madyn.predict.design_curves import GRID_U, DesignData, curve_on_steps
from madyn.predict.design_predictors import KINDS, fit_predict, select_kind

# ---------------------------------------------------------------------------- scoring

def score_rows(data: DesignData, keep: np.ndarray, pred: np.ndarray) -> list[dict]:
    """Curve R^2 and final-value relative error of each kept row's prediction (log grid
    curves ``pred``, one per kept row) against its observed curve."""
    out = []
    idx = np.flatnonzero(keep)
    for i, p in zip(idx, pred, strict=True):
        m, la = str(data.models[i]), int(data.layer[i])
        steps, _, vals = data.curves[m]
        last = float(np.max(steps))
        c = curve_on_steps(p, steps, last)
        peak = float(GRID_U[int(np.argmax(p))] * last)
        sc = curve_scores(np.asarray(steps, float), vals[la], c, peak)
        out.append({"model": m, "design": str(data.designs[i]), "layer": la,
                    "r2": sc["r2"], "final_rel_err": sc["final_rel_err"],
                    "peak_log10_err": sc["peak_log10_err"],
                    "log_mse": float(np.mean((p - data.Y[i]) ** 2))})
    return out


def summarise(rows: pd.DataFrame) -> dict:
    """Median over layers of curve R^2, mean and median final-value relative error,
    median peak error, layers and designs."""
    def stat(col, fn):
        v = rows[col].to_numpy(float)
        v = v[np.isfinite(v)]
        return float(fn(v)) if len(v) else math.nan

    return {"r2_median": stat("r2", np.median), "r2_mean": stat("r2", np.mean),
            "final_rel_err_mean": stat("final_rel_err", np.mean),
            "final_rel_err_median": stat("final_rel_err", np.median),
            "peak_log10_err_median": stat("peak_log10_err", np.median),
            "n_layers": int(len(rows)), "n_designs": int(rows["design"].nunique())}


# ---------------------------------------------------------------------------- LODO

def _outer_fold(held: str, data: DesignData, kinds: tuple[str, ...], nested: bool,
                seed: int, xgb_params: dict | None) -> tuple[list[dict], dict, np.ndarray]:
    """One outer fold: every kind's (and, ``nested``, the selected kind's) scored rows for
    the held-out design, the selection, and the held-out rows' predictions of the
    selection (nested) or of the first kind."""
    te = data.rows_of_designs([held])
    train, test = data.subset(~te), data.subset(te)
    rows, preds = [], {}
    for kind in kinds:
        preds[kind] = fit_predict(kind, train, test, seed, xgb_params)
        rows += [{**r, "kind": kind} for r in score_rows(data, te, preds[kind])]
    sel: dict = {}
    if nested:
        best, errs = select_kind(train, kinds, seed, xgb_params)
        sel = {"design": held, "chosen": best, "inner_log_mse": errs}
        rows += [{**r, "kind": "nested"} for r in score_rows(data, te, preds[best])]
    return rows, sel, preds[sel.get("chosen", kinds[0])]


def lodo(data: DesignData, kinds: tuple[str, ...] = KINDS, nested: bool = True,
         seed: int = 0, workers: int = 1, xgb_params: dict | None = None
         ) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Leave-one-design-out of every kind (and the nested selection): the scored rows
    (model, design, layer, kind, r2, final_rel_err, ...), the summary (per kind:
    :func:`summarise`; ``selections``: per outer fold the chosen kind), and (n, N_GRID)
    held-out predictions of every row by the nested selection (``nested``) or by
    ``kinds[0]``."""
    from functools import partial

    from madyn.parallel import map_ordered

    designs = sorted(set(data.designs.tolist()))
    if len(designs) < 3:
        raise ValueError(f"{len(designs)} design(s): leave-one-design-out needs at least 3")
    one = partial(_outer_fold, data=data, kinds=tuple(kinds), nested=nested, seed=seed,
                  xgb_params=xgb_params)
    out = map_ordered(one, designs, workers)
    table = pd.DataFrame([r for rows, _, _ in out for r in rows])
    held_pred = np.full(data.Y.shape, np.nan)
    for d, (_, _, p) in zip(designs, out, strict=True):
        held_pred[data.rows_of_designs([d])] = p
    summary = {k: summarise(g) for k, g in table.groupby("kind", sort=False)}
    doc = {"kinds": list(kinds), "per_kind": summary, "n_designs": len(designs),
           "n_models": int(len(set(data.models.tolist()))), "n_layers": int(len(data.Y))}
    if nested:
        doc["selections"] = [s for _, s, _ in out]
        counts = pd.Series([s["chosen"] for s in doc["selections"]]).value_counts()
        doc["chosen_counts"] = {str(k): int(v) for k, v in counts.items()}
    return table, doc, held_pred


def winner(data: DesignData, kinds: tuple[str, ...] = KINDS, seed: int = 0,
           xgb_params: dict | None = None) -> tuple[str, dict[str, float]]:
    """The kind to use on all designs: the selection the nested leave-one-design-out
    scores, applied to every design (:func:`select_kind`); its honest error is that of
    ``nested``, not the winner's own outer score (chosen after seeing it)."""
    return select_kind(data, kinds, seed, xgb_params)


# ---------------------------------------------------------------------------- efficiency

def sample_efficiency(data: DesignData, kinds: tuple[str, ...], sizes=(8, 16, 32),
                      repeats: int = 3, seed: int = 0, workers: int = 1,
                      xgb_params: dict | None = None) -> pd.DataFrame:
    """Error on unseen designs against the number of training designs: for each held-out
    design and each size n in ``sizes`` (below the number of other designs; plus all of
    them), ``repeats`` random subsets of n other designs (seeded) train each kind. Rows:
    n_train, kind, and :func:`summarise`'s numbers over all held-out layers and repeats."""
    from functools import partial

    from madyn.parallel import map_ordered

    designs = sorted(set(data.designs.tolist()))
    n_all = len(designs) - 1
    ns = sorted({n for n in sizes if 2 <= n < n_all} | {n_all})
    one = partial(_efficiency_fold, data=data, kinds=tuple(kinds), ns=tuple(ns),
                  repeats=repeats, seed=seed, xgb_params=xgb_params, designs=designs)
    rows = [r for part in map_ordered(one, designs, workers) for r in part]
    table = pd.DataFrame(rows)
    out = []
    for (n, kind), g in table.groupby(["n_train", "kind"], sort=True):
        out.append({"n_train": int(n), "kind": kind, **summarise(g)})
    return pd.DataFrame(out)


def _efficiency_fold(held: str, data: DesignData, kinds, ns, repeats, seed, xgb_params,
                     designs) -> list[dict]:
    others = [d for d in designs if d != held]
    te = data.rows_of_designs([held])
    test = data.subset(te)
    rows = []
    for n in ns:
        reps = 1 if n == len(others) else repeats
        for r in range(reps):
            rng = np.random.default_rng([seed, designs.index(held), n, r])
            pick = others if n == len(others) else list(rng.choice(others, n, replace=False))
            train = data.subset(data.rows_of_designs(pick))
            for kind in kinds:
                pred = fit_predict(kind, train, test, seed, xgb_params)
                rows += [{**x, "kind": kind, "n_train": n, "repeat": r}
                         for x in score_rows(data, te, pred)]
    return rows
