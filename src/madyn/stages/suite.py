"""Phase 1, the suite: the offline corpus and tokenizer, one training job per model, and
the suite's training time. Owns the phase's file I/O; the science is in
:mod:`madyn.train.corpus` and :mod:`madyn.train.training` (the trainer)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from madyn.io import read_json, write_json
from madyn.train.training import ModelSpec, TrainSpec, train_model, training_summary


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check(params: str, suite_name: str | None = None) -> str:
    """Validate the params file ``params`` (ValueError naming what is wrong) and summarise
    suite ``suite_name`` (default: the active one) as ``madyn check`` prints it: one line,
    then one line per model of a released or run suite (what its folder holds). A
    released or run suite's folders are checked as the workflow checks them before it
    plans any job."""
    from madyn.workflow import params_file, params_values

    cfg = params_file.load(params)
    name = suite_name or cfg["suite"]
    if name not in cfg["suites"]:
        raise ValueError(f"--suite: no suite {name!r} in {params} (suites: "
                         f"{', '.join(cfg['suites'])})")
    cfg = {**cfg, "suite": name}
    suite = params_values.with_run_defaults(params_values.active(cfg))
    kind = "single-run" if params_values.is_run_analysis(suite) else "study"
    head = (f"{params}: valid. suite={name} ({suite['source']}, {kind}), "
            f"{len(suite['models'])} models")
    if suite["source"] == "released":
        files = params_file.check_released_folder(cfg)
        return "\n".join([head] + [f"  {m}: {len(files[m])} checkpoints "
                                    f"(steps {min(files[m])}-{max(files[m])})"
                                    for m in params_values.model_names(suite)])
    if suite["source"] == "run":
        return "\n".join([head] + _run_lines(cfg, suite))
    counts = sorted({len(params_values.steps(suite, m)) for m in params_values.model_names(suite)})
    each = (f"{counts[0]} checkpoints each" if len(counts) == 1
            else f"{counts[0]}-{counts[-1]} checkpoints each")
    if "design_space" not in suite:
        return f"{head}, {each}"
    from madyn.workflow import design_space

    space = suite["design_space"]
    return (f"{head}, {each}; generated from its design_space ({space['n_designs']} designs "
            f"by {space['sampler']['method']} seed {space['sampler']['seed']}, "
            f"{space['seeded_designs']} with {space['seeds']} seeds):\n"
            + design_space.table(suite["models"]))


def _run_lines(cfg: dict, suite: dict) -> list[str]:
    """One line per model of a run suite: its checkpoints (or monitor tables), what was
    skipped, and its planned last step. ValueError naming the entry when its folder holds
    nothing usable or too few checkpoints."""
    from madyn.measure import runs
    from madyn.workflow import params_file, params_values

    lines = []
    for i, entry in enumerate(suite["models"]):
        where = f"model {entry['name']} (suites.{cfg['suite']}.models.{i}.path)"
        sc = runs.entry_scan(entry, where)
        params_file.check_min_points(cfg, len(sc.steps), f"{where}: {sc.folder}")
        last = params_values.planned_last_step(suite, entry["name"], sc)
        what = "monitor tables" if sc.live else "checkpoints"
        lines.append(f"  {entry['name']}: {len(sc.steps)} {what} (steps {sc.steps[0]}-"
                     f"{sc.steps[-1]}), planned last step "
                     f"{last if last is not None else 'unknown (set last_step)'}"
                     + (f", {len(sc.skipped)} entries skipped" if sc.skipped else ""))
        lines += [f"    skipped {name}: {why}" for name, why in sc.skipped.items()]
    return lines


def train_specs(model: str | None, params: str, spec_json: str | None = None,
                train_json: str | None = None) -> tuple[ModelSpec, TrainSpec]:
    """The architecture and recipe ``madyn step train`` trains: from ``spec_json`` and
    ``train_json`` (JSON text) when given, else model ``model`` of the active suite of the
    params file ``params`` (SystemExit when that suite is not trained locally or has no such
    model)."""
    if spec_json:
        return ModelSpec(**json.loads(spec_json)), TrainSpec(**json.loads(train_json))
    from madyn.workflow import params_file, params_values

    cfg = params_file.load(params)
    active = params_values.active(cfg)
    if active["source"] != "local":
        raise SystemExit(f"madyn step train: suite {cfg['suite']!r} is not trained locally")
    if model not in params_values.model_names(active):
        raise SystemExit(f"madyn step train: no model {model!r} in suite {cfg['suite']!r}")
    return params_values.model_spec(active, model), params_values.train_spec(active, model)


def corpus(out: str, max_mb: float, heldout_fraction: float, vocab_size: int,
           root: str | None = None) -> dict:
    """Build the corpus (files, manifest, tokenizer, token files) under ``out``."""
    from madyn.train.corpus import build_corpus

    t0 = time.monotonic()
    m = build_corpus(out, max_mb, heldout_fraction, vocab_size, root)
    _say(f"corpus: {m['n_files']} files, {m['bytes'] / 1e6:.1f} MB, tokens {m['tokens']}, "
         f"sha256 {m['sha256'][:12]} ({time.monotonic() - t0:.0f}s)")
    return m


def synthetic_corpus(out: str, spec_json: str) -> dict:
    """Write a synthetic corpus (manifest and tokenizer) under ``out``."""
    from madyn.train import synthetic

    try:
        spec = synthetic.SyntheticSpec(**json.loads(spec_json))
    except TypeError as e:
        raise SystemExit(f"madyn step synthetic-corpus: --spec-json: {e}") from None
    m = synthetic.build_corpus(out, spec)
    _say(f"synthetic corpus: {spec.kind}, vocab {spec.vocab}, triggers {m['triggers']}, "
         f"bos {spec.bos}, matrix sha256 {m['matrix_sha256'][:12]}")
    return m


def heldout_manifest(out: str, max_mb: float, heldout_fraction: float) -> None:
    """The held-out file list only (hub suites: evaluation text, no tokenizer training)."""
    from madyn.train.corpus import collect_files, stdlib_root

    files = collect_files(stdlib_root(), max_mb, heldout_fraction)
    write_json(out, {"root": str(stdlib_root()), "files": [f.__dict__ for f in files]})


def train(spec: ModelSpec, recipe: TrainSpec, corpus_dir: str, out: str, threads: int,
          timing_out: str | None = None) -> dict:
    """Train one model; ``timing_out`` records its wall-clock time (kept out of the
    deterministic manifest)."""
    m = train_model(spec, recipe, corpus_dir, out, threads=threads)
    if timing_out:
        write_json(timing_out, {k: m[k] for k in ("model", "threads", "started_unix",
                                                    "train_seconds")})
    _say(f"[{spec.name}] trained {recipe.steps} steps in {m['train_seconds']:.0f}s, "
         f"{len(m['steps'])} checkpoints, final loss {m['final_loss']:.3f}")
    return m


def train_summary(timings: list[str], out: str, budget_min: float | None = None) -> dict:
    """The suite's training time from the jobs' timing files (a DVC metric)."""
    budget = budget_min * 60 if budget_min else None
    s = training_summary({Path(f).stem: read_json(f) for f in timings}, budget)
    write_json(out, s)
    if "wall_s" in s:
        w = s["wall_s"]
        verdict = ""
        if budget:
            verdict = (f", within the {budget_min:g}-minute budget" if s["within_budget"]
                       else f", OVER the {budget_min:g}-minute budget")
        _say(f"suite trained: {len(s['models'])} models in {int(w // 60)} min {w % 60:.0f} s "
             f"wall ({s['sum_s']:.0f} s summed over jobs){verdict}")
    if s["untimed"]:
        _say(f"not timed: {', '.join(s['untimed'])}")
    return s
