"""The embedded reference suite: tiny decoder models trained here.

By default each model is a ``GPTNeoXForCausalLM`` (rotary embeddings, parallel residual,
LayerNorm: Pythia's own architecture); a model may instead be another native Hugging Face
family (:data:`FAMILIES`) and be trained with SGD instead of AdamW (:data:`OPTIMIZERS`).
Trained from scratch on the offline corpus, with Hugging Face checkpoints (safetensors)
saved on a Pythia-like log-spaced schedule.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from madyn import kernels
from madyn.io import atomic_path, read_json, sha256_file, write_json
from madyn.progress import Progress

# family -> Hugging Face class, all native (loaded by AutoModelForCausalLM, no remote code)
FAMILIES = {
    "neox": "GPTNeoXForCausalLM",  # LayerNorm, parallel or sequential residual, GeLU MLP
    "llama": "LlamaForCausalLM",  # pre-RMSNorm, SwiGLU MLP
    "qwen3": "Qwen3ForCausalLM",  # Llama plus QK-norm (RMSNorm of q and k per head)
    "olmo2": "Olmo2ForCausalLM",  # RMSNorm after each sub-block (not before), plus QK-norm
    "gpt2": "GPT2LMHeadModel",  # learned absolute positions, pre-LayerNorm, GeLU MLP, biases
}
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant", "linear")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one embedded model (the schema's model-entry defaults mirror these).

    ``family``: a key of :data:`FAMILIES`; ``parallel_residual`` applies to ``neox`` only
    (True = Pythia: attention and MLP read the same input; False = sequential).
    ``rotary_pct``: fraction of each head rotated (neox only; gpt2 has learned absolute
    positions instead, the other families rotate all).
    """

    name: str
    layers: int
    width: int
    heads: int
    ff_mult: int = 4
    rotary_pct: float = 0.25
    family: str = "neox"
    parallel_residual: bool = True
    rope_theta: float = 10000.0  # rotary base (llama, qwen3, olmo2); huge: nearly no rotation

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name}: family {self.family!r} is not one of "
                             f"{', '.join(FAMILIES)}")
        if self.family != "neox" and not self.parallel_residual:
            raise ValueError(f"model {self.name}: parallel_residual applies to family neox "
                             f"only, not {self.family}")


@dataclass(frozen=True)
class TrainSpec:
    """Training recipe shared by a suite (steps are optimizer updates)."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup: int
    min_lr_ratio: float
    weight_decay: float
    beta1: float
    beta2: float
    seed: int
    log_until: int  # checkpoints at 0, 1, 2, 4, ... up to this step ...
    every: int  # ... then every ``every`` steps, and always at ``steps``
    optimizer: str = "adamw"  # adamw (lr, beta1, beta2, eps, weight_decay) or sgd
    eps: float = 1e-8  # AdamW's epsilon
    momentum: float = 0.9  # SGD's (heavy-ball) momentum
    bos: bool | None = None  # a BOS token at position 0 (None: the corpus's; text: none)
    schedule: str = "cosine"  # cosine or linear (to min_lr_ratio * lr) or constant, after warmup

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer: {self.optimizer!r} is not one of "
                             f"{', '.join(OPTIMIZERS)}")
        if not self.eps > 0:
            raise ValueError(f"train.eps: {self.eps} must be > 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule: {self.schedule!r} is not one of "
                             f"{', '.join(SCHEDULES)}")


def checkpoint_steps(steps: int, log_until: int, every: int) -> list[int]:
    """Pythia-like schedule: 0, powers of two up to ``log_until``, then every ``every``.

    >>> checkpoint_steps(500, 64, 100)
    [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500]
    """
    out = {0, steps}
    p = 1
    while p <= min(log_until, steps):
        out.add(p)
        p *= 2
    out.update(range(every, steps + 1, every))
    return sorted(out)


def checkpoint_dir(model_dir: str | Path, step: int) -> Path:
    """Where a trained model's checkpoint of ``step`` lives: ``model_dir/step{N}``."""
    return Path(model_dir) / f"step{step}"


def config_kwargs(spec: ModelSpec, vocab_size: int, seq_len: int, eot_id: int) -> dict:
    """The keyword arguments of ``spec``'s Hugging Face config (plain values, no
    transformers), with ``model_type``: no dropout, untied embeddings, intermediate size
    ``ff_mult * width`` for every family (a SwiGLU MLP has 3 such matrices, gate, up and
    down, so it holds 1.5x the MLP parameters of a GeLU one of the same ff_mult)."""
    if spec.width % spec.heads:
        raise ValueError(f"model {spec.name}: width {spec.width} not divisible by heads")
    common = {"vocab_size": vocab_size, "hidden_size": spec.width,
              "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
              "intermediate_size": spec.ff_mult * spec.width,
              "max_position_embeddings": seq_len, "tie_word_embeddings": False,
              "attention_dropout": 0.0, "bos_token_id": eot_id, "eos_token_id": eot_id}
    if spec.family == "gpt2":
        return {"model_type": "gpt2", "vocab_size": vocab_size, "n_embd": spec.width,
                "n_layer": spec.layers, "n_head": spec.heads,
                "n_inner": spec.ff_mult * spec.width, "n_positions": seq_len,
                "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0, "tie_word_embeddings": False, "bos_token_id": eot_id,
                "eos_token_id": eot_id}
    if spec.family == "neox":
        return {"model_type": "gpt_neox", **common, "hidden_act": "gelu",
                "rotary_pct": spec.rotary_pct, "use_parallel_residual": spec.parallel_residual,
                "hidden_dropout": 0.0}
    model_type = {"llama": "llama", "qwen3": "qwen3", "olmo2": "olmo2"}[spec.family]
    return {"model_type": model_type, **common, "hidden_act": "silu",
            "num_key_value_heads": spec.heads, "head_dim": spec.width // spec.heads,
            "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta}}


def model_config(spec: ModelSpec, vocab_size: int, seq_len: int, eot_id: int):
    """The Hugging Face config of ``spec`` (its family's native class)."""
    import transformers

    kw = config_kwargs(spec, vocab_size, seq_len, eot_id)
    cls = {"gpt_neox": transformers.GPTNeoXConfig, "llama": transformers.LlamaConfig,
           "qwen3": transformers.Qwen3Config, "olmo2": transformers.Olmo2Config,
           "gpt2": transformers.GPT2Config}
    config = cls[kw.pop("model_type")](**kw)
    config.architectures = [FAMILIES[spec.family]]
    return config


def design_record(spec: ModelSpec, train: TrainSpec) -> dict:
    """The design axes of a trained model, as recorded in its manifest and checkpoints:
    family, residual layout, norm placement, QK-norm, optimiser and its hyperparameters."""
    opt = ({"lr": train.lr, "beta1": train.beta1, "beta2": train.beta2, "eps": train.eps,
            "weight_decay": train.weight_decay} if train.optimizer == "adamw"
           else {"lr": train.lr, "momentum": train.momentum,
                 "weight_decay": train.weight_decay})
    return {"family": spec.family, "hf_class": FAMILIES[spec.family],
            "parallel_residual": spec.family == "neox" and spec.parallel_residual,
            "norm": "post" if spec.family == "olmo2" else "pre",
            "qk_norm": spec.family in ("qwen3", "olmo2"),
            "optimizer": train.optimizer, "optimizer_params": opt, "seed": train.seed}


def spec_record(spec: ModelSpec) -> dict:
    """``spec`` as plain values, ``rope_theta`` left out at its default (so that suites
    that never set it keep their records and Snakemake parameters)."""
    d = dict(spec.__dict__)
    if d["rope_theta"] == 10000.0:
        del d["rope_theta"]
    return d


def train_record(train: TrainSpec) -> dict:
    """``train`` as plain values, leaving out the synthetic-corpus fields at their defaults
    (``bos`` None, ``schedule`` cosine), so that suites that never set them keep the
    records (and Snakemake parameters) they had before these fields existed."""
    d = dict(train.__dict__)
    if d["bos"] is None:
        del d["bos"]
    if d["schedule"] == "cosine":
        del d["schedule"]
    return d


def recipe(design: dict) -> dict:
    """The recipe part of a :func:`design_record`: optimizer, lr and (AdamW) eps."""
    opt = design.get("optimizer_params", {})
    return {"optimizer": design["optimizer"], "lr": opt["lr"],
            **({"eps": opt["eps"]} if "eps" in opt else {})}


def trained_recipe(checkpoint_record: Path) -> dict:
    """The recipe a madyn checkpoint records (``madyn_checkpoint.json``, written by
    :func:`train_model` with its :func:`design_record`)."""
    return recipe(read_json(checkpoint_record))


def make_optimizer(model, train: TrainSpec):
    """AdamW (decoupled weight decay) or SGD with momentum (L2 weight decay, as
    ``torch.optim.SGD`` applies it); matrices decay, vectors (norms, biases) do not."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2),
                             eps=train.eps)


def train_cost(spec: ModelSpec) -> int:
    """Relative training time per step, for longest-first scheduling: layers x
    (width + 64). At these sizes a layer's fixed overhead rivals its width-dependent
    work (measured, 2 threads: 8 x 64 is slower than 6 x 96, which is slower than 4 x 128)."""
    return spec.layers * (spec.width + 64)


def update(model, opt, x, step: int, train: TrainSpec):
    """One optimizer update on the B x T token ids ``x`` at ``step`` (the lr from
    :func:`lr_at`, gradients clipped to norm 1); returns the loss (a 0-d tensor)."""
    import torch

    for g in opt.param_groups:
        g["lr"] = lr_at(step, train)
    loss = model(input_ids=x, labels=x).loss  # HF shifts the labels internally
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def lr_at(step: int, t: TrainSpec) -> float:
    """Linear warmup then decay to ``min_lr_ratio * lr`` at ``steps``: cosine, or linear
    (``schedule: linear``); ``schedule: constant``: the peak lr after the warmup."""
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    if t.schedule == "constant":
        return t.lr
    frac = (step - t.warmup) / max(1, t.steps - t.warmup)
    shape = 1 - frac if t.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * shape)


def _save_checkpoint(model, tokenizer_dir: Path, out: Path, meta: dict) -> None:
    """Save an HF checkpoint (config + safetensors + tokenizer) atomically."""
    with atomic_path(out, folder=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for f in tokenizer_dir.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / "madyn_checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")


def _remove_stale_checkpoints(out_dir: Path) -> None:
    """Delete checkpoints an earlier recipe left in ``out_dir`` (a retrain rewrites them
    all; a changed schedule would otherwise leave steps that no longer belong)."""
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for d in out_dir.glob("step*"):
        if d.is_dir() and d.name[4:].isdigit() and (d / "madyn_checkpoint.json").exists():
            shutil.rmtree(d)


def _batch_source(corpus_dir: Path, train: TrainSpec, bos_id: int | None = None):
    """A function rng -> the next training batch (B x T int64): random windows of the text
    corpus's ``train.npy`` (``train.bos``: position 0 of each window replaced by
    ``bos_id``, the tokenizer's end-of-text token), or fresh sequences of a synthetic
    corpus (its manifest's parameters; ``train.bos`` overrides its BOS token), drawn in
    order from the seed."""
    manifest = read_json(corpus_dir / "manifest.json")
    if manifest.get("source") == "synthetic":
        from madyn.train import synthetic

        spec = synthetic.spec_of(manifest, bos=train.bos)
        stream = synthetic.batches(spec, train.batch_size, train.seq_len, seed=train.seed)
        return lambda rng: next(stream)
    data = np.load(corpus_dir / "train.npy", mmap_mode="r")
    if data.size <= train.seq_len:
        raise ValueError(f"corpus too small for seq_len {train.seq_len}")

    if train.bos and bos_id is None:
        raise ValueError("train.bos on a text corpus needs the tokenizer's BOS id")

    def windows(rng) -> np.ndarray:
        starts = rng.integers(0, data.size - train.seq_len, size=train.batch_size)
        x = np.stack([data[s:s + train.seq_len] for s in starts]).astype(np.int64)
        if train.bos:
            x[:, 0] = bos_id
        return x
    return windows


def train_model(spec: ModelSpec, train: TrainSpec, corpus_dir: str | Path,
                out_dir: str | Path, threads: int = 1) -> dict:
    """Train ``spec`` from scratch and write ``out_dir/step{N}/`` checkpoints.

    Writes ``out_dir/manifest.json`` last (the job's completion marker): the steps,
    the sha256 of each checkpoint's weights and the final training loss.
    Deterministic: same arguments and thread count give bit-identical checkpoints and
    manifest; the same on every x86-64 machine when the kernel paths are pinned
    (:mod:`madyn.kernels`, as madyn's entry points do before torch is imported; the
    manifest's ``kernels`` says whether they were). Returns the manifest plus
    ``started_unix`` and ``train_seconds`` (wall clock).
    """
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(spec, train, Path(corpus_dir), Path(out_dir), threads)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(spec: ModelSpec, train: TrainSpec, corpus_dir: Path, out_dir: Path,
           threads: int) -> dict:
    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.manual_seed(train.seed)

    tok_dir = corpus_dir / "tokenizer"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    next_batch = _batch_source(corpus_dir, train, tok.eos_token_id)
    config = model_config(spec, len(tok), train.seq_len, tok.eos_token_id)
    model = getattr(transformers, FAMILIES[spec.family])(config)
    model.train()
    opt = make_optimizer(model, train)
    design = design_record(spec, train)
    rng = np.random.default_rng(train.seed)
    schedule = checkpoint_steps(train.steps, train.log_until, train.every)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_checkpoints(out_dir)
    progress = Progress(spec.name, train.steps)
    started = time.time()
    n_params = sum(p.numel() for p in model.parameters())
    losses: list[float] = []
    loss_val = float("nan")
    for step in range(train.steps + 1):
        if step in schedule:
            meta = {"model": spec.name, "step": step, "loss": loss_val,
                    "seed": train.seed, "threads": threads, **design}
            _save_checkpoint(model, tok_dir, checkpoint_dir(out_dir, step), meta)
        if step == train.steps:
            break
        x = torch.from_numpy(next_batch(rng))  # B x T ids; HF shifts labels internally
        loss_val = float(update(model, opt, x, step, train).detach())
        losses.append(loss_val)
        progress.update(step + 1, loss_val)
    progress.update(train.steps, loss_val, force=True)
    loss_every = max(1, len(losses) // 200)  # about 200 points of the training loss
    manifest = {
        "model": spec.name,
        "architecture": spec_record(spec),
        "n_params": n_params,
        "train": train_record(train),
        "design": design,
        "threads": threads,
        "kernels": kernels.record(),  # pinned kernel paths: the same weights on every CPU
        "steps": schedule,
        "weights_sha256": {
            str(s): sha256_file(checkpoint_dir(out_dir, s) / "model.safetensors")
            for s in schedule
        },
        "final_loss": float(np.mean(losses[-20:])) if losses else None,

        "loss_curve": losses[::loss_every],
        "loss_steps": list(range(1, len(losses) + 1))[::loss_every],  # step of each loss
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    write_json(out_dir / "manifest.json", manifest)
    # wall-clock timing stays out of the manifest, which is deterministic like the weights
    return {**manifest, "started_unix": started, "train_seconds": time.time() - started}


def training_summary(timings: dict[str, dict], budget_s: float | None = None) -> dict:
    """Training time of a suite from its models' timing records (seconds, wall clock):
    per model, ``started_unix`` and ``train_seconds`` as :func:`train_model` returns them.

    ``wall_s`` is the time during which at least one training job ran (the union of the
    jobs' intervals): what ``snakemake --cores N`` spent training (corpus excluded), and
    not inflated when a model is added days later. ``sum_s`` is the total over jobs.
    Records without timing (models trained by an older madyn) are listed as ``untimed``.
    """
    timed = {m: x for m, x in timings.items() if "train_seconds" in x}
    out: dict = {
        "models": {m: round(x["train_seconds"], 1) for m, x in sorted(timed.items())},
        "untimed": sorted(set(timings) - set(timed)),
        "threads": sorted({x.get("threads") for x in timings.values()} - {None}),
    }
    if timed:
        spans = sorted((x["started_unix"], x["started_unix"] + x["train_seconds"])
                       for x in timed.values())
        wall, (lo, hi) = 0.0, spans[0]
        for a, b in spans[1:]:
            if a > hi:
                wall, lo = wall + hi - lo, a
            hi = max(hi, b)
        out["wall_s"] = round(wall + hi - lo, 1)
        out["sum_s"] = round(sum(x["train_seconds"] for x in timed.values()), 1)
        if budget_s is not None:
            out["budget_s"] = budget_s
            out["within_budget"] = out["wall_s"] <= budget_s
    return out
