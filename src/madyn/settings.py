"""Settings of the analysis stages, with their defaults read from the params schema.

The one place a default lives is ``default:`` in ``schemas/params.schema.yaml`` (params.yaml
ships the same values); :func:`schema_default` and :func:`section_defaults` read it, and
:class:`FitSettings` / :class:`PredictSettings` / :class:`ExtractSettings` take their
defaults from there. :func:`resolve_device` is the one meaning of the ``auto`` device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

# PyYAML's safe loader on libyaml's parser where it is built (10x faster: the schema and
# params.yaml are parsed by every madyn process), else the pure-Python one; same values
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=1)
def params_schema() -> dict:
    """The params.yaml JSON schema (parsed YAML)."""
    text = resources.files("madyn").joinpath("schemas/params.schema.yaml").read_text()
    return yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 (a safe loader)


def _node(section: str) -> dict:
    """The properties of a top-level section, or of a ``$defs`` entry (``"$defs.extract"``:
    a suite's ``extract``)."""
    if section.startswith("$defs."):
        props = params_schema()["$defs"]
        section = section[len("$defs."):]
    else:
        props = params_schema()["properties"]
    if section not in props or "properties" not in props[section]:
        raise KeyError(f"params schema has no section {section!r}")
    return props[section]["properties"]


def schema_default(key: str) -> Any:
    """The schema's ``default`` of ``section.key`` (e.g. ``"fit.alpha"``,
    ``"$defs.extract.dtype"``, ``"$defs.backtest"``); KeyError if none."""
    section, _, name = key.rpartition(".")
    defs = section == "$defs"  # a definition's own default ("$defs.backtest")
    prop = params_schema()["$defs"].get(name) if defs else _node(section).get(name)
    if prop is None or "default" not in prop:
        raise KeyError(f"params schema: {key!r} has no default")
    return prop["default"]


def section_defaults(section: str) -> dict[str, Any]:
    """Every key of a params.yaml section that has a schema ``default``, with it."""
    return {k: v["default"] for k, v in _node(section).items() if "default" in v}


def schema_enum(key: str) -> list:
    """The allowed values of ``section.key`` (its ``enum``, or its items' ``enum``)."""
    section, _, name = key.rpartition(".")
    prop = _node(section)[name]
    return list(prop.get("enum") or prop["items"]["enum"])


def _check_keys(cls: type, d: dict, what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")


def _from_mapping(cls: type, d: dict | None, what: str):
    """``cls`` built from a mapping: unknown keys raise ValueError; a value of a tuple
    field becomes a tuple (of floats where the field holds floats)."""
    d = dict(d or {})
    _check_keys(cls, d, what)
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if kinds[k].startswith("tuple[float"):
            d[k] = tuple(float(x) for x in v)
        elif kinds[k].startswith("tuple"):
            d[k] = tuple(v)
    return cls(**d)


_FIT = section_defaults("fit")
_FORECAST = section_defaults("forecast")
_EXTRACT = section_defaults("$defs.extract")
_PREDICT = {**section_defaults("predict"), **section_defaults("features")}


@dataclass(frozen=True)
class FitSettings:
    """Settings of the fitting phase (params.yaml: ``fit``; defaults: the schema's).

    hypotheses: names in :data:`madyn.curves.hypotheses.REGISTRY`; quantities: series fitted per
    layer; n_starts: variable-projection starts refined by TRF per hypothesis (a hypothesis
    warm-started from a related optimum, ``Hypothesis.warm_from``, gets ``n_starts_warm`` grid
    starts plus that one); alpha: weight of the regularised variants' penalty; min_points:
    fewest usable checkpoints to fit at all; outlier_mad: robust-sigma threshold of the
    outlier step; max_nfev / ftol: TRF function evaluations per start and its relative cost
    tolerance; grid_density: scales the points per axis of the starting grids.
    """

    hypotheses: tuple[str, ...] = tuple(_FIT["hypotheses"])
    quantities: tuple[str, ...] = tuple(_FIT["quantities"])
    n_starts: int = _FIT["n_starts"]
    n_starts_warm: int = _FIT["n_starts_warm"]
    alpha: float = _FIT["alpha"]
    min_points: int = _FIT["min_points"]
    outlier_mad: float = _FIT["outlier_mad"]
    max_nfev: int = _FIT["max_nfev"]
    ftol: float = _FIT["ftol"]
    grid_density: float = _FIT["grid_density"]

    @classmethod
    def from_dict(cls, d: dict | None) -> FitSettings:
        """Build from a mapping (params.yaml's ``fit``); unknown keys raise ValueError."""
        return _from_mapping(cls, d, "fit")


@dataclass(frozen=True)
class PredictSettings:
    """Settings of the prediction phase: params.yaml's ``predict`` (less ``example``) plus
    the feature table's ``parametrisation`` and ``quantity`` (``features``), as
    :func:`madyn.workflow.params_values.predict_settings` returns them; defaults: the schema's."""

    seed: int = _PREDICT["seed"]
    test_fraction: float = _PREDICT["test_fraction"]
    cv_folds: int = _PREDICT["cv_folds"]
    xgb_n_estimators: int = _PREDICT["xgb_n_estimators"]
    xgb_max_depth: int = _PREDICT["xgb_max_depth"]
    xgb_learning_rate: float = _PREDICT["xgb_learning_rate"]
    ridge_alphas: tuple[float, ...] = tuple(float(x) for x in _PREDICT["ridge_alphas"])
    rf_n_estimators: int = _PREDICT["rf_n_estimators"]
    parametrisation: str = _PREDICT["parametrisation"]
    quantity: str = _PREDICT["quantity"]
    n_boot: int = _PREDICT["n_boot"]  # bootstrap ensemble size of the prediction's intervals
    interval: tuple[float, float] = tuple(float(x) for x in _PREDICT["interval"])
    predict_model: str = _PREDICT["predict_model"]  # what prediction.predict_architecture uses

    def __post_init__(self) -> None:
        allowed = schema_enum("predict.predict_model")
        if self.predict_model not in allowed:
            raise ValueError(f"predict_model {self.predict_model!r} not in {allowed}")

    @classmethod
    def from_dict(cls, d: dict | None) -> PredictSettings:
        """Build from a mapping (``config.predict_settings(cfg)``); unknown keys raise
        ValueError."""
        return _from_mapping(cls, d, "predict")

    @classmethod
    def of(cls, settings: PredictSettings | dict | None) -> PredictSettings:
        """``settings`` itself, or built from a mapping (None: the defaults)."""
        return settings if isinstance(settings, cls) else cls.from_dict(settings)


@dataclass(frozen=True)
class ForecastSettings:
    """Settings of the forecast (params.yaml: ``forecast``; defaults: the schema's).

    level: nominal coverage of the intervals; fractions: the backtest's truncations (of
    each model's last step); quantities: the per-layer curves forecast."""

    level: float = _FORECAST["level"]
    fractions: tuple[float, ...] = tuple(_FORECAST["fractions"])
    quantities: tuple[str, ...] = tuple(_FORECAST["quantities"])

    @classmethod
    def from_dict(cls, d: dict | None) -> ForecastSettings:
        """Build from a mapping (params.yaml's ``forecast``); unknown keys raise
        ValueError."""
        return _from_mapping(cls, d, "forecast")


def resolve_device(device: str, n_gpus: int) -> str:
    """The device a measuring job runs on: ``auto`` is ``cuda`` when ``n_gpus`` > 0 (CUDA
    devices visible), else ``cpu``; any other device (``cpu``, ``cuda``, ``cuda:K``,
    ``mps``) as it is. The one resolution of ``auto``: the job's resources
    (:func:`madyn.workflow.resources.uses_cuda`, counting GPUs without torch), the GPU a job claims
    (:func:`madyn.measure.gpus.claimed_device`) and the device a model is loaded on
    (:func:`madyn.measure.checkpoints.load_model`) all call it."""
    if device == "auto":
        return "cuda" if n_gpus > 0 else "cpu"
    return device


@dataclass(frozen=True)
class ExtractSettings:
    """How checkpoints are measured: a suite's ``extract`` in params.yaml, less the
    evaluation batch (``n_seqs``, ``seq_len``, ``seed``) and the download budget
    (``disk_budget_gb``), which the workflow reads; defaults: the schema's.

    dtype: weights dtype when loading (statistics are always float32); device: ``auto``
    (:func:`resolve_device`), ``cpu``, ``cuda``, ``cuda:K`` or ``mps``; batch_size:
    sequences per forward pass; extreme_tokens: also measure ``sink_mass`` (off: NaN);
    threads: CPU threads a measuring job asks the scheduler for; delete_downloads: remove
    each hub revision from the cache once measured; max_memory_gb: the memory (GB) weights
    and activations may take: a checkpoint folder that would not fit whole is measured
    layer by layer (:mod:`madyn.measure.layerwise`); None: always whole.
    """

    dtype: str = _EXTRACT["dtype"]
    device: str = _EXTRACT["device"]
    batch_size: int = _EXTRACT["batch_size"]
    extreme_tokens: bool = _EXTRACT["extreme_tokens"]
    threads: int = _EXTRACT["threads"]
    delete_downloads: bool = _EXTRACT["delete_downloads"]
    max_memory_gb: float | None = _EXTRACT["max_memory_gb"]

    def __post_init__(self) -> None:
        allowed = schema_enum("$defs.extract.dtype")
        if self.dtype not in allowed:
            raise ValueError(f"dtype {self.dtype!r} not in {allowed}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        m = self.max_memory_gb
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float))
                              or not m > 0):
            raise ValueError(f"max_memory_gb must be a number > 0 (GB) or null, got {m!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> ExtractSettings:
        """Build from a mapping (these fields only); unknown keys raise ValueError."""
        return _from_mapping(cls, d, "extract")

    @classmethod
    def from_section(cls, extract: dict | None) -> ExtractSettings:
        """Build from a suite's whole ``extract`` section (its other keys left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (extract or {}).items() if k in names})

    @classmethod
    def of(cls, settings: ExtractSettings | dict | None) -> ExtractSettings:
        """``settings`` itself, or built from a mapping (None: the defaults)."""
        return settings if isinstance(settings, cls) else cls.from_dict(settings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
