# Phase 2: activation statistics per (model, checkpoint), then per-model series.
# Local suites: one measuring process per model (extract_model); hub suites: a download
# job and a measuring job per revision; released suites: the study's files, read as is.


rule corpus_manifest:
    # hub suites need only the held-out file list (no tokenizer training, no token files)
    output:
        f"{RESULTS}/corpus/heldout_manifest.json",
    params:
        corpus=SUITE_CFG.get("corpus", {}),
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/corpus_manifest.log",
    conda:
        ENV
    shell:
        "madyn step heldout-manifest --out {output:q} --max-mb {params.corpus[max_mb]:q} "
        "--heldout-fraction {params.corpus[heldout_fraction]:q} 2> {log:q}"


rule eval_tokens:
    input:
        lambda wc: SRC.corpus_manifest(),
    output:
        f"{RESULTS}/eval/tokens_{{tokenizer}}.npy",
    params:
        tok=lambda wc: SRC.tokenizer_arg(wc.tokenizer),
        n_seqs=EXTRACT.get("n_seqs"),
        seq_len=EXTRACT.get("seq_len"),
        seed=EXTRACT.get("seed"),
        bos=lambda wc: {"corpus-nobos": ["--no-bos"], "corpus-bos": ["--bos"]}.get(
            wc.tokenizer, []),
    resources:
        mem_mb=2000,
    log:
        f"{RESULTS}/logs/eval_tokens_{{tokenizer}}.log",
    conda:
        ENV
    shell:
        "madyn step eval-tokens --corpus-manifest {input:q} --tokenizer {params.tok:q} "
        "--n-seqs {params.n_seqs:q} --seq-len {params.seq_len:q} --seed {params.seed:q} "
        "{params.bos:q} --out {output:q} 2> {log:q}"


# one measuring rule per checkpoint schedule, as the training rules (suite.smk)
for _suffix, _steps, _models in TRAIN_GROUPS:

    rule:
        # every checkpoint of one trained model in one process; a table already measured
        # from the same weights and tokens is kept (update: Snakemake does not delete them)
        name:
            f"extract_model{_suffix}"
        input:
            tokens=lambda wc: f"{RESULTS}/eval/tokens_{SRC.tokenizer(wc.model)}.npy",
            manifest=model_manifest("{model}"),
            weights=lambda wc: [f"{RESULTS}/models/{wc.model}/step{s}/model.safetensors"
                                for s in MODEL_STEPS[wc.model]],
        output:
            [update(f) for f in expand(f"{RESULTS}/stats/{{{{model}}}}/step{{step}}.parquet",
                                       step=_steps)],
        wildcard_constraints:
            model=one_of([m for m in _models if m in MEASURED_PER_MODEL]),
        params:
            model_dir=lambda wc: f"{RESULTS}/models/{wc.model}",
            steps=lambda wc: [str(s) for s in MODEL_STEPS[wc.model]],
            settings=json.dumps(EXTRACT_SETTINGS.to_dict()),
        threads: EXTRACT_SETTINGS.threads
        resources:
            mem_mb=extract_resources("mem_mb"),
            gpu=extract_resources("gpu"),
            gpu_mem_mb=extract_resources("gpu_mem_mb"),
            runtime=lambda wc: _plan(wc.model)["runtime"] * len(MODEL_STEPS[wc.model]),
        log:
            f"{RESULTS}/logs/extract/{{model}}.log",
        conda:
            ENV
        shell:
            "madyn step extract-model {params.model_dir:q} --steps {params.steps:q} "
            "--outs {output:q} --tokens {input.tokens:q} --model {wildcards.model:q} "
            "--settings-json {params.settings:q} "
            "--threads {threads:q} 2> >(tee {log:q} >&2)"


rule download:
    # one hub revision into the cache; with extract.disk_budget_gb, downloads run one
    # after another and wait for earlier revisions to be measured (and deleted)
    input:
        download_gate,
    output:
        f"{RESULTS}/downloads/{{model}}/step{{step}}.json",
    wildcard_constraints:
        model=one_of(MEASURED_PER_CHECKPOINT),
        step=r"\d+",
    params:
        repo=lambda wc: SRC.repo(wc.model),
    resources:
        mem_mb=1000,
        net=1,
        disk_mb=lambda wc: int(1000 * DOWNLOAD_GB[wc.model]) + 1,
        runtime=lambda wc: max(5, int(DOWNLOAD_GB[wc.model] * 2)),
    log:
        f"{RESULTS}/logs/download/{{model}}_step{{step}}.log",
    conda:
        ENV
    shell:
        "madyn step download {params.repo:q} --revision step{wildcards.step:q} --out {output:q} "
        "2> {log:q}"


rule extract_checkpoint:
    input:
        tokens=lambda wc: f"{RESULTS}/eval/tokens_{SRC.tokenizer(wc.model)}.npy",
        marker=f"{RESULTS}/downloads/{{model}}/step{{step}}.json",
    output:
        f"{RESULTS}/stats/{{model}}/step{{step}}.parquet",
    wildcard_constraints:
        model=one_of(MEASURED_PER_CHECKPOINT),
        step=r"\d+",
    params:
        settings=json.dumps(EXTRACT_SETTINGS.to_dict()),
    threads: EXTRACT_SETTINGS.threads
    resources:
        mem_mb=extract_resources("mem_mb"),
        gpu=extract_resources("gpu"),
        gpu_mem_mb=extract_resources("gpu_mem_mb"),
        runtime=extract_resources("runtime"),
    log:
        f"{RESULTS}/logs/extract/{{model}}_step{{step}}.log",
    conda:
        ENV
    shell:
        "madyn extract --marker {input.marker:q} --tokens {input.tokens:q} --out {output:q} "
        "--model {wildcards.model:q} --step {wildcards.step:q} "
        "--settings-json {params.settings:q} --threads {threads:q} 2> {log:q}"


rule series:
    input:
        lambda wc: SRC.series_inputs(wc.model),
    output:
        series=series_path("{model}"),
        integrity=f"{RESULTS}/integrity/{{model}}.json",
    params:
        source=lambda wc, input: (["--stats", *input] if SRC.measure_jobs
                                  else ["--released", SRC.root]),
        export=lambda wc: (["--export", f"{RESULTS}/released", "--export-config",
                            SRC.export_config(wc.model)] if SRC.measure_jobs else []),
        skipped=lambda wc: SRC.skipped_args(wc.model) if hasattr(SRC, "skipped_args") else [],
    resources:
        mem_mb=2000,
    log:
        f"{RESULTS}/logs/series_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn step series --model {wildcards.model:q} {params.source:q} {params.export:q} "
        "{params.skipped:q} "
        "--out {output.series:q} --integrity {output.integrity:q} 2> {log:q}"


rule plot_series:
    input:
        series_path("{model}"),
    output:
        series=report(f"{RESULTS}/figures/{{model}}/series.png", category="Series",
                      caption="../report/series.rst"),
        first_last=report(f"{RESULTS}/figures/{{model}}/first_last.png", category="Series",
                          caption="../report/first_last.rst"),
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/plot_series_{{model}}.log",
    conda:
        ENV
    shell:
        "madyn step plot-series --series {input:q} --out-series {output.series:q} "
        "--out-first-last {output.first_last:q} 2> {log:q}"


rule growth:
    input:
        [series_path(m) for m in MODELS],
    output:
        f"{RESULTS}/metrics/growth.json",
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/growth.log",
    conda:
        ENV
    shell:
        "madyn step growth {input:q} --out {output:q} 2> {log:q}"
