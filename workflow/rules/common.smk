# Shared by every rule file: validated configuration and path helpers.
import json
import shlex
import sys

from madyn import config as madyn_config
from madyn import released as madyn_released

try:
    madyn_config.validate(config)
except madyn_config.ConfigError as err:
    sys.exit(f"madyn: {err}")

SUITE = config["suite"]
SUITE_CFG = madyn_config.active(config)
SOURCE = SUITE_CFG["source"]
MODELS = madyn_config.model_names(SUITE_CFG)
RESULTS = f"results/{SUITE}"
EXTRACT = SUITE_CFG.get("extract", {})

if SOURCE == "released":
    _RELEASED = madyn_released.scan(SUITE_CFG["path"])
    _missing = [m for m in MODELS if m not in _RELEASED]
    if _missing:
        sys.exit(f"madyn: suites.{SUITE}.models: no exp2 files for {_missing} under "
                 f"{SUITE_CFG['path']}")
    MODEL_STEPS = {m: sorted(_RELEASED[m]) for m in MODELS}
else:
    MODEL_STEPS = {m: madyn_config.steps(SUITE_CFG) for m in MODELS}


def quoted_json(obj):
    return shlex.quote(json.dumps(obj))


def model_manifest(model):
    """The training job's completion marker for a local model."""
    return f"{RESULTS}/models/{model}/manifest.json"


def hub_model(model):
    (m,) = [m for m in SUITE_CFG["models"] if m["name"] == model]
    return m


def tokenizer_of(model):
    """Tokenizer id of a model: `corpus` (local suites) or a hub repo id with / -> --."""
    if SOURCE == "local":
        return "corpus"
    m = hub_model(model)
    return m.get("tokenizer", m["repo"]).replace("/", "--")


def suite_outputs():
    if SOURCE == "local":
        return [model_manifest(m) for m in MODELS] + [f"{RESULTS}/metrics/train.json"]
    return []
