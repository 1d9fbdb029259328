# Shared by every rule file: validated configuration and path helpers.
import sys

from madyn import config as madyn_config

try:
    madyn_config.validate(config)
except madyn_config.ConfigError as err:
    sys.exit(f"madyn: {err}")

SUITE = config["suite"]
SUITE_CFG = madyn_config.active(config)
MODELS = madyn_config.model_names(SUITE_CFG)
STEPS = madyn_config.steps(SUITE_CFG)
RESULTS = f"results/{SUITE}"


def model_manifest(model):
    """The training job's completion marker for a local model."""
    return f"{RESULTS}/models/{model}/manifest.json"


def suite_outputs():
    if SUITE_CFG["source"] == "local":
        return [model_manifest(m) for m in MODELS]
    return []
