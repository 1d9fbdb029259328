"""Predict and forecast: ``madyn predict`` (a design's per-layer curves before training)
and ``madyn forecast`` (a run's curves from its first steps, or the backtest of a suite)."""

from __future__ import annotations

import argparse

from madyn.cli.common import add, json_arg, pick, positive_int, say

GROUP = "predict and forecast"


def _cmd_predict(args: argparse.Namespace) -> int:
    from madyn.stages import predict

    try:
        q = predict.query(**pick(args, "params", "settings_json", "features", "config",
                                  "layers", "width", "heads", "ff_mult", "rotary_pct",
                                  "vocab_size", "family", "sequential", "optimizer", "lr",
                                  "eps", "steps", "suite_json"))
    except predict.InputError as e:
        say(f"madyn predict: {e}")
        return 2
    try:
        summary = predict.predict(q.features, q.config, q.steps, q.settings, args.out,
                                  last_step=args.last_step, suite=q.suite)
    except predict.InputError as e:
        say(f"madyn predict: {e}")
        return 2
    if summary.get("fallback"):
        say(f"madyn predict: note: {summary['fallback']}")
    say(f"madyn predict: {predict.model_line(summary)}")
    if summary.get("warning"):
        say(f"madyn predict: warning: {summary['warning']}")
    if summary.get("recipe_warning"):
        say(f"madyn predict: warning: {summary['recipe_warning']}")
    if note := predict.design_note(q, summary):
        say(f"madyn predict: note: {note}")
    for line in predict.summary_lines(summary):
        say(line)
    say(f"-> {args.out}/curves.csv, summary.json, prediction.png")
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from madyn.settings import FitSettings, ForecastSettings
    from madyn.stages import forecast_backtest

    s = ForecastSettings.from_dict(json_arg(args.settings_json))
    fit = FitSettings.from_dict(json_arg(args.fit_settings_json))
    if args.run:
        return _forecast_run(args, s, fit)
    if not args.series:
        raise ValueError("a backtest needs --series")
    if not (args.out_json and args.out_csv and args.out_png):
        raise ValueError("a backtest needs --out-json, --out-csv and --out-png")
    summary = forecast_backtest.backtest(args.series, args.out_json, args.out_csv, args.out_png,
                                         s, fit, workers=args.threads, skip=args.skip)
    for line in forecast_backtest.backtest_lines(summary, s.quantities):
        say(line)
    return 0


def _forecast_run(args: argparse.Namespace, s, fit) -> int:
    """``madyn forecast --run``: the forecast of a run to its planned last step, or
    (``--score``) the scoring of its archived forecasts."""
    from madyn.stages import forecast, forecast_score

    if not args.out_dir:
        raise ValueError("--run needs --out-dir")
    if args.score:
        doc = forecast_score.score(args.run, args.out_dir)
        for line in forecast_score.score_lines(doc):
            say(line)
        say(f"-> {args.out_dir}/score.json")
        return 0
    last = args.last_step
    if last is None and args.run_folder:
        from madyn.measure.run_plan import planned_last_step

        last = planned_last_step(args.run_folder)
    if last is None:
        why = ("--run needs --last-step (or --run-folder whose trainer_state.json or "
               "madyn_monitor.json states max_steps)")
        if not args.record_refusal:
            raise ValueError(why)
        forecast.record_refusal(args.run, args.out_dir, f"the planned last step is unknown: "
                                f"{why}")
        say(f"madyn forecast: refused: the planned last step is unknown (recorded in "
            f"{args.out_dir})")
        return 0
    summary = forecast.forecast_run(
        args.run, last, args.out_dir, s, fit, prior=args.prior, series_paths=args.series,
        run_folder=args.run_folder, run_tokens=args.run_tokens,
        recipe=json_arg(args.run_recipe), record_refusal=args.record_refusal)
    if summary.get("refused"):
        say(f"madyn forecast: refused: {summary['refused']} (recorded in {args.out_dir})")
        return 0
    dp = summary.get("design_prior") or {}
    if dp.get("outside"):
        say(f"madyn forecast: the run is outside the design space of {dp['path']}: "
            f"{'; '.join(dp['outside'])}" + ("" if dp["used"] else
                                               " (the relative-time priors instead)"))
    dist = summary.get("prior_distance") or {}
    if dp.get("used"):
        kinds = ", ".join(f"{q} {v['kind']}" for q, v in dp.get("quantities", {}).items())
        say(f"madyn forecast: prior {summary['prior']}: the run's design predicted ({kinds}),"
            " intervals calibrated on designs left out")
    else:
        say(f"madyn forecast: prior {summary['prior']}: foreign "
            f"{dist.get('foreign', 'unknown')} (0: the run's own recipe, 1: entirely foreign;"
            " intervals widened by it)")
    say(f"madyn forecast: {args.run} to step {last} -> {args.out_dir}")
    return 0


def register(sub) -> list[tuple[str, str]]:
    """Add ``predict`` and ``forecast``; their (name, one-line help)."""
    from madyn.architecture import MAX_LAYERS, MAX_WIDTH, MIN_WIDTH

    c = add(
        sub, "predict", _cmd_predict,
        "predict an architecture's per-layer massive-activation curves",
        "Train the predictors on every fitted (model, layer) and predict the top1/median "
        "curve of each layer of a new architecture, with its peak step and final ratio and "
        "bootstrap intervals. Give a Hugging Face config.json of any decoder-only model, or "
        "--layers/--width/--heads for a Pythia-style one. Plausible shapes only: layers "
        f"1-{MAX_LAYERS}, width {MIN_WIDTH}-{MAX_WIDTH}, heads 1-width dividing width (bad "
        "input: a one-line error, exit code 2, nothing written).",
        example="madyn predict --config path/to/config.json --out results/mine")
    c.add_argument("--config", help="a Hugging Face config.json (its shape within the "
                   "bounds below)")
    c.add_argument("--layers", type=int, help=f"1-{MAX_LAYERS}")
    c.add_argument("--width", type=int, help=f"{MIN_WIDTH}-{MAX_WIDTH}, divisible by heads")
    c.add_argument("--heads", type=int, help="1-width, dividing width")
    c.add_argument("--ff-mult", type=int, help="1-64 (default 4)")
    c.add_argument("--rotary-pct", type=float, help="(0, 1] (default 0.25)")
    c.add_argument("--vocab-size", type=int, default=512)
    d = c.add_argument_group("design (used where the training models vary in it)")
    d.add_argument("--family", choices=["neox", "llama", "qwen3", "olmo2"],
                   help="block layout with --layers/--width/--heads (default neox)")
    d.add_argument("--sequential", action="store_true",
                   help="neox: sequential residual (default parallel, as Pythia)")
    d.add_argument("--optimizer", choices=["adamw", "sgd"], help="the training optimiser")
    d.add_argument("--lr", type=float, help="peak learning rate, in (0, 10]")
    d.add_argument("--eps", type=float, help="Adam epsilon, in (0, 1]")
    c.add_argument("--params", default="params.yaml", help="settings (default params.yaml)")
    c.add_argument("--settings-json", help="PredictSettings as JSON (instead of --params)")
    c.add_argument("--suite-json", help="with --settings-json: the suite's section as JSON "
                   "(its design labels and recipes, for predict_model auto)")
    c.add_argument("--features", help="feature table (default: the active suite's; "
                   "required with --settings-json)")
    c.add_argument("--steps", help="comma-separated steps (default: log-spaced to the "
                   "training data's last step)")
    c.add_argument("--last-step", type=positive_int, help="the run's planned last step "
                   "(checked against the training models' schedules)")
    c.add_argument("--out", default="prediction", help="output folder (default prediction/)")

    c = add(sub, "forecast", _cmd_forecast,
             "forecast a run from its first steps (or backtest a complete suite)",
             "With --run: forecast that series to its planned --last-step on time relative "
             "to the schedules, from the prior (--prior, default the committed one; or "
             "--series): the last value times the prior's relative change, shrunk toward no "
             "change and widened as far as the prior is foreign to the run (curves.csv, "
             "summary.json with prior_distance, forecast.png, score.json in --out-dir); "
             "--score scores the archived forecasts against the checkpoints since. "
             "Without: truncate every model of --series at each fraction and "
             "forecast the rest, against three baselines (last value, the best AICc fit on "
             "the early points, the prior alone).",
             example="madyn forecast --run mine.parquet --last-step 2000 --out-dir "
             "forecast/")
    c.add_argument("--series", nargs="+", help="series Parquets: the prior's models "
                   "(with --run, instead of --prior) and, without --run, the models "
                   "backtested")
    c.add_argument("--run", help="series Parquet of a run still training")
    c.add_argument("--last-step", type=int, help="the run's planned last step (default: "
                   "max_steps from --run-folder)")
    c.add_argument("--prior", nargs="+", help="with --run: priors made by madyn step "
                   "make-prior (default: the committed ones, data/prior/*.parquet: the atlas "
                   "design prior for a run inside its design space, else the relative-time "
                   "ones)")
    c.add_argument("--run-folder", help="with --run: the run's folder (checkpoints or "
                   "monitor), for its family, vocabulary, peak lr and planned last step")
    c.add_argument("--run-tokens", help="with --run: the .npy the run was measured on "
                   "(its evaluation batch, compared with the prior's)")
    c.add_argument("--run-recipe", help="with --run: JSON of what the folder does not say, "
                   "e.g. '{\"schedule\": \"cosine\", \"lr\": 0.003}'")
    c.add_argument("--record-refusal", action="store_true", help="with --run: a forecast "
                   "that cannot be made is recorded in --out-dir (summary.json 'refused', "
                   "an empty curves.csv, a figure saying why) and exits 0")
    c.add_argument("--score", action="store_true", help="with --run: score the forecasts "
                   "archived in --out-dir against the run's checkpoints since (score.json)")
    c.add_argument("--out-dir", help="with --run: where the forecast goes")
    c.add_argument("--out-json", help="backtest metrics (JSON)")
    c.add_argument("--out-csv", help="backtest table (CSV)")
    c.add_argument("--out-png", help="backtest figure")
    c.add_argument("--settings-json", help="params.yaml's forecast section, as JSON")
    c.add_argument("--fit-settings-json", help="params.yaml's fit section (early-fit "
                   "baseline, asymptotes), as JSON")
    c.add_argument("--threads", type=positive_int, default=1,
                   help="processes the backtest's models are spread over")
    c.add_argument("--skip", metavar="REASON", help="record that this suite has no backtest, "
                   "and why (the outs say so; nothing is forecast)")
    return [("predict", "predict a design's per-layer curves before training"),
            ("forecast", "forecast a run from its first steps (or backtest a suite)")]
