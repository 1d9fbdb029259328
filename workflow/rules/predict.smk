# Phases 4-5: the (model, layer) feature table, the predictors and their evaluation, and a
# prediction for an architecture outside the suite.

FEATURES = (f"{RESULTS}/features/fitted_param_dataset_"
            f"{config['features']['parametrisation']}.parquet")


rule model_config:
    # the architecture of each model: its config.json (local: from its last checkpoint)
    input:
        lambda wc: [model_manifest(wc.model)] if SOURCE == "local" else [],
    output:
        f"{RESULTS}/configs/{{model}}.json",
    params:
        src=lambda wc: (f"{RESULTS}/models/{wc.model}/step{MODEL_STEPS[wc.model][-1]}"
                        if SOURCE == "local" else hub_model(wc.model)["repo"]),
    shell:
        "madyn config-json {params.src} --out {output}"


rule features:
    input:
        fits=[f"{RESULTS}/fits/{m}.parquet" for m in MODELS],
        configs=[f"{RESULTS}/configs/{m}.json" for m in MODELS],
    output:
        parquet=FEATURES,
        csv=FEATURES.replace(".parquet", ".csv"),
    params:
        configs=lambda wc, input: [f"{m}={c}" for m, c in zip(MODELS, input.configs)],
        p=config["features"]["parametrisation"],
        q=config["features"]["quantity"],
    log:
        f"{RESULTS}/logs/features.log",
    shell:
        "madyn features --fits {input.fits} --config {params.configs} "
        "--parametrisation {params.p} --quantity {params.q} --out {output.parquet} "
        "--out-csv {output.csv} 2> {log}"


rule evaluate:
    input:
        features=FEATURES,
        series=[f"{RESULTS}/series/{m}.parquet" for m in MODELS],
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
        settings=quoted_json(madyn_config.predict_settings(config)),
        outdir=f"{RESULTS}/predict",
    log:
        f"{RESULTS}/logs/evaluate.log",
    shell:
        "madyn evaluate --features {input.features} --series {input.series} "
        "--settings-json {params.settings} --out {output.metrics} --out-dir {params.outdir} "
        "2> {log}"


rule predict_example:
    # `madyn predict` on params.yaml's predict.example: an architecture outside the suite
    input:
        FEATURES,
    output:
        curves=f"{RESULTS}/predict/example/curves.csv",
        summary=f"{RESULTS}/predict/example/summary.json",
        figure=report(f"{RESULTS}/predict/example/prediction.png", category="Prediction",
                      caption="../report/prediction.rst"),
    params:
        ex=config["predict"].get("example", {}),
        settings=quoted_json(madyn_config.predict_settings(config)),
        outdir=f"{RESULTS}/predict/example",
    log:
        f"{RESULTS}/logs/predict_example.log",
    shell:
        "madyn predict --features {input} --layers {params.ex[layers]} "
        "--width {params.ex[width]} --heads {params.ex[heads]} --out {params.outdir} "
        "--settings-json {params.settings} 2> {log}"


def predict_outputs():
    out = [f"{RESULTS}/metrics/predict.json", f"{RESULTS}/predict/lomo_heldout_curves.png"]
    if config["predict"].get("example"):
        out.append(f"{RESULTS}/predict/example/prediction.png")
    return out
