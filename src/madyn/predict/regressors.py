"""Regressors of the prediction phase, their hyperparameter grids, CV selection and metrics.

Model types (one regressor per transformed target ``target_*`` of the feature table):

* ``mean``: ``DummyRegressor`` (the training mean), the floor every predictor must beat;
* ``ridge``: ``StandardScaler`` + ``Ridge`` (``RidgeCV`` over ``ridge_alphas`` by efficient
  leave-one-out unless an alpha is given);
* ``rf``: ``RandomForestRegressor`` (n_jobs=1, fixed seed);
* ``xgb``: ``xgboost.XGBRegressor`` (tree_method hist, n_jobs=1, fixed random_state);
* ``ols``: statsmodels ``OLS`` with a constant (pinv solve).

Metrics with undefined values (R^2 with < 2 points or constant truth) are NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from madyn.settings import PredictSettings

MODEL_TYPES = ("mean", "ridge", "rf", "xgb", "ols")


class OLSRegressor:
    """statsmodels OLS with a constant, behind a fit/predict interface."""

    def __init__(self) -> None:
        self.results_ = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> OLSRegressor:
        import statsmodels.api as sm

        Xc = sm.add_constant(np.asarray(X, float), has_constant="add")
        with warnings.catch_warnings():  # after the import: statsmodels adds "always" filters
            warnings.simplefilter("ignore")
            self.results_ = sm.OLS(np.asarray(y, float), Xc).fit()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        import statsmodels.api as sm

        Xc = sm.add_constant(np.asarray(X, float), has_constant="add")
        return np.asarray(self.results_.predict(Xc), float)


def make_model(kind: str, settings: PredictSettings, seed: int | None = None, **params: Any):
    """An unfitted regressor of ``kind`` (see :data:`MODEL_TYPES`) with settings defaults."""
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = settings.seed if seed is None else seed
    if kind == "mean":
        return DummyRegressor(strategy="mean")
    if kind == "ridge":
        reg = (Ridge(alpha=params["alpha"]) if "alpha" in params
               else RidgeCV(alphas=list(settings.ridge_alphas)))
        return make_pipeline(StandardScaler(), reg)
    if kind == "rf":
        return RandomForestRegressor(n_estimators=settings.rf_n_estimators, n_jobs=1,
                                     random_state=seed, max_depth=params.get("max_depth"))
    if kind == "xgb":
        return _xgb_class()(
            n_estimators=settings.xgb_n_estimators,
            max_depth=params.get("max_depth", settings.xgb_max_depth),
            learning_rate=params.get("learning_rate", settings.xgb_learning_rate),
            tree_method="hist", n_jobs=1, random_state=seed, verbosity=0)
    if kind == "ols":
        return OLSRegressor()
    raise ValueError(f"unknown model type {kind!r}; known: {MODEL_TYPES}")


_XGB_CLASS: list = []


def _xgb_class():
    """``xgboost.XGBRegressor`` fed a plain ``DMatrix``: its default ``QuantileDMatrix``
    costs ~50 ms per fit on tiny tables (same trees here, ~7x faster overall)."""
    if not _XGB_CLASS:
        import xgboost

        class XGBRegressorDM(xgboost.XGBRegressor):
            def _create_dmatrix(self, ref, **kwargs):
                return xgboost.DMatrix(**kwargs, nthread=self.n_jobs)

        _XGB_CLASS.append(XGBRegressorDM)
    return _XGB_CLASS[0]


def grid_of(kind: str, s: PredictSettings) -> list[dict]:
    """Small hyperparameter grids of the study protocol's CV."""
    if kind == "ridge":
        return [{"alpha": a} for a in s.ridge_alphas]
    if kind == "rf":
        return [{"max_depth": None}, {"max_depth": 3}]
    if kind == "xgb":
        return [{"max_depth": d, "learning_rate": lr}
                for d in sorted({2, s.xgb_max_depth})
                for lr in sorted({s.xgb_learning_rate, 2 * s.xgb_learning_rate})]
    return [{}]


def fit_predict(kind: str, s: PredictSettings, Xtr: np.ndarray, ytr: np.ndarray,
                 Xte: np.ndarray, seed: int | None = None, **params: Any) -> np.ndarray:
    """Predictions of ``kind`` trained on (Xtr, ytr), clipped to the range of ``ytr``.

    The clip guards every model type alike against extrapolating a (transformed) parameter
    beyond anything observed: linear models on a handful of models otherwise predict
    combinations whose curves overflow (trees and the mean never leave the range)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = make_model(kind, s, seed=seed, **params).fit(Xtr, ytr)
        pred = np.asarray(m.predict(Xte), float)
    return np.clip(pred, np.nanmin(ytr), np.nanmax(ytr))


def cv_select(kind: str, s: PredictSettings, X: np.ndarray, y: np.ndarray
               ) -> tuple[dict, float]:
    """(best params, their mean CV MSE) by shuffled, seeded K-fold on (X, y)."""
    from sklearn.model_selection import KFold

    grid = grid_of(kind, s)
    k = min(s.cv_folds, len(y))
    if k < 2:
        return grid[0], math.nan
    folds = list(KFold(n_splits=k, shuffle=True, random_state=s.seed).split(X))
    best, best_mse = grid[0], math.inf
    for params in grid:
        errs = [np.mean((fit_predict(kind, s, X[tr], y[tr], X[va], **params) - y[va]) ** 2)
                for tr, va in folds]
        mse = float(np.mean(errs))
        if mse < best_mse:  # strict: ties keep the earlier (simpler) grid point
            best, best_mse = params, mse
    return best, best_mse


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """R^2 (NaN with < 2 points or constant truth), MAE and RMSE."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if len(y) == 0:
        return {"r2": math.nan, "mae": math.nan, "rmse": math.nan, "n": 0}
    err = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum(err ** 2)) / ss_tot if len(y) >= 2 and ss_tot > 0 else math.nan
    return {"r2": r2, "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err ** 2))), "n": int(len(y))}
