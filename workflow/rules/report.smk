# Phase 6: cross-model figures and tables; `snakemake --report` gathers every figure.


rule report_figures:
    input:
        series=[series_path(m) for m in MODELS],
        configs=[config_path(m) for m in MODELS],
        manifests=[model_manifest(m) for m in TRAINED],
    output:
        layers=f"{RESULTS}/report/layers.csv",
        loss=f"{RESULTS}/report/loss.csv",
        heat=report(f"{RESULTS}/report/peak_heatmaps.png", category="Across models",
                    caption="../report/peak_heatmaps.rst"),
        final=report(f"{RESULTS}/report/final_vs_params.png", category="Across models",
                     caption="../report/final_vs_params.rst"),
        kurt=report(f"{RESULTS}/report/kurtosis.png", category="Across models",
                    caption="../report/kurtosis.rst"),
    params:
        configs=lambda wc, input: [f"{m}={c}" for m, c in zip(MODELS, input.configs)],
        outdir=lambda wc, output: os.path.dirname(output.layers),
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/report_figures.log",
    conda:
        ENV
    shell:
        "madyn step report-figures --series {input.series:q} --config {params.configs:q} "
        "--manifests {input.manifests:q} --out-dir {params.outdir:q} 2> {log:q}"


rule curves:
    # the per-layer top1/median curves as data: `dvc plots diff` compares experiments
    input:
        [series_path(m) for m in MODELS],
    output:
        f"{RESULTS}/report/curves.csv",
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/curves.log",
    conda:
        ENV
    shell:
        "madyn step curves --series {input:q} --out {output:q} 2> {log:q}"
