"""Predict a design's per-layer curves in curve space, on time relative to its schedule, from
tens of designs; choose the predictor by nested leave-one-design-out. No file I/O.

A suite enters as, per model, its observed curves of one quantity (steps (S,), relative
depths (L,), L x S values: :func:`madyn.predict.forecast.layer_curves`), its design label
(the models of one design differ only by seed) and a row of numeric design features
(:func:`model_features`). Each (model, layer) becomes one row: its relative depth
(layer + 1) / L and its log curve on a fixed grid of relative time u = step / last step
(:data:`GRID_V`: uniform on v = log(1 + 1000 u), 0 <= u <= 1; linear interpolation in v).

Predictors (:data:`KINDS`), all giving a row's log curve on the grid:

* ``mean_log`` (the baseline): at the row's depth, the training models' log curves
  interpolated in depth, averaged over the seeds of a design and then over designs;
* ``kernel_ridge``: ``mean_log`` plus kernel ridge regression (RBF) of the row's residual
  from it on the standardised features (depth, depth^2 and the design features); alpha and
  gamma by grouped K-fold over the training designs;
* ``gp``: the residual's leading principal components by a Gaussian process (constant x
  ARD RBF + white noise, its hyperparameters by marginal likelihood); a design far from
  every training design falls back to the mean curve;
* ``eb_shrink``: a hierarchical, empirical-Bayes model: the seeds of a design are averaged
  into one design row per layer; the residuals' leading principal components are each
  regressed on the standardised features by Bayesian ridge (evidence-maximised
  shrinkage of the coefficients toward zero, i.e. of the curve toward the mean curve);
* ``xgb``: XGBoost (the study's model) on the same principal-component scores.

Evaluation (:func:`lodo`): leave one design out (all its seeds); the held-out models'
predicted curves are mapped back onto their observed steps and scored against the observed
values (curve R^2 per layer, relative error of the final value). ``nested`` is the
model-selection procedure itself: inside each outer fold, grouped K-fold over the remaining
designs picks the kind with the smallest log-space error, which then predicts the held-out
design (it never sees that design).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from madyn.predict.curves import curve_scores, interp_depth
from madyn.predict.forecast import REL_SCALE, rel_axis

KINDS = ("mean_log", "kernel_ridge", "gp", "eb_shrink", "xgb")
N_GRID = 24
GRID_V = np.linspace(0.0, float(np.log1p(REL_SCALE)), N_GRID)
GRID_U = np.expm1(GRID_V) / REL_SCALE
INNER_FOLDS = 3
GP_MAXITER = 50
N_COMPONENTS = 4
KRR_ALPHAS = (0.1, 1.0, 10.0)
KRR_GAMMAS = (0.3, 1.0, 3.0)  # times 1 / n_features


# ---------------------------------------------------------------------------- features

SCHEDULES = ("cosine", "linear", "constant")


def model_features(config: dict, last_step: float, recipe: dict | None = None
                   ) -> dict[str, float]:
    """A model's design features (NaN where unknown): its shape (log2 width, log2 depth,
    heads per width, MLP ratio, rotary fraction, log10 parameters), block layout and
    optimiser (:func:`madyn.predict.features.design_features`), and its schedule: log10 of
    the planned last step, warmup fraction, schedule shape (one-hot), weight decay,
    log10(1 - beta2), log2 batch size and BOS (0/1), from ``recipe`` (keys as a suite's
    train section: warmup, schedule, weight_decay, beta2, batch_size, bos), over the
    config's design record."""
    from madyn.architecture import DESIGN_KEY, architecture, design
    from madyn.predict.features import design_features

    arch = architecture(config)
    rec = {**(config.get(DESIGN_KEY) or {}), **(recipe or {})}
    d, L = float(arch["hidden_size"]), float(arch["num_hidden_layers"])
    out = {"x_log2_width": math.log2(d), "x_log2_layers": math.log2(L),
           "x_heads_per_width": float(arch["num_attention_heads"]) / d,
           "x_ff_ratio": float(arch["intermediate_size"]) / d,
           "x_rotary": float(arch.get("rotary_pct", 1.0)),
           "x_log_params": math.log10(float(arch["n_params"]))}
    axes = design(config)
    if rec.get("lr") is not None:
        axes["lr"] = float(rec["lr"])
    if rec.get("optimizer"):
        axes["optimizer"] = str(rec["optimizer"])
    if rec.get("eps") is not None:
        axes["eps"] = float(rec["eps"])
    if axes["optimizer"] == "adamw" and not math.isfinite(axes["eps"]):
        axes["eps"] = 1e-8  # torch's AdamW default, which madyn's trainer uses
    out.update({"x_" + k[2:]: v for k, v in design_features(axes).items()})
    out["x_log_steps"] = math.log10(max(float(last_step), 1.0))

    def num(key: str, fn=float) -> float:
        v = rec.get(key)
        try:
            return fn(v) if v is not None else math.nan
        except (TypeError, ValueError):
            return math.nan

    warm = num("warmup")
    out["x_warmup_frac"] = warm / max(float(last_step), 1.0) if math.isfinite(warm) else math.nan
    sched = rec.get("schedule")
    for s in SCHEDULES:
        out[f"x_sched_{s}"] = (float(sched == s) if sched else math.nan)
    out["x_weight_decay"] = num("weight_decay")
    b2 = num("beta2")
    out["x_log_1m_beta2"] = math.log10(1 - b2) if math.isfinite(b2) and b2 < 1 else math.nan
    bs = num("batch_size")
    out["x_log2_batch"] = math.log2(bs) if math.isfinite(bs) and bs > 0 else math.nan
    bos = rec.get("bos")
    out["x_bos"] = float(bool(bos)) if bos is not None else math.nan
    return out


def usable_features(features: pd.DataFrame, models: list[str]) -> list[str]:
    """The feature columns known (finite) for every one of ``models`` and varying
    between them."""
    f = features.loc[models]
    return [c for c in features.columns if c.startswith("x_")
            and np.isfinite(f[c].to_numpy(float)).all() and f[c].nunique() > 1]


# ---------------------------------------------------------------------------- rows

@dataclass
class DesignData:
    """One quantity of a suite, as rows: ``models``/``designs``/``depth``/``layer`` (n,),
    ``Y`` (n, N_GRID) log curves on :data:`GRID_U`, ``X`` the models' feature frame
    (index model); ``curves``: model -> (steps, depths, L x S values), the observed."""

    models: np.ndarray
    designs: np.ndarray
    layer: np.ndarray
    depth: np.ndarray
    Y: np.ndarray
    X: pd.DataFrame
    curves: dict
    design_of: dict = field(default_factory=dict)

    def subset(self, keep: np.ndarray) -> DesignData:
        return DesignData(self.models[keep], self.designs[keep], self.layer[keep],
                          self.depth[keep], self.Y[keep], self.X, self.curves, self.design_of)

    def rows_of_designs(self, designs) -> np.ndarray:
        return np.isin(self.designs, list(designs))


def log_on_grid(steps: np.ndarray, values: np.ndarray, last_step: float) -> np.ndarray:
    """A positive curve (values at ``steps``) as log values on :data:`GRID_U` (linear in
    v = log(1 + 1000 u), u = step / ``last_step``; clamped at the ends)."""
    with np.errstate(all="ignore"):
        return np.interp(GRID_V, rel_axis(np.asarray(steps, float) / last_step),
                         np.log(np.asarray(values, float)))


def design_data(curves: dict, designs: dict[str, str], features: pd.DataFrame
                ) -> DesignData:
    """Rows of every layer whose curve is finite and positive throughout. ``curves``:
    model -> (steps, depths, L x S values); ``designs``: model -> design label (default:
    the model's own name); ``features``: index model, columns ``x_*``."""
    rows = []
    for m in sorted(curves):
        steps, depths, vals = curves[m]
        last = float(np.max(steps))
        for la, dep in enumerate(depths):
            v = vals[la]
            if not (np.isfinite(v).all() and (v > 0).all()):
                continue
            rows.append((m, designs.get(m, m), la, float(dep), log_on_grid(steps, v, last)))
    if not rows:
        raise ValueError("no layer with a finite, positive curve")
    ms, ds, ls, dp, ys = zip(*rows, strict=True)
    return DesignData(np.array(ms), np.array(ds), np.array(ls, int), np.array(dp, float),
                      np.stack(ys), features, curves,
                      {m: designs.get(m, m) for m in curves})


# ---------------------------------------------------------------------------- predictors

def mean_log_curves(train: DesignData, depths: np.ndarray) -> np.ndarray:
    """(len(depths), N_GRID): per training model its log curves interpolated at
    ``depths``, averaged over a design's models, then over designs."""
    per_design: dict[str, list[np.ndarray]] = {}
    for m in np.unique(train.models):
        sel = train.models == m
        order = np.argsort(train.depth[sel])
        c = interp_depth(train.depth[sel][order], train.Y[sel][order], depths)
        per_design.setdefault(str(train.designs[sel][0]), []).append(c)
    return np.mean([np.mean(v, axis=0) for v in per_design.values()], axis=0)


def _design_matrix(data: DesignData, cols: list[str]) -> np.ndarray:
    """(n, 2 + len(cols)): depth, depth^2 and the rows' models' features."""
    f = data.X.loc[data.models, cols].to_numpy(float) if cols else np.zeros((len(data.models), 0))
    return np.column_stack([data.depth, data.depth ** 2, f])


class Predictor:
    """One of :data:`KINDS`, fitted on training rows; ``predict(X_rows_frame, depths)``."""

    def __init__(self, kind: str, seed: int = 0, xgb_params: dict | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown predictor {kind!r}; known: {KINDS}")
        self.kind, self.seed, self.xgb_params = kind, seed, dict(xgb_params or {})
        self.params: dict = {}

    def fit(self, train: DesignData) -> Predictor:
        self.train = train
        self.cols = usable_features(train.X, sorted(set(train.models)))
        if self.kind == "mean_log":
            return self
        base = mean_log_curves(train, train.depth)
        R = train.Y - base
        Z = _design_matrix(train, self.cols)
        self.mu, self.sd = Z.mean(0), Z.std(0)
        self.sd[self.sd == 0] = 1.0
        Zs = (Z - self.mu) / self.sd
        from threadpoolctl import threadpool_limits

        # one BLAS thread: these are small matrices, and threads cost 10x on a busy machine
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            getattr(self, f"_fit_{self.kind}")(Zs, R, train)
        return self

    def predict(self, features: pd.DataFrame, depths: np.ndarray) -> np.ndarray:
        """(n, N_GRID) log curves for rows of ``features`` (one row per query row, columns
        including :attr:`cols`) at relative ``depths``."""
        depths = np.asarray(depths, float)
        base = mean_log_curves(self.train, depths)
        if self.kind == "mean_log":
            return base
        f = features[self.cols].to_numpy(float) if self.cols else np.zeros((len(depths), 0))
        Zs = (np.column_stack([depths, depths ** 2, f]) - self.mu) / self.sd
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = base + getattr(self, f"_predict_{self.kind}")(Zs)
        # never beyond what any training curve reached at that time (as the parameter
        # predictors are clipped): a linear model far outside the designs seen overflows
        return np.clip(out, self.train.Y.min(0), self.train.Y.max(0))

    # kernel ridge -----------------------------------------------------------------
    def _fit_kernel_ridge(self, Zs, R, train):
        from sklearn.kernel_ridge import KernelRidge

        p = max(Zs.shape[1], 1)
        grid = [(a, g / p) for a in KRR_ALPHAS for g in KRR_GAMMAS]
        designs = np.unique(train.designs)
        folds = _folds(designs, INNER_FOLDS, self.seed)
        best, best_err = grid[0], math.inf
        if len(folds) >= 2:
            for a, g in grid:
                err = 0.0
                for held in folds:
                    te = np.isin(train.designs, held)
                    m = KernelRidge(alpha=a, kernel="rbf", gamma=g).fit(Zs[~te], R[~te])
                    err += float(np.sum((m.predict(Zs[te]) - R[te]) ** 2))
                if err < best_err:
                    best, best_err = (a, g), err
        self.params = {"alpha": best[0], "gamma": best[1]}
        self.model = KernelRidge(alpha=best[0], kernel="rbf", gamma=best[1]).fit(Zs, R)

    def _predict_kernel_ridge(self, Zs):
        return self.model.predict(Zs)

    # Gaussian process --------------------------------------------------------------
    def _fit_gp(self, Zs, R, train):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        p = Zs.shape[1]
        S = self._pca(R)
        kernel = (ConstantKernel(float(np.var(S)) or 1.0, (1e-4, 1e3))
                  * RBF(np.full(p, 2.0), (1e-1, 1e3)) + WhiteKernel(0.1, (1e-5, 1e1)))
        self.model = GaussianProcessRegressor(kernel, normalize_y=False, random_state=self.seed,
                                              optimizer=_lbfgs, n_restarts_optimizer=0
                                              ).fit(Zs, S)
        self.params = {"kernel": str(self.model.kernel_)}

    def _predict_gp(self, Zs):
        S = np.asarray(self.model.predict(Zs)).reshape(len(Zs), -1)
        return self.r_mean + S @ self.comps

    # empirical-Bayes shrinkage -----------------------------------------------------
    def _pca(self, R):
        self.r_mean = R.mean(0)
        _, _, vt = np.linalg.svd(R - self.r_mean, full_matrices=False)
        self.comps = vt[:min(N_COMPONENTS, len(vt))]
        return (R - self.r_mean) @ self.comps.T

    def _fit_eb_shrink(self, Zs, R, train):
        from sklearn.linear_model import BayesianRidge

        key = pd.Series([f"{d}\x00{la}" for d, la in zip(train.designs, train.layer,
                                                           strict=True)])
        codes, uniq = pd.factorize(key)
        Za = np.stack([Zs[codes == i].mean(0) for i in range(len(uniq))])
        Ra = np.stack([R[codes == i].mean(0) for i in range(len(uniq))])
        S = self._pca(Ra)
        self.models = [BayesianRidge().fit(Za, S[:, j]) for j in range(S.shape[1])]
        self.params = {"shrinkage": [float(m.alpha_ / (m.alpha_ + m.lambda_))
                                     for m in self.models]}

    def _predict_eb_shrink(self, Zs):
        S = np.column_stack([m.predict(Zs) for m in self.models])
        return self.r_mean + S @ self.comps

    # XGBoost -----------------------------------------------------------------------
    def _fit_xgb(self, Zs, R, train):
        from madyn.predict.regressors import _xgb_class

        S = self._pca(R)
        kw = {"n_estimators": 300, "max_depth": 3, "learning_rate": 0.05, **self.xgb_params}
        self.models = [_xgb_class()(tree_method="hist", n_jobs=1, random_state=self.seed,
                                    verbosity=0, **kw).fit(Zs, S[:, j])
                       for j in range(S.shape[1])]

    def _predict_xgb(self, Zs):
        S = np.column_stack([m.predict(Zs) for m in self.models])
        return self.r_mean + S @ self.comps


def _lbfgs(obj_func, initial_theta, bounds):
    """L-BFGS-B on the GP's log marginal likelihood, at most :data:`GP_MAXITER` steps."""
    from scipy.optimize import minimize

    res = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds,
                   options={"maxiter": GP_MAXITER})
    return res.x, res.fun


def _folds(designs: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Designs split into min(k, n) shuffled groups (seeded)."""
    d = np.array(sorted(designs))
    if len(d) < 2:
        return []
    rng = np.random.default_rng(seed)
    d = d[rng.permutation(len(d))]
    return [g for g in np.array_split(d, min(k, len(d))) if len(g)]


def fit_predict(kind: str, train: DesignData, test: DesignData, seed: int = 0,
                xgb_params: dict | None = None) -> np.ndarray:
    """``kind`` fitted on ``train`` -> (len(test rows), N_GRID) log curves of ``test``."""
    p = Predictor(kind, seed, xgb_params).fit(train)
    return p.predict(test.X.loc[test.models], test.depth)


def select_kind(train: DesignData, kinds: tuple[str, ...], seed: int = 0,
                xgb_params: dict | None = None) -> tuple[str, dict[str, float]]:
    """The kind with the smallest mean squared log-curve error under grouped K-fold over
    ``train``'s designs (each design's rows weighted equally); and every kind's error."""
    folds = _folds(np.unique(train.designs), INNER_FOLDS, seed)
    errs = {}
    for kind in kinds:
        tot = []
        for held in folds:
            te = train.rows_of_designs(held)
            pred = fit_predict(kind, train.subset(~te), train.subset(te), seed, xgb_params)
            e = np.mean((pred - train.Y[te]) ** 2, axis=1)
            per = pd.Series(e).groupby(train.designs[te]).mean()
            tot.extend(per.tolist())
        errs[kind] = float(np.mean(tot)) if tot else math.inf
    best = min(kinds, key=lambda k: (errs[k], kinds.index(k)))
    return best, errs


# ---------------------------------------------------------------------------- scoring

def curve_on_steps(logc: np.ndarray, steps: np.ndarray, last_step: float) -> np.ndarray:
    """A grid log curve (N_GRID,) as raw values at ``steps`` of a schedule ending at
    ``last_step``."""
    return np.exp(np.interp(rel_axis(np.asarray(steps, float) / last_step), GRID_V, logc))


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
