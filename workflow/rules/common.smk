# Shared by the phase files: the validated configuration, every path, and one answer per
# question (which steps, where a checkpoint is, where its config is, which tokenizer, what
# a job needs) for each source of checkpoints. A new source is one class here.
import functools
import json
import os
import re
import sys
from pathlib import Path

from madyn.workflow import params_file as madyn_params
from madyn.workflow import params_values as madyn_values
from madyn import io as madyn_io
from madyn.measure import released as madyn_released
from madyn.workflow import resources as madyn_resources
from madyn.measure import runs as madyn_runs
from madyn.measure import run_checkpoints as madyn_run_checkpoints
from madyn.measure import run_plan as madyn_run_plan
from madyn.settings import ExtractSettings
from madyn.workflow import answer as madyn_answer
from madyn.workflow import dvc_stages as madyn_dvc_stages
from madyn.train.training import checkpoint_dir, spec_record, train_cost, train_record

try:
    madyn_params.validate(config)
except madyn_params.ConfigError as err:
    sys.exit(f"madyn: {err}")

SUITE = config["suite"]
SUITE_CFG = madyn_values.with_run_defaults(madyn_values.active(config))
MODELS = madyn_values.model_names(SUITE_CFG)
RESULTS = madyn_values.results_dir(config)
EXTRACT = SUITE_CFG.get("extract", {})
FEATURES = madyn_values.feature_table(config)
RUN_ANALYSIS = madyn_values.is_run_analysis(SUITE_CFG)  # each model one run, on its own
SYNTHETIC = madyn_values.is_synthetic(SUITE_CFG)  # a synthetic corpus (madyn.train.synthetic)
NOTHING = "(?!)"  # a wildcard constraint that matches no value
ENV = "../envs/madyn.yaml"  # every rule's software, for --use-conda (default: the .venv)


# Shell commands quote every value ({x:q}); a value that is several arguments is a list
# here, so that each argument is quoted on its own.


def example_args():
    """madyn predict's design arguments for params.yaml's predict.example (architecture,
    and its lr where given)."""
    ex = config["predict"].get("example", {})
    keys = ("layers", "width", "heads", "ff_mult", "rotary_pct", "optimizer", "lr", "eps")
    return [a for k in keys if k in ex for a in (f"--{k.replace('_', '-')}", str(ex[k]))]


def design_args(model):
    """madyn step config-json's --design-json: the model's design label and the recipe its suite
    entry states (the predictors' design features)."""
    recipe = (SRC.recipe(model) if hasattr(SRC, "recipe")
              else madyn_values.known_recipe(SUITE_CFG, model))
    record = {"label": madyn_values.design_labels(SUITE_CFG)[model], **recipe}
    return ["--design-json", json.dumps(record)]


# How checkpoints are measured (the suite's ``extract``; defaults: the params schema's), as
# the measuring commands' --settings-json.
EXTRACT_SETTINGS = ExtractSettings.from_section(EXTRACT)


# Per-model paths, written once here: a rule passes "{model}" for its wildcard pattern,
# a phase target or a many-model input passes each name.
def model_manifest(model):
    """The training job's completion marker for a local model."""
    return f"{RESULTS}/models/{model}/manifest.json"


def series_path(model):
    """A model's measured series (every statistic, layer and step)."""
    return f"{RESULTS}/series/{model}.parquet"


def integrity_path(model):
    return f"{RESULTS}/integrity/{model}.json"


def series_figure(model, name):
    """A model's figure of its series: ``name`` is series or first_last."""
    return f"{RESULTS}/figures/{model}/{name}.png"


def fit_table(model):
    """A model's per-layer curve fits."""
    return f"{RESULTS}/fits/{model}.parquet"


def fit_params(model, quantity):
    return f"{RESULTS}/params/{model}/layer_fit_params_{quantity}.json"


def fit_figure(model, name):
    """A model's figure of its fits: ``name`` is examples or quality."""
    return f"{RESULTS}/fits/figures/{model}_{name}.png"


def config_path(model):
    """A model's architecture (its config.json)."""
    return f"{RESULTS}/configs/{model}.json"


def stats_path(model, step):
    return f"{RESULTS}/stats/{model}/step{step}.parquet"


def download_marker(model, step):
    return f"{RESULTS}/downloads/{model}/step{step}.json"


def one_of(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(map(re.escape, names)) if names else NOTHING


class MeasuredSource:
    """What sources that measure checkpoints share: each model's schedule of steps, and one
    statistics table per (model, step) as the series' inputs."""

    def steps(self, model):
        return madyn_values.steps(SUITE_CFG, model)

    def series_inputs(self, model):
        return [stats_path(model, s) for s in self.steps(model)]


class LocalSource(MeasuredSource):
    """Checkpoints madyn trains itself (results/<suite>/models/<model>/step<N>), measured
    one process per model."""

    trains = True
    measure_jobs = "model"

    def tokenizer(self, model):
        """``corpus``, or ``corpus-nobos`` for a model trained without a synthetic
        corpus's BOS token (its evaluation batch has none either), or ``corpus-bos`` for
        a model trained on a text corpus with one (its batch has it too)."""
        bos = madyn_values.train_spec(SUITE_CFG, model).bos
        if SYNTHETIC:
            return "corpus-nobos" if bos is False else "corpus"
        return "corpus-bos" if bos else "corpus"

    def tokenizer_arg(self, tokenizer):
        return f"{RESULTS}/corpus/tokenizer"

    def corpus_manifest(self):
        return f"{RESULTS}/corpus/manifest.json"

    def config_inputs(self, model):
        return [model_manifest(model)]

    def config_args(self, model):
        return [str(checkpoint_dir(f"{RESULTS}/models/{model}", self.steps(model)[-1]))]

    def config_json(self, model):
        spec = madyn_values.model_spec(SUITE_CFG, model)
        return madyn_resources.model_config_dict(
            spec, madyn_values.vocab_size(SUITE_CFG["corpus"]), SUITE_CFG["train"]["seq_len"])

    def export_config(self, model):
        """Where the released export's config.json comes from: the last checkpoint."""
        return self.config_args(model)[0]


class HubSource(MeasuredSource):
    """Revisions of hub repos: a download job, then a measuring job, per checkpoint."""

    trains = False
    measure_jobs = "checkpoint"

    def _entry(self, model):
        return madyn_values.model_entry(SUITE_CFG, model)

    def repo(self, model):
        return self._entry(model)["repo"]

    def tokenizer(self, model):
        m = self._entry(model)
        return "--".join(m.get("tokenizer", m["repo"]).split("/"))

    def tokenizer_arg(self, tokenizer):
        return tokenizer.replace("--", "/")

    def corpus_manifest(self):
        return f"{RESULTS}/corpus/heldout_manifest.json"

    def config_inputs(self, model):
        return []

    def config_args(self, model):
        return [self.repo(model)]

    def export_config(self, model):
        """Where the released export's config.json comes from: the last revision's
        download marker (its snapshot keeps config.json when the weights are deleted)."""
        return download_marker(model, self.steps(model)[-1])

    def config_json(self, model):
        """config.json from the hub cache when it is there (no network at planning)."""
        return madyn_resources.cached_hub_config(self.repo(model))


class ReleasedSource:
    """The study's released layout ({path}/{model}/stats/exp2_{model}_step{N}): statistics
    only, nothing to measure. A model's architecture: {path}/{model}/config.json, or the
    layers/width/heads/vocab_size of its suite entry."""

    trains = False
    measure_jobs = None

    def __init__(self):
        self.root = SUITE_CFG["path"]
        try:
            self.files = madyn_params.check_released_folder(config)
        except madyn_params.ConfigError as err:
            sys.exit(f"madyn: {err}")

    def _config_file(self, model):
        return madyn_released.config_file(self.root, model)

    def steps(self, model):
        return sorted(self.files[model])

    def series_inputs(self, model):
        return [str(f) for _, f in sorted(self.files[model].items())]

    def config_inputs(self, model):
        f = self._config_file(model)
        return [str(f)] if f.exists() else []

    def config_args(self, model):
        if self._config_file(model).exists():
            return [str(Path(self.root) / model)]
        return ["--arch-json", json.dumps(dict(madyn_values.model_entry(SUITE_CFG, model)))]

    def config_json(self, model):
        f = self._config_file(model)
        if f.exists():
            try:
                return madyn_io.read_json(f)  # a user's file: regular, bounded size
            except (OSError, ValueError) as err:
                sys.exit(f"madyn: {err}")
        spec = madyn_values.model_spec(SUITE_CFG, model)
        return madyn_resources.model_config_dict(
            spec, madyn_values.model_entry(SUITE_CFG, model)["vocab_size"])


class RunSource(MeasuredSource):
    """A researcher's own run (``source: run``): each model entry's folder of checkpoints
    (found by layout at planning, :mod:`madyn.measure.runs`; a checkpoint that appears later is
    measured by the next run), one measuring job per model (extract_run.smk); or a live
    monitor's folder, whose tables are the series' inputs as they are. Skipped entries
    are named in the log and recorded in integrity/<model>.json."""

    trains = False
    measure_jobs = "run"

    def __init__(self):
        self.scans = {}
        for i, m in enumerate(SUITE_CFG["models"]):
            where = f"model {m['name']} (suites.{SUITE}.models.{i}.path)"
            try:
                sc = madyn_runs.entry_scan(m, where)
                madyn_runs.entry_tokens(m, f"suites.{SUITE}.models.{i}.tokens")
                madyn_params.check_min_points(config, len(sc.steps), f"{where}: {sc.folder}")
            except (madyn_runs.RunError, madyn_params.ConfigError) as err:
                sys.exit(f"madyn: {err}")
            for name, why in sc.skipped.items():
                print(f"madyn: [{m['name']}] skipped {sc.folder / name}: {why}",
                      file=sys.stderr)
            self.scans[m["name"]] = sc

    def _entry(self, model):
        return madyn_values.model_entry(SUITE_CFG, model)

    def steps(self, model):
        return self.scans[model].steps

    def measured(self, model):
        """Are the model's checkpoints measured here (not read from a monitor folder)?"""
        return not self.scans[model].live

    def series_inputs(self, model):
        sc = self.scans[model]
        if sc.live:
            return [str(sc.live[s]) for s in sc.steps]
        return [stats_path(model, s) for s in sc.steps]

    def checkpoint(self, model, step):
        return str(self.scans[model].checkpoints[int(step)])

    def checkpoint_files(self, model, step):
        """What a measuring job reads: config.json and the weight files."""
        d = self.scans[model].checkpoints[int(step)]
        return [str(d / "config.json")] + [str(f) for f in madyn_run_checkpoints.weight_files(
            d, bool(self._entry(model).get("allow_pickle")))]

    def tokens(self, model):
        """The entry's ``tokens``, else the probe of the run's own monitor (checkpoints and
        monitor then agree), else the held-out text through the run's tokenizer."""
        probe = madyn_runs.monitor_probe(self.scans[model])
        held = f"{RESULTS}/eval/tokens_{self.tokenizer(model)}.npy"
        return self._entry(model).get("tokens") or (str(probe) if probe else held)

    def tokenizer(self, model):
        return f"run-{model}"

    def tokenizer_arg(self, tokenizer):
        """The tokenizer folder: the entry's, else the first checkpoint's own (the first,
        so that checkpoints added later leave the evaluation batch as it is)."""
        model = tokenizer.removeprefix("run-")
        sc = self.scans[model]
        first = sc.folder if sc.live else sc.checkpoints[min(sc.checkpoints)]
        return self._entry(model).get("tokenizer") or str(first)

    def corpus_manifest(self):
        return f"{RESULTS}/corpus/heldout_manifest.json"

    def config_inputs(self, model):
        return [str(self.scans[model].last() / "config.json")]

    def config_args(self, model):
        return [str(self.scans[model].last())]

    def export_config(self, model):
        return str(self.scans[model].last())

    def config_json(self, model):
        try:
            return madyn_io.read_json(self.scans[model].last() / "config.json")
        except (OSError, ValueError) as err:
            sys.exit(f"madyn: {err}")

    def recipe(self, model):
        return madyn_run_plan.recipe(self.scans[model], self._entry(model))

    def skipped_args(self, model):
        return ["--skipped-json", json.dumps(self.scans[model].skipped)]


SOURCES = {"local": LocalSource, "hub": HubSource, "released": ReleasedSource,
           "run": RunSource}
SRC = SOURCES[SUITE_CFG["source"]]()
MODEL_STEPS = {m: SRC.steps(m) for m in MODELS}
MEASURED_PER_MODEL = MODELS if SRC.measure_jobs == "model" else []
MEASURED_PER_CHECKPOINT = MODELS if SRC.measure_jobs == "checkpoint" else []
TRAINED = MODELS if SRC.trains else []
MEASURED_RUN = [m for m in MODELS if SRC.measure_jobs == "run" and SRC.measured(m)]


def schedule_groups(models):
    """[(rule-name suffix, steps, models)]: the trained models grouped by their checkpoint
    steps, so that a training or measuring rule's outputs (one file per step) are fixed
    per rule. The first group's rules keep the plain names (train, extract_model), the
    others get _2, _3, ...; one empty group when nothing is trained."""
    groups = {}
    for m in models:
        groups.setdefault(tuple(MODEL_STEPS[m]), []).append(m)
    if not groups:
        return [("", [], [])]
    return [("" if i == 0 else f"_{i + 1}", list(st), ms)
            for i, (st, ms) in enumerate(groups.items())]


TRAIN_GROUPS = schedule_groups(TRAINED)


# ---------------------------------------------------------------- resources of a job
@functools.cache
def _plan(model):
    """What a measuring job of ``model`` needs (memory, GPU, time), from its config."""
    return madyn_resources.extract_plan(SRC.config_json(model), EXTRACT)


def extract_resources(key):
    return lambda wc: _plan(wc.model)[key]


def download_gate(wc):
    """Downloads wait for earlier revisions to be measured (and deleted) so that the
    revisions on disk stay within ``extract.disk_budget_gb``."""
    return madyn_resources.download_gate(DOWNLOAD_ORDER, DOWNLOAD_WINDOWS,
                                         (wc.model, int(wc.step)), stats_path,
                                         download_marker)


DOWNLOAD_ORDER = [(m, s) for m in MEASURED_PER_CHECKPOINT for s in MODEL_STEPS[m]]
DOWNLOAD_GB = {m: _plan(m)["download_gb"] for m in MEASURED_PER_CHECKPOINT}
DOWNLOAD_WINDOWS = (
    madyn_resources.download_windows([DOWNLOAD_GB[m] for m, _ in DOWNLOAD_ORDER],
                                     EXTRACT["disk_budget_gb"])
    if EXTRACT.get("disk_budget_gb") else None)


# ------------------------------------------------------------------- phase outputs
def suite_outputs():
    """Trained models, the training summary (empty for a suite that trains nothing, so
    that every source has the DVC suite stage's metric) and a hub suite's held-out files
    (the corpus of the suite stage's outs)."""
    hub = [SRC.corpus_manifest()] if SUITE_CFG["source"] in ("hub", "run") else []
    return [model_manifest(m) for m in TRAINED] + [f"{RESULTS}/timing/train.json"] + hub


# The phase targets name every per-model output, not only what the summaries read: a file
# deleted after its summary was written (a job killed after Snakemake removed its outputs)
# is then missing output of a requested job, and the next run rebuilds it.
def _model_figures():
    """Whether the suite draws each model's figures (its ``model_figures``)."""
    from madyn.settings import schema_default

    return SUITE_CFG.get("model_figures", schema_default("$defs.model_figures"))


FIGURED = MODELS if _model_figures() else []  # the models whose own figures are drawn


def extract_outputs():
    return ([series_path(m) for m in MODELS]
            + [integrity_path(m) for m in MODELS]
            + [series_figure(m, f) for m in FIGURED for f in ("series", "first_last")]
            + [f"{RESULTS}/metrics/growth.json"])


def fit_outputs():
    return ([f"{RESULTS}/fits/all.parquet", f"{RESULTS}/metrics/fit.json"]
            + [fit_table(m) for m in MODELS]
            + [fit_params(m, q) for m in MODELS for q in config["fit"]["quantities"]]
            + [fit_figure(m, f) for m in FIGURED for f in ("examples", "quality")])


def forecast_dir(model):
    """A single-run suite's forecast of ``model`` to its planned last step."""
    return f"{RESULTS}/forecast/{model}"


def forecast_last_step(model):
    """The forecast's ``--last-step`` of a single-run suite's model: the run's planned last
    step (its entry's ``last_step``, else its trainer's or monitor's ``max_steps``); none
    when unknown (the forecast records the refusal, naming what to set)."""
    scan = SRC.scans[model] if hasattr(SRC, "scans") else None
    step = madyn_values.planned_last_step(SUITE_CFG, model, scan)
    if step is None and scan is None:
        step = max(MODEL_STEPS[model])  # a suite madyn trained or read whole: its last step
    return [] if step is None else ["--last-step", str(step)]


def forecast_run_args(model):
    """What the forecast knows of a run beyond its series: its folder (family, vocabulary,
    peak lr, schedule) and the tokens it was measured on (its evaluation batch)."""
    if not hasattr(SRC, "scans"):
        return []
    scan = SRC.scans[model]
    tokens = scan.folder / "probe_tokens.npy" if scan.live else Path(SRC.tokens(model))
    return ["--run-folder", str(scan.folder)] + (
        ["--run-tokens", str(tokens)] if not scan.live or tokens.is_file() else [])


def predict_outputs():
    if RUN_ANALYSIS:  # each model a run: its own forecast, no cross-model predictors
        return ([f"{RESULTS}/metrics/predict.json", f"{RESULTS}/metrics/forecast.json"]
                + [f"{forecast_dir(m)}/summary.json" for m in MODELS])
    out = [f"{RESULTS}/metrics/predict.json", f"{RESULTS}/predict/lomo_heldout_curves.png",
           f"{RESULTS}/metrics/forecast.json"]
    if config["predict"].get("example"):
        out.append(f"{RESULTS}/predict/example/prediction.png")
    return out


BASE_DESIGN = SUITE_CFG.get("base_design")


def backtest_skip() -> list[str]:
    """The forecast rule's ``--skip REASON`` when the suite turns its backtest off."""
    from madyn.settings import schema_default

    if SUITE_CFG.get("backtest", schema_default("$defs.backtest")):
        return []
    return ["--skip", f"suites.{SUITE}.backtest is false"]


BACKTEST_SKIP = backtest_skip()


def effects_outputs():
    """The effects rule's outputs: the figure only when the suite has a base design."""
    out = {"json": f"{RESULTS}/metrics/interventions.json",
           "csv": f"{RESULTS}/report/effects.csv"}
    if BASE_DESIGN:
        caption = os.path.join(workflow.basedir, "workflow", "report", "effects.rst")
        out["csv"] = report(out["csv"], category="Design interventions", caption=caption)
        out["png"] = report(f"{RESULTS}/report/effects.png", category="Design interventions",
                            caption=caption)
    return out


# The headline metrics: what DVC shows and diffs (results/<suite>/metrics/headline.json,
# committed to git); the other files in metrics/ are the detailed summaries they come from.
HEADLINE = f"{RESULTS}/metrics/headline.json"


RUN_SUMMARY = f"{RESULTS}/report/run_summary.txt"


def report_outputs():
    if RUN_ANALYSIS:
        return [f"{RESULTS}/report/peak_heatmaps.png", f"{RESULTS}/metrics/interventions.json",
                HEADLINE, f"{RESULTS}/report/curves.csv", RUN_SUMMARY]
    return [f"{RESULTS}/report/peak_heatmaps.png", f"{RESULTS}/metrics/interventions.json",
            HEADLINE, f"{RESULTS}/report/curves.csv"]


# What a single-run suite does not run, recorded in the outs DVC expects of every suite
STUDY_ONLY = (f"suites.{SUITE} is a single-run suite (analysis: run): its models are runs "
              "analysed on their own, so no cross-model predictors, example prediction, "
              "backtest or interventions run for it")
