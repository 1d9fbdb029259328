# A cross-model study (analysis: study): the effect of each design against the base design
# and the study's headline.


rule effects:
    # every design against the suite's base_design (bootstrap over seeds), and the
    # across-layer association of kurtosis with cosine similarity (every suite)
    input:
        series=[series_path(m) for m in MODELS],
        fits=[fit_table(m) for m in MODELS],
    output:
        **effects_outputs(),
    params:
        designs=[f"{m}={d}" for m, d in madyn_values.design_labels(SUITE_CFG).items()],
        base=["--base", BASE_DESIGN] if BASE_DESIGN else [],
        png=lambda wc, output: ["--out-png", output.png] if BASE_DESIGN else [],
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/effects.log",
    conda:
        ENV
    shell:
        "madyn effects --series {input.series:q} --fits {input.fits:q} "
        "--design {params.designs:q} {params.base:q} --out-json {output.json:q} "
        "--out-csv {output.csv:q} {params.png:q} 2> {log:q}"


rule headline:
    # the few numbers compared between experiments (DVC's metrics, committed to git)
    input:
        growth=f"{RESULTS}/metrics/growth.json",
        fit=f"{RESULTS}/metrics/fit.json",
        predict=f"{RESULTS}/metrics/predict.json",
        forecast=f"{RESULTS}/metrics/forecast.json",
        interventions=f"{RESULTS}/metrics/interventions.json",
    output:
        HEADLINE,
    resources:
        mem_mb=500,
    log:
        f"{RESULTS}/logs/headline.log",
    conda:
        ENV
    shell:
        "madyn step headline --growth {input.growth:q} --fit {input.fit:q} "
        "--predict {input.predict:q} --forecast {input.forecast:q} "
        "--interventions {input.interventions:q} --out {output:q} 2> {log:q}"
