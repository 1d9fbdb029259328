# Phase 3: per-layer curve fits, one job per model; then one table and metrics over models.


rule fit:
    input:
        f"{RESULTS}/series/{{model}}.parquet",
    output:
        params=expand(f"{RESULTS}/params/{{{{model}}}}/layer_fit_params_{{q}}.json",
                      q=config["fit"]["quantities"]),
        table=f"{RESULTS}/fits/{{model}}.parquet",
    params:
        settings=quoted_json(config["fit"]),
        outdir=lambda wc, output: os.path.dirname(output.params[0]),
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/fit_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn fit --series {input} --params-dir {params.outdir} --out {output.table} "
        "--settings-json {params.settings} 2> {log}"


rule plot_fit:
    input:
        series=f"{RESULTS}/series/{{model}}.parquet",
        fits=f"{RESULTS}/fits/{{model}}.parquet",
    output:
        examples=report(f"{RESULTS}/fits/figures/{{model}}_examples.png", category="Fits",
                        subcategory="{model}", caption="../report/fit_examples.rst"),
        quality=report(f"{RESULTS}/fits/figures/{{model}}_quality.png", category="Fits",
                       subcategory="{model}", caption="../report/fit_quality.rst"),
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/plot_fit_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn plot-fit --series {input.series} --fits {input.fits} "
        "--out-examples {output.examples} --out-quality {output.quality} 2> {log}"


rule fit_summary:
    input:
        [f"{RESULTS}/fits/{m}.parquet" for m in MODELS],
    output:
        table=f"{RESULTS}/fits/all.parquet",
        metrics=f"{RESULTS}/metrics/fit.json",
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/fit_summary.log",
    conda:
        ENV
    shell:
        "madyn fit-summary {input} --out-table {output.table} --out {output.metrics} 2> {log}"
