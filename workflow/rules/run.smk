# A single-run suite (analysis: run; every run suite by default): each model is one training
# run, analysed on its own. After the fits: each run's forecast to its planned last step,
# the run summary (per run and layer: kind, first crossings, peak, trend, forecast) and a
# headline of per-run numbers. What only a cross-model study computes (predictors, the
# example prediction, the backtest, interventions) is recorded as not run, in the files
# DVC expects of every suite.


rule forecast_run:
    input:
        series_path("{model}"),
    output:
        summary=f"{RESULTS}/forecast/{{model}}/summary.json",
        curves=f"{RESULTS}/forecast/{{model}}/curves.csv",
        figure=report(f"{RESULTS}/forecast/{{model}}/forecast.png", category="Forecast",
                      subcategory="{model}", caption="../report/forecast_run.rst"),
        score=f"{RESULTS}/forecast/{{model}}/score.json",
    params:
        last_step=lambda wc: forecast_last_step(wc.model),
        run=lambda wc: forecast_run_args(wc.model),
        settings=json.dumps(config.get("forecast", {})),
        fit=json.dumps(config["fit"]),
        outdir=lambda wc, output: os.path.dirname(output.summary),
    resources:
        mem_mb=1500,
    log:
        f"{RESULTS}/logs/forecast_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn forecast --run {input:q} {params.last_step:q} {params.run:q} "
        "--out-dir {params.outdir:q} "
        "--settings-json {params.settings:q} --fit-settings-json {params.fit:q} "
        "--record-refusal 2> {log:q}"


rule run_forecasts:
    # each run's forecast summary, less its per-layer detail (metrics/forecast.json)
    input:
        [f"{forecast_dir(m)}/summary.json" for m in MODELS],
    output:
        f"{RESULTS}/metrics/forecast.json",
    log:
        f"{RESULTS}/logs/run_forecasts.log",
    run:
        madyn_io.write_json(output[0], {
            m: {k: v for k, v in madyn_io.read_json(f).items() if k != "layers"}
            for m, f in zip(MODELS, input)})


rule study_only:
    # the outs of the predict and report stages that only a cross-model study fills
    output:
        predict=f"{RESULTS}/metrics/predict.json",
        folder=f"{RESULTS}/predict/not_run.json",
        interventions=f"{RESULTS}/metrics/interventions.json",
    params:
        reason=STUDY_ONLY,
    log:
        f"{RESULTS}/logs/study_only.log",
    run:
        for f in output:
            madyn_io.write_json(f, {"skipped": params.reason})


rule run_summary:
    input:
        series=[series_path(m) for m in MODELS],
        forecasts=[f"{forecast_dir(m)}/summary.json" for m in MODELS],
    output:
        csv=report(f"{RESULTS}/report/run_summary.csv", category="Run summary",
                   caption="../report/run_summary.rst"),
        json=f"{RESULTS}/report/run_summary.json",
        txt=RUN_SUMMARY,
    params:
        forecasts=lambda wc, input: [f"{m}={f}" for m, f in zip(MODELS, input.forecasts)],
        thresholds=madyn_values.summary_settings(config)["thresholds"],
        trend=madyn_values.summary_settings(config)["trend_checkpoints"],
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/run_summary.log",
    conda:
        ENV
    shell:
        "madyn step run-summary --series {input.series:q} --forecast {params.forecasts:q} "
        "--thresholds {params.thresholds:q} --trend-checkpoints {params.trend:q} "
        "--out-csv {output.csv:q} --out-json {output.json:q} --out-txt {output.txt:q} "
        "> {log:q} 2>&1"


rule run_headline:
    # the few numbers compared between experiments, one section per run
    input:
        fit=f"{RESULTS}/metrics/fit.json",
        summary=f"{RESULTS}/report/run_summary.json",
    output:
        HEADLINE,
    resources:
        mem_mb=500,
    log:
        f"{RESULTS}/logs/headline.log",
    conda:
        ENV
    shell:
        "madyn step run-headline --fit {input.fit:q} --summary {input.summary:q} "
        "--out {output:q} 2> {log:q}"
