"""The curve-space predictors of a design's per-layer curves (:data:`KINDS`), each fitted
on training rows (:class:`madyn.predict.design_curves.DesignData`) and giving a row's log
curve on the relative-time grid (N rows -> an (N, N_GRID) array of log values):

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

:func:`select_kind` picks the kind with the smallest log-space error under grouped K-fold
over the training designs (:data:`INNER_FOLDS` folds).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from madyn.predict.curves import interp_depth
from madyn.predict.design_curves import DesignData, usable_features

KINDS = ("mean_log", "kernel_ridge", "gp", "eb_shrink", "xgb")
INNER_FOLDS = 3
GP_MAXITER = 50
N_COMPONENTS = 4
KRR_ALPHAS = (0.1, 1.0, 10.0)
KRR_GAMMAS = (0.3, 1.0, 3.0)  # times 1 / n_features


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
