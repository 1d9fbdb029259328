# Phase 2 for a run suite: a researcher's run folder (source: run): every checkpoint of one model in one process,
# read in place. Its steps are the model's own (found at planning), so each model gets its
# own rule. A table already measured from the same weights and tokens is kept (update:
# Snakemake does not delete them): a checkpoint that appeared since the last run is the only
# one measured.
import re

for _i, _run_model in enumerate(MEASURED_RUN):
    _run_name = "_".join(re.findall(r"\w+", _run_model))

    rule:
        name:
            f"extract_run_{_i}_{_run_name}"
        input:
            tokens=SRC.tokens(_run_model),
            checkpoints=[f for s in MODEL_STEPS[_run_model]
                         for f in SRC.checkpoint_files(_run_model, s)],
        output:
            [update(stats_path(_run_model, s)) for s in MODEL_STEPS[_run_model]],
        params:
            model=_run_model,
            checkpoints=[SRC.checkpoint(_run_model, s) for s in MODEL_STEPS[_run_model]],
            steps=[str(s) for s in MODEL_STEPS[_run_model]],
            pickle=(["--allow-pickle"]
                    if madyn_values.model_entry(SUITE_CFG, _run_model).get("allow_pickle")
                    else []),
            settings=json.dumps(EXTRACT_SETTINGS.to_dict()),
        threads: EXTRACT_SETTINGS.threads
        resources:
            mem_mb=_plan(_run_model)["mem_mb"],
            gpu=_plan(_run_model)["gpu"],
            gpu_mem_mb=_plan(_run_model)["gpu_mem_mb"],
            runtime=_plan(_run_model)["runtime"] * len(MODEL_STEPS[_run_model]),
        log:
            f"{RESULTS}/logs/extract/{_run_model}.log",
        conda:
            ENV
        shell:
            "madyn step extract-run --checkpoints {params.checkpoints:q} --steps {params.steps:q} "
            "--outs {output:q} --tokens {input.tokens:q} --model {params.model:q} "
            "{params.pickle:q} --settings-json {params.settings:q} --threads {threads:q} "
            "2> >(tee {log:q} >&2)"
