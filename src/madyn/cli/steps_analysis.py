"""Workflow steps after measuring (``madyn step ...``, called by Snakemake): fit figures
and summary, config.json and the feature table, the predictors' evaluation, the report's
figures, headline and curves."""

from __future__ import annotations

import argparse
import json

from madyn.cli.common import add, json_arg, model_map, outs, pick, positive_int, say


def _cmd_plot_fit(args: argparse.Namespace) -> int:
    from madyn.stages import fit

    fit.plot(args.series, args.fits, args.out_examples, args.out_quality)
    return 0


def _cmd_fit_summary(args: argparse.Namespace) -> int:
    from madyn.stages import fit

    for line in fit.summary_lines(fit.summarise(args.fits, args.out_table, args.out)):
        say(line)
    return 0


def _cmd_config_json(args: argparse.Namespace) -> int:
    from madyn.stages import features

    arch = json.loads(args.arch_json) if args.arch_json else None
    features.config_json(args.out, args.source, args.revision, arch,
                         json_arg(args.design_json))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from madyn.settings import PredictSettings
    from madyn.stages import features

    configs = model_map(args.config, "--config")
    s = PredictSettings(parametrisation=args.parametrisation, quantity=args.quantity)
    t = features.run(args.fits, configs, args.out, args.out_csv, s)
    say(f"feature table: {len(t)} rows ({int(t['usable'].sum())} usable) -> {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from madyn.settings import PredictSettings
    from madyn.stages import predict

    m = predict.evaluate(args.features, args.series,
                         PredictSettings.from_dict(json_arg(args.settings_json)), args.out,
                         args.out_dir, workers=args.threads)
    lomo = m.get("lomo", {}).get("mean_r2", {})
    say("LOMO mean R^2 per model type: "
         + ", ".join(f"{k} {v:.3f}" for k, v in lomo.items() if v is not None))
    return 0


def _cmd_report_figures(args: argparse.Namespace) -> int:
    from madyn.stages import report

    configs = model_map(args.config, "--config")
    layers = report.figures(args.series, configs, args.manifests, args.out_dir)
    say(f"report: {layers['model'].nunique()} models -> {args.out_dir}")
    return 0


def _cmd_headline(args: argparse.Namespace) -> int:
    from madyn.report.headline import count
    from madyn.stages import report

    metrics = report.headline(**pick(args, "growth", "fit", "predict", "forecast",
                                      "interventions", "out"))
    say(f"headline: {count(metrics)} metrics -> {args.out}")
    return 0


def _cmd_curves(args: argparse.Namespace) -> int:
    from madyn.stages import report

    table = report.curves(args.series, args.out)
    say(f"curves: {table['curve'].nunique()} layer curves -> {args.out}")
    return 0


def _cmd_run_summary(args: argparse.Namespace) -> int:
    from madyn.stages import report

    lines = report.run_summary(args.series, model_map(args.forecast, "--forecast"),
                               args.thresholds, args.trend_checkpoints, args.out_csv,
                               args.out_json, args.out_txt)
    print("\n".join(lines))
    return 0


def _cmd_run_headline(args: argparse.Namespace) -> int:
    from madyn.report.headline import count
    from madyn.stages import report

    metrics = report.run_headline(args.fit, args.summary, args.out)
    say(f"headline: {count(metrics)} metrics -> {args.out}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from madyn.workflow.answer import answer_lines

    lines = answer_lines(args.results_dir)
    if not lines:
        raise ValueError(f"{args.results_dir}: no run summary or headline yet")
    print("\n".join(lines))
    return 0


def _suite_designs(suite: dict | None, series: list[str]) -> tuple[dict, dict]:
    """(model -> design label, model -> recipe) of a suite section given as JSON."""
    from madyn.stages.design_lodo import suite_recipes
    from madyn.workflow.params_values import design_labels

    if not suite:
        return {}, {}
    return design_labels(suite), suite_recipes(suite)


def _cmd_design_lodo(args: argparse.Namespace) -> int:
    from madyn.settings import FitSettings
    from madyn.stages import design_lodo

    designs, recipes = _suite_designs(json_arg(args.suite_json), args.series)
    doc = design_lodo.evaluate(
        args.series, args.configs, designs, recipes, args.quantities, args.out,
        args.out_csv, args.out_efficiency, args.out_png, workers=args.threads,
        out_backtest=args.out_backtest, fractions=tuple(args.fractions),
        fit_settings=FitSettings.from_dict(json_arg(args.fit_settings_json)),
        early_fit=not args.no_early_fit)
    for line in design_lodo.table_lines(doc):
        say(line)
    return 0


def _cmd_make_prior(args: argparse.Namespace) -> int:
    from madyn.stages import forecast_prior

    man = forecast_prior.make_prior(args.series, args.out, args.configs, args.tokens,
                                    json_arg(args.train_json), json_arg(args.models_json),
                                    args.suite, evaluation=json_arg(args.eval_json),
                                    design_lodo=args.design_lodo)
    say(f"make-prior: {len(man['models'])} models, {man['rows']} rows -> {args.out} "
        f"(manifest {args.out.rsplit('.', 1)[0]}.json)")
    return 0


def register(sub) -> None:
    """Add the analysis steps to the ``madyn step`` group ``sub``."""
    from madyn.settings import schema_default, schema_enum

    c = add(sub, "plot-fit", _cmd_plot_fit,
             "example fits and fit quality figures of one model")
    outs(c, "--series", "--fits", "--out-examples", "--out-quality")

    c = add(sub, "fit-summary", _cmd_fit_summary,
             "one tidy fit table over all models + metrics")
    c.add_argument("fits", nargs="+", help="per-model fit tables")
    c.add_argument("--out-table", required=True)
    c.add_argument("--out", required=True, help="metrics JSON")


    c = add(sub, "config-json", _cmd_config_json,
             "a model's config.json (local checkpoint or hub)")
    c.add_argument("source", nargs="?", help="checkpoint folder or hub repo id")
    c.add_argument("--arch-json", help="or a GPT-NeoX architecture as JSON: name, layers, "
                   "width, heads, vocab_size[, ff_mult, rotary_pct]")
    c.add_argument("--revision", help="hub revision (default main)")
    c.add_argument("--design-json", help="the model's design label and known recipe as JSON "
                   "(label, optimizer, lr, eps), kept under madyn_design; a madyn checkpoint's "
                   "own record of its recipe takes precedence")
    c.add_argument("--out", required=True)

    c = add(sub, "features", _cmd_features, "the consolidated (model, layer) feature table")
    c.add_argument("--fits", nargs="+", required=True, help="fit tables (Parquet)")
    c.add_argument("--config", nargs="+", required=True, metavar="MODEL=CONFIG_JSON")
    for key in ("parametrisation", "quantity"):
        c.add_argument(f"--{key}", default=schema_default(f"features.{key}"),
                       choices=schema_enum(f"features.{key}"))
    outs(c, "--out", "--out-csv")


    c = add(sub, "evaluate", _cmd_evaluate, "train and evaluate the predictors (study "
             "protocol, leave-one-model-out, curve space)")
    c.add_argument("--features", required=True)
    c.add_argument("--series", nargs="*", default=[], help="observed series (curve space)")
    c.add_argument("--settings-json", help="PredictSettings as JSON (params.yaml: predict)")
    c.add_argument("--out", required=True, help="metrics JSON")
    c.add_argument("--out-dir", required=True, help="predictions, OLS summary, figures")
    c.add_argument("--threads", type=positive_int, default=1,
                   help="processes the held-out models (and designs) are spread over")

    c = add(sub, "report-figures", _cmd_report_figures, "cross-model figures and tables")
    c.add_argument("--series", nargs="+", required=True)
    c.add_argument("--config", nargs="+", required=True, metavar="MODEL=CONFIG_JSON")
    c.add_argument("--manifests", nargs="*", default=[], help="training manifests (loss)")
    c.add_argument("--out-dir", required=True)

    c = add(sub, "headline", _cmd_headline, "the headline metrics (about 30 numbers)",
             "Read the detailed summaries (metrics/growth.json, fit.json, predict.json, "
             "forecast.json, interventions.json) and write the few numbers compared between "
             "experiments (DVC's metrics): growth, fit R², curve-space prediction, forecast.")
    outs(c, "--growth", "--fit", "--predict", "--forecast", "--interventions", "--out")

    c = add(sub, "curves", _cmd_curves, "the per-layer top1/median curves as a tidy CSV",
             "One row per (model, layer, step) of the measured top1/median (flagged "
             "checkpoints left out): the data `dvc plots` draws and `dvc plots diff` compares.")
    c.add_argument("--series", nargs="+", required=True, help="series .parquet files")
    c.add_argument("--out", required=True)

    c = add(sub, "run-summary", _cmd_run_summary, "the run summary: per run and layer, its "
            "kind, first crossings, peak, trend and forecast",
            "Per model (one training run) and layer: the kind at the last checkpoint and since "
            "when, the step at which the ratio first reached each threshold, the peak, the "
            "last value, the recent trend and the forecast final value with its interval "
            "(madyn.report.run_summary). Writes CSV, JSON and the text it prints.")
    c.add_argument("--series", nargs="+", required=True, help="series .parquet files")
    c.add_argument("--forecast", nargs="*", default=[], metavar="MODEL=SUMMARY_JSON",
                   help="each model's forecast summary (a missing file: no forecast)")
    c.add_argument("--thresholds", nargs="+", type=float, required=True)
    c.add_argument("--trend-checkpoints", type=positive_int, required=True)
    outs(c, "--out-csv", "--out-json", "--out-txt")

    c = add(sub, "run-headline", _cmd_run_headline, "the headline of a single-run suite",
            "The suite's size, its fit quality and one section per run (last step, the "
            "middle layers' last and forecast ratio, the highest peak, the kinds' shares).")
    outs(c, "--fit", "--summary", "--out")

    c = add(sub, "summary", _cmd_summary, "print a suite's answer: its run summary or headline",
            "What a finished run prints last: results/<suite>/report/run_summary.txt (a "
            "single-run suite) or the headline (metrics/headline.json) as a few lines.")
    c.add_argument("results_dir", metavar="RESULTS", help="the suite's results folder "
                   "(madyn.workflow.params_values.results_dir)")

    c = add(sub, "make-prior", _cmd_make_prior, "a compact forecast prior from a suite's "
             "series", "Per model, quantity (ratio, top1, median), layer and step: the value "
             "at relative depth (layer + 1) / L and relative step step / last step, in one "
             "Parquet, with a manifest (.json beside it) of each model's family, schedule, "
             "peak lr, vocabulary and evaluation batch; `madyn forecast --run ... --prior` "
             "reads it.",
             example="madyn step make-prior --series results/embedded/series/*.parquet "
             "--configs results/embedded/configs/*.json --out data/prior/embedded.parquet")
    c.add_argument("--series", nargs="+", required=True, help="series .parquet files")
    c.add_argument("--configs", nargs="*", default=[], help="config.json per model, named "
                   "<model>.json (family, vocabulary)")
    c.add_argument("--tokens", help="the evaluation batch (.npy) the series were measured on")
    c.add_argument("--train-json", help="the suite's train section as JSON (steps, lr, "
                   "schedule)")
    c.add_argument("--models-json", help="the suite's model entries as a JSON list (their "
                   "own lr, optimizer, schedule)")
    c.add_argument("--suite", help="the suite's name, for the manifest")
    c.add_argument("--eval-json", help="the suite's extract section as JSON (n_seqs, "
                   "seq_len), when no --tokens")
    c.add_argument("--design-lodo", help="the suite's design_lodo.json (madyn step "
                   "design-lodo): the prior then forecasts from the run's design's predicted "
                   "curve, with its calibrated intervals")
    c.add_argument("--out", required=True, help="the prior (.parquet; its manifest .json "
                   "beside it)")

    c = add(sub, "design-lodo", _cmd_design_lodo, "curve-space predictors of a design "
             "under nested leave-one-design-out, the sample-efficiency curve and the "
             "design-prior forecast backtest",
             "Mean curve, kernel ridge, Gaussian process, empirical-Bayes shrinkage and "
             "XGBoost predict each layer's log curve on time relative to the schedule from "
             "the design features; each design (all its seeds) is held out in turn, and "
             "the model is chosen inside each fold by grouped K-fold over the other "
             "designs. Prints a table per quantity.",
             example="madyn step design-lodo --series results/firsttoken-reference/series/"
             "*.parquet --configs results/firsttoken-reference/configs/*.json --suite-json "
             "\"$(madyn check --suite-json)\" --out design_lodo.json ...")
    c.add_argument("--series", nargs="+", required=True, help="series .parquet files")
    c.add_argument("--configs", nargs="+", required=True, help="config.json per model, "
                   "named <model>.json")
    c.add_argument("--suite-json", help="the suite's section as JSON (design labels, "
                   "recipes)")
    c.add_argument("--quantities", nargs="+", default=["ratio", "top1", "median"])
    c.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.25, 0.5])
    c.add_argument("--fit-settings-json", help="params.yaml's fit section (the early-fit "
                   "baseline)")
    c.add_argument("--no-early-fit", action="store_true", help="leave the early AICc fit "
                   "baseline out (it costs most of the backtest)")
    c.add_argument("--threads", type=positive_int, default=1,
                   help="processes the held-out designs are spread over")
    outs(c, "--out", "--out-csv", "--out-efficiency", "--out-backtest")
    c.add_argument("--out-png", help="the sample-efficiency figure")
