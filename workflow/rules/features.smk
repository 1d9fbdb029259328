# Phase 4: each model's architecture (config.json) and the (model, layer) feature table.


rule model_config:
    # the architecture of each model: its config.json (local: from its last checkpoint;
    # hub: from the hub; released: beside its files, or built from its suite entry)
    input:
        lambda wc: SRC.config_inputs(wc.model),
    output:
        config_path("{model}"),
    params:
        src=lambda wc: SRC.config_args(wc.model),
        design=lambda wc: design_args(wc.model),
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/model_config_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn step config-json {params.src:q} {params.design:q} --out {output:q} 2> {log:q}"


rule features:
    input:
        fits=[fit_table(m) for m in MODELS],
        configs=[config_path(m) for m in MODELS],
    output:
        parquet=FEATURES,
        csv=FEATURES.replace(".parquet", ".csv"),
    params:
        configs=lambda wc, input: [f"{m}={c}" for m, c in zip(MODELS, input.configs)],
        p=config["features"]["parametrisation"],
        q=config["features"]["quantity"],
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/features.log",
    conda:
        ENV
    shell:
        "madyn step features --fits {input.fits:q} --config {params.configs:q} "
        "--parametrisation {params.p:q} --quantity {params.q:q} --out {output.parquet:q} "
        "--out-csv {output.csv:q} 2> {log:q}"
