# Phase 3: per-layer curve fits, one job per model; then one table and metrics over models.


rule fit:
    input:
        series_path("{model}"),
    output:
        params=expand(fit_params("{{model}}", "{q}"), q=config["fit"]["quantities"]),
        table=fit_table("{model}"),
    params:
        settings=json.dumps(config["fit"]),
        outdir=lambda wc, output: os.path.dirname(output.params[0]),
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/fit_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn fit --series {input:q} --params-dir {params.outdir:q} --out {output.table:q} "
        "--settings-json {params.settings:q} 2> {log:q}"


rule plot_fit:
    input:
        series=series_path("{model}"),
        fits=fit_table("{model}"),
    output:
        examples=report(fit_figure("{model}", "examples"), category="Fits",
                        subcategory="{model}", caption="../report/fit_examples.rst"),
        quality=report(fit_figure("{model}", "quality"), category="Fits",
                       subcategory="{model}", caption="../report/fit_quality.rst"),
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/plot_fit_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn step plot-fit --series {input.series:q} --fits {input.fits:q} "
        "--out-examples {output.examples:q} --out-quality {output.quality:q} 2> {log:q}"


rule fit_summary:
    input:
        [fit_table(m) for m in MODELS],
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
        "madyn step fit-summary {input:q} --out-table {output.table:q} --out {output.metrics:q} "
        "2> {log:q}"
