# madyn workflow: suite -> extract -> fit -> features -> predict -> report.
# Configuration: params.yaml (validated before any job starts). Run: snakemake --cores N
# Phase targets (what the DVC stages call): suite_all, extract_all, fit_all,
# features_all, predict_all, report_all.
import sys
import time

from madyn.workflow import params_file as madyn_params

# Before Snakemake reads it: a params file that is huge, has a key twice or YAML aliases
# that expand without bound is refused here (Snakemake would keep the last duplicate and
# walk every expanded value).
try:
    madyn_params.read("params.yaml")
except madyn_params.ConfigError as err:
    sys.exit(f"madyn: {err}")


configfile: "params.yaml"


START = time.time()  # what this invocation wrote is printed at its end (onsuccess)


include: "workflow/rules/common.smk"
include: "workflow/rules/suite.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/extract_run.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/report.smk"


if RUN_ANALYSIS:  # each model one run: its forecast, the run summary, per-run headline

    include: "workflow/rules/run.smk"

else:  # a cross-model study: predictors, the backtest, interventions

    include: "workflow/rules/predict.smk"
    include: "workflow/rules/study.smk"


rule all:
    default_target: True
    input:
        suite_outputs(),
        extract_outputs(),
        fit_outputs(),
        FEATURES,
        predict_outputs(),
        report_outputs(),


rule suite_all:
    input:
        suite_outputs(),


rule extract_all:
    input:
        extract_outputs(),


rule fit_all:
    input:
        fit_outputs(),


rule features_all:
    input:
        FEATURES,


rule design_lodo_all:
    input:
        f"{RESULTS}/metrics/design_lodo.json",


rule predict_all:
    input:
        predict_outputs(),


rule report_all:
    input:
        report_outputs(),


# The report's front page: the run summary (single-run suites) or the headline, before any
# rule graph (workflow/report/workflow.rst renders this key).
report: "workflow/report/workflow.rst"


config["_front_page"] = madyn_answer.front_page(RESULTS)


onsuccess:
    # the whole workflow in a DVC repository: recorded as `dvc repro` would (dvc status
    # clean); then the answer, not a job count: the run summary or headline it wrote
    if set(workflow.dag_settings.targets) <= {"all"}:
        if done := madyn_dvc_stages.sync_after_snakemake(Path(workflow.basedir), SUITE):
            print(done)
    for line in madyn_answer.answer_lines(RESULTS, since=START):
        print(line)
