# Phase 1: the embedded suite (corpus, tokenizer, one training job per model).
# Hub suites (pythia) have nothing to train: their checkpoints are revisions on the hub.
import json
import shlex

from madyn.suite import train_cost

if SUITE_CFG["source"] == "local":

    rule corpus:
        output:
            manifest=f"{RESULTS}/corpus/manifest.json",
            train=f"{RESULTS}/corpus/train.npy",
            heldout=f"{RESULTS}/corpus/heldout.npy",
        params:
            corpus=SUITE_CFG["corpus"],
        log:
            f"{RESULTS}/logs/corpus.log",
        shell:
            "madyn corpus --out {RESULTS}/corpus --max-mb {params.corpus[max_mb]} "
            "--heldout-fraction {params.corpus[heldout_fraction]} "
            "--vocab-size {params.corpus[vocab_size]} 2> {log}"

    rule train:
        input:
            rules.corpus.output.manifest,
        output:
            f"{RESULTS}/models/{{model}}/manifest.json",
            timing=f"{RESULTS}/timing/{{model}}.json",
        params:
            outdir=lambda wc: f"{RESULTS}/models/{wc.model}",
            spec=lambda wc: shlex.quote(json.dumps(madyn_config.model_spec(SUITE_CFG, wc.model).__dict__)),
            train=lambda wc: shlex.quote(json.dumps(madyn_config.train_spec(SUITE_CFG, wc.model).__dict__)),
        threads: SUITE_CFG["threads"]
        # longest job first, so that N cores finish together (not the slowest model last)
        priority: lambda wc: train_cost(madyn_config.model_spec(SUITE_CFG, wc.model))
        log:
            f"{RESULTS}/logs/train_{{model}}.log",
        shell:
            "madyn train --spec-json {params.spec} --train-json {params.train} "
            "--corpus {RESULTS}/corpus --out {params.outdir} --threads {threads} "
            "--timing-out {output.timing} 2> {log}"

    rule train_summary:
        input:
            expand(rules.train.output.timing, model=MODELS),
        output:
            f"{RESULTS}/metrics/train.json",
        log:
            f"{RESULTS}/logs/train_summary.log",
        shell:
            "madyn train-summary {input} --out {output} 2> {log}; cat {log}"
