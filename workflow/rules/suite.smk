# Phase 1: the suite (corpus, tokenizer, one training job per model). Only sources that
# train (local) ask for these outputs; hub and released suites have nothing to train.


if SYNTHETIC:

    rule corpus:
        # a synthetic corpus (madyn.train.synthetic): its parameters and a word-level tokenizer;
        # training batches and the evaluation batch are drawn from the parameters
        output:
            manifest=f"{RESULTS}/corpus/manifest.json",
        params:
            spec=json.dumps(SUITE_CFG.get("corpus", {})),
            outdir=lambda wc, output: os.path.dirname(output.manifest),
        resources:
            mem_mb=1000,
        log:
            f"{RESULTS}/logs/corpus.log",
        conda:
            ENV
        shell:
            "madyn step synthetic-corpus --out {params.outdir:q} --spec-json {params.spec:q} "
            "2> {log:q}"

else:

    rule corpus:
        output:
            manifest=f"{RESULTS}/corpus/manifest.json",
            train=f"{RESULTS}/corpus/train.npy",
            heldout=f"{RESULTS}/corpus/heldout.npy",
        params:
            corpus=SUITE_CFG.get("corpus", {}),
            outdir=lambda wc, output: os.path.dirname(output.manifest),
        resources:
            mem_mb=2000,
        log:
            f"{RESULTS}/logs/corpus.log",
        conda:
            ENV
        shell:
            "madyn step corpus --out {params.outdir:q} --max-mb {params.corpus[max_mb]:q} "
            "--heldout-fraction {params.corpus[heldout_fraction]:q} "
            "--vocab-size {params.corpus[vocab_size]:q} 2> {log:q}"


# one training rule per checkpoint schedule (common.smk: schedule_groups): a rule's
# outputs name every checkpoint, and models with other step counts have other checkpoints
for _suffix, _steps, _models in TRAIN_GROUPS:

    rule:
        name:
            f"train{_suffix}"
        input:
            f"{RESULTS}/corpus/manifest.json",
        output:
            model_manifest("{model}"),
            timing=f"{RESULTS}/timing/{{model}}.json",
            weights=expand(f"{RESULTS}/models/{{{{model}}}}/step{{step}}/model.safetensors",
                           step=_steps),
        wildcard_constraints:
            model=one_of(_models),
        params:
            outdir=lambda wc, output: os.path.dirname(output[0]),
            spec=lambda wc: json.dumps(spec_record(madyn_values.model_spec(SUITE_CFG, wc.model))),
            train=lambda wc: json.dumps(
                train_record(madyn_values.train_spec(SUITE_CFG, wc.model))),
            corpus=lambda wc, input: os.path.dirname(input[0]),
        threads: SUITE_CFG.get("threads", 1)
        resources:
            mem_mb=2000,
        # longest job first, so that N cores finish together (not the slowest model last)
        priority: lambda wc: train_cost(madyn_values.model_spec(SUITE_CFG, wc.model))
        log:
            f"{RESULTS}/logs/train_{{model}}.log",
        conda:
            ENV
        shell:
            "madyn step train --spec-json {params.spec:q} --train-json {params.train:q} "
            "--corpus {params.corpus:q} --out {params.outdir:q} --threads {threads:q} "
            "--timing-out {output.timing:q} 2> >(tee {log:q} >&2)"


rule train_summary:
    input:
        [f"{RESULTS}/timing/{m}.json" for m in TRAINED],
    output:
        f"{RESULTS}/timing/train.json",
    resources:
        mem_mb=1000,
    log:
        f"{RESULTS}/logs/train_summary.log",
    conda:
        ENV
    shell:
        "madyn step train-summary {input:q} --out {output:q} 2> {log:q}; cat {log:q}"
