# Phase 5: the predictors, their evaluation, and a prediction for an architecture outside
# the suite.

rule evaluate:
    input:
        features=FEATURES,
        series=[series_path(m) for m in MODELS],
    output:
        metrics=f"{RESULTS}/metrics/predict.json",
        pred=f"{RESULTS}/predict/lomo_predictions.csv",
        curves=f"{RESULTS}/predict/lomo_curves.csv",
        ols=f"{RESULTS}/predict/ols_summary.txt",
        vs=report(f"{RESULTS}/predict/lomo_pred_vs_fitted.png", category="Prediction",
                  caption="../report/pred_vs_fitted.rst"),
        imp=report(f"{RESULTS}/predict/feature_importance.png", category="Prediction",
                   caption="../report/feature_importance.rst"),
        heldout=report(f"{RESULTS}/predict/lomo_heldout_curves.png", category="Prediction",
                       caption="../report/heldout_curves.rst"),
    params:
        settings=json.dumps(madyn_values.predict_settings(config)),
        outdir=lambda wc, output: os.path.dirname(output.pred),
    # the held-out models in parallel (Snakemake caps threads at --cores)
    threads: min(8, len(MODELS))
    resources:
        mem_mb=2000,
    log:
        f"{RESULTS}/logs/evaluate.log",
    conda:
        ENV
    shell:
        "madyn step evaluate --features {input.features:q} --series {input.series:q} "
        "--settings-json {params.settings:q} --out {output.metrics:q} "
        "--out-dir {params.outdir:q} --threads {threads:q} 2> {log:q}"


rule design_lodo:
    # the curve-space predictors under nested leave-one-design-out, the sample-efficiency
    # curve and the design-prior forecast backtest (not in `all`: heavy on tens of designs;
    # `snakemake design_lodo_all`; madyn predict reads its winner when it is there)
    input:
        series=[series_path(m) for m in MODELS],
        configs=[config_path(m) for m in MODELS],
    output:
        metrics=f"{RESULTS}/metrics/design_lodo.json",
        table=f"{RESULTS}/predict/design_lodo.csv",
        efficiency=f"{RESULTS}/predict/sample_efficiency.csv",
        backtest=f"{RESULTS}/forecast/design_backtest.csv",
        figure=report(f"{RESULTS}/predict/sample_efficiency.png", category="Prediction",
                      caption="../report/sample_efficiency.rst"),
    params:
        suite=json.dumps(SUITE_CFG),
        fit=json.dumps(config["fit"]),
        fractions=config.get("forecast", {}).get("fractions", [0.1, 0.25, 0.5]),
    threads: min(8, len(MODELS))
    resources:
        mem_mb=3000,
    log:
        f"{RESULTS}/logs/design_lodo.log",
    conda:
        ENV
    shell:
        "madyn step design-lodo --series {input.series:q} --configs {input.configs:q} "
        "--suite-json {params.suite:q} --fit-settings-json {params.fit:q} "
        "--fractions {params.fractions:q} --threads {threads:q} --out {output.metrics:q} "
        "--out-csv {output.table:q} --out-efficiency {output.efficiency:q} "
        "--out-backtest {output.backtest:q} --out-png {output.figure:q} 2> {log:q}"


rule predict_example:
    # `madyn predict` on params.yaml's predict.example: an architecture outside the suite
    # (predict_model auto: the curve-space winner, trained on the suite's series)
    input:
        features=FEATURES,
        series=[series_path(m) for m in MODELS],
        configs=[config_path(m) for m in MODELS],
    output:
        curves=f"{RESULTS}/predict/example/curves.csv",
        summary=f"{RESULTS}/predict/example/summary.json",
        figure=report(f"{RESULTS}/predict/example/prediction.png", category="Prediction",
                      caption="../report/prediction.rst"),
    params:
        ex=example_args(),
        suite=json.dumps(SUITE_CFG),
        settings=json.dumps(madyn_values.predict_settings(config)),
        outdir=lambda wc, output: os.path.dirname(output.curves),
    resources:
        mem_mb=2000,
    log:
        f"{RESULTS}/logs/predict_example.log",
    conda:
        ENV
    shell:
        "madyn predict --features {input.features:q} {params.ex:q} --out {params.outdir:q} "
        "--settings-json {params.settings:q} --suite-json {params.suite:q} 2> {log:q}"


rule forecast:
    # the backtest: every model truncated at forecast.fractions of its steps and forecast
    # from the other models (the prior) and its early points, against three baselines
    input:
        [series_path(m) for m in MODELS],
    output:
        metrics=f"{RESULTS}/metrics/forecast.json",
        table=f"{RESULTS}/forecast/backtest.csv",
        figure=report(f"{RESULTS}/forecast/backtest.png", category="Forecast",
                      caption="../report/forecast.rst"),
    params:
        settings=json.dumps(config.get("forecast", {})),
        fit=json.dumps(config["fit"]),
        skip=BACKTEST_SKIP,
    # the backtest's models in parallel (Snakemake caps threads at --cores)
    threads: 1 if BACKTEST_SKIP else min(8, len(MODELS))
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/forecast.log",
    conda:
        ENV
    shell:
        "madyn forecast --series {input:q} --out-json {output.metrics:q} "
        "--out-csv {output.table:q} --out-png {output.figure:q} "
        "--settings-json {params.settings:q} --fit-settings-json {params.fit:q} "
        "--threads {threads:q} {params.skip:q} 2> {log:q}"
