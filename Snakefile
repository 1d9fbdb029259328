# madyn workflow: suite -> extract -> fit -> features -> predict -> plots.
# Configuration: params.yaml (validated before any job starts). Run: snakemake --cores N
# Phase targets (what the DVC stages call): suite_all, extract_all.
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/suite.smk"
include: "workflow/rules/extract.smk"


rule all:
    default_target: True
    input:
        suite_outputs(),
        extract_outputs(),


rule suite_all:
    input:
        suite_outputs(),


rule extract_all:
    input:
        extract_outputs(),
