# Phase 2: activation statistics per (model, checkpoint), then per-model series.


rule corpus_manifest:
    # hub suites need only the held-out file list (no tokenizer training, no token files)
    output:
        f"{RESULTS}/corpus/heldout_manifest.json",
    params:
        corpus=SUITE_CFG.get("corpus", {}),
    run:
        from madyn.corpus import collect_files, stdlib_root
        from madyn.io import write_json

        files = collect_files(stdlib_root(), params.corpus["max_mb"],
                              params.corpus["heldout_fraction"])
        write_json(output[0], {"root": str(stdlib_root()),
                               "files": [f.__dict__ for f in files]})


rule eval_tokens:
    input:
        (f"{RESULTS}/corpus/manifest.json" if SOURCE == "local"
         else f"{RESULTS}/corpus/heldout_manifest.json"),
    output:
        f"{RESULTS}/eval/tokens_{{tokenizer}}.npy",
    params:
        tok=lambda wc: (f"{RESULTS}/corpus/tokenizer" if wc.tokenizer == "corpus"
                        else wc.tokenizer.replace("--", "/")),
    log:
        f"{RESULTS}/logs/eval_tokens_{{tokenizer}}.log",
    shell:
        "madyn eval-tokens --corpus-manifest {input} --tokenizer {params.tok} "
        f"--n-seqs {EXTRACT.get('n_seqs')} --seq-len {EXTRACT.get('seq_len')} "
        f"--seed {EXTRACT.get('seed')} --out {{output}} 2> {{log}}"


def _checkpoint_args(wc):
    if SOURCE == "local":
        return f"{RESULTS}/models/{wc.model}/step{wc.step}"
    return f"{hub_model(wc.model)['repo']} --revision step{wc.step}"


rule extract_checkpoint:
    input:
        tokens=lambda wc: f"{RESULTS}/eval/tokens_{tokenizer_of(wc.model)}.npy",
        trained=lambda wc: [model_manifest(wc.model)] if SOURCE == "local" else [],
    output:
        f"{RESULTS}/stats/{{model}}/step{{step}}.parquet",
    wildcard_constraints:
        step=r"\d+",
    params:
        ckpt=_checkpoint_args,
        delete="--delete-download" if EXTRACT.get("delete_downloads") else "",
    threads: EXTRACT.get("threads", 1)
    log:
        f"{RESULTS}/logs/extract/{{model}}_step{{step}}.log",
    shell:
        "madyn extract {params.ckpt} --tokens {input.tokens} --out {output} "
        "--model {wildcards.model} --step {wildcards.step} "
        f"--dtype {EXTRACT.get('dtype')} --device {EXTRACT.get('device')} "
        f"--batch-size {EXTRACT.get('batch_size')} "
        "--threads {threads} {params.delete} 2> {log}"


def _stats_inputs(wc):
    if SOURCE == "released":
        return []
    return [f"{RESULTS}/stats/{wc.model}/step{s}.parquet" for s in MODEL_STEPS[wc.model]]


rule series:
    input:
        _stats_inputs,
    output:
        series=f"{RESULTS}/series/{{model}}.parquet",
        integrity=f"{RESULTS}/integrity/{{model}}.json",
    params:
        source=(f"--released {SUITE_CFG['path']}" if SOURCE == "released"
                else f"--export {RESULTS}/released"),
    log:
        f"{RESULTS}/logs/series_{{model}}.log",
    shell:
        "madyn series --model {wildcards.model} --stats {input} {params.source} "
        "--out {output.series} --integrity {output.integrity} 2> {log}"


rule plot_series:
    input:
        f"{RESULTS}/series/{{model}}.parquet",
    output:
        series=report(f"{RESULTS}/figures/{{model}}/series.png", category="Series",
                      caption="../report/series.rst"),
        first_last=report(f"{RESULTS}/figures/{{model}}/first_last.png", category="Series",
                          caption="../report/first_last.rst"),
    shell:
        "madyn plot-series --series {input} --out-series {output.series} "
        "--out-first-last {output.first_last}"


def extract_outputs():
    return ([f"{RESULTS}/series/{m}.parquet" for m in MODELS]
            + [f"{RESULTS}/figures/{m}/series.png" for m in MODELS]
            + [f"{RESULTS}/metrics/growth.json"])


rule growth:
    input:
        [f"{RESULTS}/series/{m}.parquet" for m in MODELS],
    output:
        f"{RESULTS}/metrics/growth.json",
    log:
        f"{RESULTS}/logs/growth.log",
    shell:
        "madyn growth {input} --out {output} 2> {log}"
