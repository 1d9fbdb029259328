"""Feature table: from a model's architecture (a Hugging Face ``config.json``) and the fit
phase's tidy table to one row per (model, layer) with engineered features and the fitted
parameters of one parametrisation, transformed into regression targets.

Layer index convention: ``layer`` is 0-based everywhere (as in the fit table); the features
use the 1-based position ``l = layer + 1``, so the relative depth ``l / L`` lies in
``(0, 1]`` (the last layer is 1, the first 1/L > 0, which keeps ``sqrt`` and powers
well-behaved) and the interaction is ``l * L``.

Targets (paper-method.md section 4): for ``original``, A, lambda, gamma and t0 through
``log1p`` and K through Yeo-Johnson (scipy's maximum-likelihood lambda, fitted once over
the usable rows of the table and stored in the table's ``attrs["transforms"]`` and the
Parquet metadata, so predictions can be mapped back). For ``reparam`` the analogues are:
beta and tau0 (non-negative rates / offsets) through ``log1p``; A1, A2 and K (any sign)
through Yeo-Johnson.

``log1p`` is applied sign-symmetrically, ``sign(v) log1p(|v|)``: identical to the study's
``log1p`` for v >= 0 (lambda, gamma, t0, beta, tau0 are bounded below by 0 in the fits) and
invertible for a negative amplitude instead of leaving the domain. The transforms are fixed
table-wide (a reparametrisation of the target space, fitted on targets, never on features);
LOMO and the random split evaluate in this one space. The ``_reg`` variants of both
parametrisations use the same transforms (chosen by parameter names).

Rows whose chosen fit failed (``success`` false, no fit of that hypothesis, unreadable or
non-finite parameters) stay in the table with ``usable = False`` and the reason in
``exclude_reason``; predictors train only on usable rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from madyn.architecture import ARCH_COLUMNS, architecture, design
from madyn.io import atomic_path

FEATURE_COLUMNS = ["f_depth", "f_depth2", "f_depth3", "f_sqrt_depth", "f_heads_per_d",
                   "f_ff_ratio", "f_d_per_layer", "f_heads_per_layer", "f_log_d",
                   "f_l_times_L", "f_log_params"]

# Design axes: the training recipe (learning rate, Adam epsilon, optimiser) and
# the block layout (norm placement, QK-norm, parallel residual, gated MLP). 0/1 indicators;
# NaN where the model's config does not say (a hub model's recipe): the predictors then
# leave that feature out (see :func:`feature_columns`).
DESIGN_FEATURES = ["f_log_lr", "f_log_eps", "f_sgd", "f_post_norm", "f_qk_norm",
                   "f_parallel_residual", "f_gated_mlp"]
# SGD counts as Adam with eps = 1: Adam's step m / (sqrt(v) + eps) turns into SGD with
# momentum once eps dominates sqrt(v), so SGD is the large-eps end of that axis
SGD_LOG_EPS = 0.0



# Column -> kind ("str", "int", "float", "bool"); parameter columns are added per
# parametrisation by :func:`feature_schema`.
FEATURE_SCHEMA: dict[str, str] = {
    "model": "str", "layer": "int", "n_layers": "int",
    **{c: ("float" if c == "rotary_pct" else "int") for c in ARCH_COLUMNS},
    **{c: "float" for c in FEATURE_COLUMNS},
    "design": "str", **{c: "float" for c in DESIGN_FEATURES},
    "parametrisation": "str", "quantity": "str",
    "fit_success": "bool", "fit_r2": "float", "winner": "str", "winner_r2": "float",
    "final_value": "float", "peak_step": "float", "peak_in_range": "bool",
    "last_step": "int", "usable": "bool", "exclude_reason": "str",
}

_KIND_CHECK = {
    "str": pd.api.types.is_string_dtype,
    "int": pd.api.types.is_integer_dtype,
    "float": pd.api.types.is_float_dtype,
    "bool": pd.api.types.is_bool_dtype,
}
_META_KEY = b"madyn_feature_table"


class SchemaError(ValueError):
    """A feature table with a missing or mistyped column."""


# ----------------------------------------------------------------------------- design

def design_features(axes: dict) -> dict[str, float]:
    """:data:`DESIGN_FEATURES` of :func:`design`'s axes: log10 lr, log10 eps (SGD:
    :data:`SGD_LOG_EPS`), and 0/1 indicators; NaN where the axis is unknown."""
    opt = axes["optimizer"]
    lr, eps = axes["lr"], axes["eps"]
    log_eps = (SGD_LOG_EPS if opt == "sgd"
               else math.log10(eps) if math.isfinite(eps) and eps > 0 else math.nan)
    return {"f_log_lr": math.log10(lr) if math.isfinite(lr) and lr > 0 else math.nan,
            "f_log_eps": log_eps,
            "f_sgd": {"sgd": 1.0, "adamw": 0.0}.get(opt, math.nan),
            "f_post_norm": float(axes["norm"] == "post"),
            "f_qk_norm": float(axes["qk_norm"]),
            "f_parallel_residual": float(axes["parallel_residual"]),
            "f_gated_mlp": float(axes["gated_mlp"])}



# ----------------------------------------------------------------------------- features

def layer_features(arch: dict, layer: int) -> dict[str, float]:
    """Engineered features of one layer (0-based ``layer``; see module docstring)."""
    L = int(arch["num_hidden_layers"])
    if not 0 <= layer < L:
        raise ValueError(f"layer {layer} outside 0..{L - 1}")
    d, h = float(arch["hidden_size"]), float(arch["num_attention_heads"])
    r = (layer + 1) / L
    return {"f_depth": r, "f_depth2": r ** 2, "f_depth3": r ** 3, "f_sqrt_depth": math.sqrt(r),
            "f_heads_per_d": h / d, "f_ff_ratio": float(arch["intermediate_size"]) / d,
            "f_d_per_layer": d / L, "f_heads_per_layer": h / L, "f_log_d": math.log(d),
            "f_l_times_L": float((layer + 1) * L),
            "f_log_params": math.log(float(arch["n_params"]))}


def feature_frame(arch: dict, model: str = "new", axes: dict | None = None
                  ) -> pd.DataFrame:
    """Architecture, shape-feature and design-feature columns for every layer of one model
    (one row per layer); ``axes``: :func:`design` (None: every design feature NaN)."""
    feats = design_features(axes) if axes else dict.fromkeys(DESIGN_FEATURES, math.nan)
    rows = []
    for layer in range(int(arch["num_hidden_layers"])):
        rows.append({"model": model, "layer": layer, "n_layers": int(arch["num_hidden_layers"]),
                     **{c: arch[c] for c in ARCH_COLUMNS}, **layer_features(arch, layer),
                     **feats})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- transforms

def yeojohnson_inverse(y: np.ndarray, lmbda: float) -> np.ndarray:
    """Inverse of scipy's Yeo-Johnson transform with parameter ``lmbda``."""
    y = np.asarray(y, dtype=float)
    x = np.empty_like(y)
    pos = y >= 0
    with np.errstate(over="ignore", invalid="ignore"):
        if abs(lmbda) < 1e-12:
            x[pos] = np.expm1(y[pos])
        else:
            x[pos] = np.power(y[pos] * lmbda + 1, 1 / lmbda) - 1
        if abs(lmbda - 2) < 1e-12:
            x[~pos] = -np.expm1(-y[~pos])
        else:
            x[~pos] = 1 - np.power(-(2 - lmbda) * y[~pos] + 1, 1 / (2 - lmbda))
    return x


def _yeojohnson(x: np.ndarray, lmbda: float) -> np.ndarray:
    from scipy.stats import yeojohnson

    return np.asarray(yeojohnson(np.asarray(x, dtype=float), lmbda=lmbda), dtype=float)


def forward_transform(values: np.ndarray, kind: str, lmbda: float | None = None) -> np.ndarray:
    """Map raw parameter values to the target space."""
    v = np.asarray(values, dtype=float)
    if kind == "log1p":
        return np.sign(v) * np.log1p(np.abs(v))
    if kind == "yeojohnson":
        return _yeojohnson(v, float(lmbda))
    raise ValueError(f"unknown transform {kind!r}")


def inverse_transform(values: np.ndarray, kind: str, lmbda: float | None = None) -> np.ndarray:
    """Map target-space values back to raw parameter values."""
    v = np.asarray(values, dtype=float)
    if kind == "log1p":
        with np.errstate(over="ignore"):
            return np.sign(v) * np.expm1(np.abs(v))
    if kind == "yeojohnson":
        return yeojohnson_inverse(v, float(lmbda))
    raise ValueError(f"unknown transform {kind!r}")


def transforms_for(parametrisation: str) -> dict[str, str]:
    """Parameter -> transform kind of a hypothesis (its ``transforms``: the emlog family);
    ValueError for a hypothesis without target transforms."""
    from madyn.curves import hypotheses

    h = hypotheses.get(parametrisation)
    if not h.transforms:
        with_tr = [n for n in hypotheses.names() if hypotheses.get(n).transforms]
        raise ValueError(f"parametrisation {parametrisation!r} (parameters {h.param_names}) "
                         f"has no target transforms; use one of {with_tr}")
    return dict(h.transforms)


def param_columns(parametrisation: str) -> tuple[list[str], list[str]]:
    """(raw parameter columns ``param_*``, transformed target columns ``target_*``)."""
    names = list(transforms_for(parametrisation))
    return [f"param_{n}" for n in names], [f"target_{n}" for n in names]


def feature_schema(parametrisation: str) -> dict[str, str]:
    """:data:`FEATURE_SCHEMA` plus the parameter and target columns of ``parametrisation``."""
    raw, tgt = param_columns(parametrisation)
    return {**FEATURE_SCHEMA, **{c: "float" for c in raw + tgt}}


# ----------------------------------------------------------------------------- table

def _winners(fit: pd.DataFrame) -> pd.DataFrame:
    w = fit[fit["is_winner"].astype(bool)]
    w = w.sort_values(["model", "layer", "hypothesis"]).drop_duplicates(["model", "layer"])
    return w.set_index(["model", "layer"])[["hypothesis", "r2"]]


def _param_row(row: pd.Series, names: list[str]) -> tuple[dict[str, float], str]:
    """Raw parameters of one fit row, and why the row is unusable ('' when usable)."""
    nan = dict.fromkeys(names, math.nan)
    if not bool(row["success"]):
        return nan, f"fit failed: {row.get('reason') or 'no reason given'}"
    try:
        pn, popt = json.loads(row["param_names"]), json.loads(row["popt"])
    except (TypeError, ValueError):
        return nan, "unreadable param_names/popt"
    if list(pn) != names or len(popt) != len(names):
        return nan, f"param_names {pn} differ from {names}"
    vals = {n: (float(v) if v is not None else math.nan) for n, v in zip(names, popt, strict=True)}
    bad = [n for n, v in vals.items() if not math.isfinite(v)]
    return vals, (f"non-finite parameter(s) {bad}" if bad else "")


def build_feature_table(fit_table: pd.DataFrame, configs: dict[str, dict],
                        parametrisation: str, quantity: str) -> pd.DataFrame:
    """One row per (model, layer) of ``fit_table`` for ``quantity``.

    Columns: :func:`feature_schema` (architecture, features, the chosen parametrisation's
    raw parameters ``param_*`` even when another hypothesis won, targets ``target_*``, fit
    quality, the winner and its r2, final value / peak step / last step of the fit table).
    ``attrs["transforms"]``: per target, its kind and (Yeo-Johnson) lambda.
    """
    names = list(transforms_for(parametrisation))
    fit = fit_table[fit_table["quantity"] == quantity]
    if fit.empty:
        raise ValueError(f"fit table has no rows for quantity {quantity!r}")
    missing_cfg = sorted(set(fit["model"]) - set(configs))
    if missing_cfg:
        raise ValueError(f"no config for model(s) {missing_cfg}")
    winners = _winners(fit)
    chosen = fit[fit["hypothesis"] == parametrisation].set_index(["model", "layer"])
    rows = []
    for model in sorted(fit["model"].unique()):
        arch = architecture(configs[model])
        axes = design(configs[model])
        dfeats = design_features(axes)
        n_fit = set(fit.loc[fit["model"] == model, "n_layers"].astype(int))
        if n_fit != {arch["num_hidden_layers"]}:
            raise ValueError(f"model {model}: fit table says n_layers {sorted(n_fit)}, its "
                             f"config says {arch['num_hidden_layers']}")
        layers = sorted(int(x) for x in fit.loc[fit["model"] == model, "layer"].unique())
        for layer in layers:
            feats = layer_features(arch, layer)
            row: dict[str, Any] = {"model": model, "layer": layer,
                                   "n_layers": arch["num_hidden_layers"],
                                   **{c: arch[c] for c in ARCH_COLUMNS}, **feats,
                                   "design": axes["label"] or model, **dfeats,
                                   "parametrisation": parametrisation, "quantity": quantity}
            w = winners.loc[(model, layer)] if (model, layer) in winners.index else None
            row["winner"] = str(w["hypothesis"]) if w is not None else ""
            row["winner_r2"] = float(w["r2"]) if w is not None else math.nan
            if (model, layer) in chosen.index:
                c = chosen.loc[(model, layer)]
                if isinstance(c, pd.DataFrame):
                    c = c.iloc[0]
                vals, reason = _param_row(c, names)
                row.update(fit_success=bool(c["success"]), fit_r2=_f(c["r2"]),
                           final_value=_f(c["final_value"]), peak_step=_f(c["peak_step"]),
                           peak_in_range=bool(c["peak_in_range"])
                           if pd.notna(c["peak_in_range"]) else False,
                           last_step=int(c["last_step"]))
            else:
                vals, reason = dict.fromkeys(names, math.nan), f"no {parametrisation} fit"
                any_row = fit[(fit["model"] == model) & (fit["layer"] == layer)].iloc[0]
                row.update(fit_success=False, fit_r2=math.nan,
                           final_value=_f(any_row["final_value"]), peak_step=math.nan,
                           peak_in_range=False, last_step=int(any_row["last_step"]))
            row.update({f"param_{n}": v for n, v in vals.items()})
            row["exclude_reason"] = reason
            rows.append(row)
    df = pd.DataFrame(rows)
    transforms = _apply_transforms(df, parametrisation)
    df["usable"] = df["exclude_reason"] == ""
    df = df[list(feature_schema(parametrisation))]
    df = _coerce(df, feature_schema(parametrisation))
    df.attrs["transforms"] = transforms
    return df


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _apply_transforms(df: pd.DataFrame, parametrisation: str) -> dict[str, dict]:
    """Fill ``target_*`` columns (in place); mark rows outside a transform's domain."""
    from scipy.stats import yeojohnson

    out: dict[str, dict] = {}
    for name, kind in transforms_for(parametrisation).items():
        raw = df[f"param_{name}"].to_numpy(dtype=float)
        if kind == "log1p":
            df[f"target_{name}"] = forward_transform(raw, "log1p")
            out[name] = {"kind": "log1p", "lambda": None}
        else:
            ok = np.isfinite(raw) & (df["exclude_reason"] == "").to_numpy()
            lmbda = float(yeojohnson(raw[ok])[1]) if ok.sum() >= 2 else 1.0  # 1.0 = identity
            tgt = np.full(raw.shape, np.nan)
            tgt[np.isfinite(raw)] = forward_transform(raw[np.isfinite(raw)], kind, lmbda)
            df[f"target_{name}"] = tgt
            out[name] = {"kind": "yeojohnson", "lambda": lmbda}
    return out


def _coerce(df: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    conv = {"str": str, "int": "int64", "float": "float64", "bool": bool}
    df = df.copy()
    for c, kind in schema.items():
        df[c] = df[c].astype(conv[kind])
    return df.reset_index(drop=True)


def check_schema(df: pd.DataFrame, parametrisation: str | None = None) -> None:
    """Raise :class:`SchemaError` naming the first missing or mistyped column."""
    if parametrisation is None:
        if "parametrisation" not in df.columns or df.empty:
            raise SchemaError("column 'parametrisation' is missing (or the table is empty)")
        parametrisation = str(df["parametrisation"].iloc[0])
    for col, kind in feature_schema(parametrisation).items():
        if col not in df.columns:
            raise SchemaError(f"feature table: column {col!r} is missing")
        if not _KIND_CHECK[kind](df[col]) or (kind == "str" and df[col].dtype == bool):
            raise SchemaError(f"feature table: column {col!r} has dtype {df[col].dtype}, "
                              f"expected {kind}")


def write_feature_table(df: pd.DataFrame, path: str | Path, csv_path: str | Path | None = None
                        ) -> None:
    """Check the schema, then write Parquet (transforms in its metadata) and a CSV copy
    (default: ``fitted_param_dataset_{parametrisation}.csv`` beside the Parquet file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_schema(df)
    param = str(df["parametrisation"].iloc[0])
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps({"transforms": df.attrs.get("transforms", {}),
                                  "parametrisation": param}, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    csv_path = csv_path or Path(path).with_name(f"fitted_param_dataset_{param}.csv")
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")


def read_feature_table(path: str | Path) -> pd.DataFrame:
    """Read a feature table written by :func:`write_feature_table` and check its schema."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    df = table.to_pandas()
    df.attrs = {}
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise SchemaError(f"{path}: no madyn feature-table metadata (transforms)")
    df.attrs["transforms"] = json.loads(raw)["transforms"]
    check_schema(df)
    return df


# ----------------------------------------------------------------------------- table accessors

def usable_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The usable rows, sorted by (model, layer), index reset."""
    return table[table["usable"]].sort_values(["model", "layer"]).reset_index(drop=True)


def target_columns(table: pd.DataFrame) -> list[str]:
    """The ``target_*`` columns, in table order."""
    return [c for c in table.columns if c.startswith("target_")]


def param_names(table: pd.DataFrame) -> list[str]:
    """The raw parameter names (columns ``param_<name>``), in table order."""
    return [c[len("param_"):] for c in table.columns if c.startswith("param_")]


def feature_columns(d: pd.DataFrame) -> list[str]:
    """The predictors' inputs on training rows ``d``: every shape feature, and each design
    feature that is known (finite) on every row and varies between them (a constant axis
    carries nothing; an unknown one cannot be used)."""
    used = [c for c in DESIGN_FEATURES if c in d.columns
            and np.isfinite(d[c].to_numpy(float)).all() and d[c].nunique() > 1]
    return FEATURE_COLUMNS + used


def feature_matrix(df: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
    """(n_rows, len(columns)) float feature matrix (default :data:`FEATURE_COLUMNS`)."""
    return df[columns or FEATURE_COLUMNS].to_numpy(dtype=float)


def check_table(table: pd.DataFrame, parametrisation: str, quantity: str) -> None:
    """ValueError unless the table holds exactly this parametrisation and quantity."""
    for col, want in (("parametrisation", parametrisation), ("quantity", quantity)):
        have = sorted(set(table[col].astype(str)))
        if have != [want]:
            raise ValueError(f"feature table has {col} {have}, settings say {want!r}")
