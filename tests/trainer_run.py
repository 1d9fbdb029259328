"""A tiny GPT-NeoX trained with the real Hugging Face ``Trainer`` on the CPU (the test
corpus), optionally with madyn's monitor callback: the run folder the ``run`` source and
the monitor tests analyse."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEQ_LEN = 32


def tiny_config(vocab_size: int, dropout: float = 0.0):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=128,
                         max_position_embeddings=64, hidden_dropout=dropout,
                         attention_dropout=dropout, tie_word_embeddings=False)


def probe_tokens(corpus_dir: Path, n: int = 4) -> np.ndarray:
    held = np.load(corpus_dir / "heldout.npy")
    return held[: n * SEQ_LEN].reshape(n, SEQ_LEN).astype(np.int64)


def train(corpus_dir: Path, out: Path, *, steps: int = 200, save_steps: int = 25,
          monitor: bool = True, dropout: float = 0.0, every: int = 25,
          save: bool = True, resume: bool = False, callbacks: tuple = (),
          monitor_out: Path | None = None, **monitor_kw):
    """Train for ``steps`` optimizer steps; checkpoints every ``save_steps`` (with the
    tokenizer); with ``monitor``, madyn's callback writes ``out/madyn-monitor``
    (``monitor_kw`` go to it). ``resume``: from the last checkpoint in ``out``;
    ``callbacks``: more ``TrainerCallback`` s, run before madyn's; ``monitor_out``: the
    monitor's folder instead. Returns the trained model."""
    import torch
    from torch.utils.data import Dataset
    from transformers import (
        GPTNeoXForCausalLM,
        PreTrainedTokenizerFast,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from madyn.measure.monitor_hf import MadynCallback

    tok = PreTrainedTokenizerFast.from_pretrained(str(corpus_dir / "tokenizer"))
    ids = np.load(corpus_dir / "train.npy").astype(np.int64)

    class Windows(Dataset):
        def __len__(self):
            return len(ids) // SEQ_LEN

        def __getitem__(self, i):
            x = torch.as_tensor(ids[i * SEQ_LEN:(i + 1) * SEQ_LEN])
            return {"input_ids": x, "labels": x}

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(tiny_config(len(tok), dropout))
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8,
        learning_rate=3e-3, warmup_steps=10, adam_epsilon=1e-8, logging_steps=25,
        save_strategy="steps" if save else "no", save_steps=save_steps, report_to=[],
        use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0)
    monitor_kw = {"log_until": 16, "every": every, **monitor_kw}
    callbacks = [*callbacks, *([MadynCallback(probe_tokens(corpus_dir), monitor_out,
                                              **monitor_kw)] if monitor else [])]
    trainer = Trainer(model=model, args=args, train_dataset=Windows(),
                      processing_class=tok, data_collator=default_data_collator,
                      callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if resume else None)
    return model


def family_config(family: str, vocab_size: int, layers: int = 4):
    """A tiny config of ``family`` (llama, gpt_neox, qwen3): width 32, ``layers`` layers,
    2 heads, context 128."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers,
                  num_attention_heads=2, intermediate_size=128,
                  max_position_embeddings=128, tie_word_embeddings=False)
    if family == "llama":
        return transformers.LlamaConfig(num_key_value_heads=2, **common)
    if family == "qwen3":
        return transformers.Qwen3Config(num_key_value_heads=2, head_dim=16, **common)
    return transformers.GPTNeoXConfig(**common)


def train_schedule(corpus_dir: Path, out: Path, *, family: str, steps: int,
                   schedule: str, lr: float = 3e-3, save_steps: int = 25,
                   warmup: int = 10, seed: int = 0) -> None:
    """Train a tiny ``family`` model with the real HF ``Trainer`` for ``steps`` steps under
    the ``schedule`` (transformers' lr_scheduler_type: cosine, linear, constant, ...),
    peak ``lr``; a checkpoint every ``save_steps`` (their trainer_state.json states
    ``max_steps``)."""
    import torch
    from torch.utils.data import Dataset
    from transformers import (
        AutoModelForCausalLM,
        PreTrainedTokenizerFast,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    tok = PreTrainedTokenizerFast.from_pretrained(str(corpus_dir / "tokenizer"))
    ids = np.load(corpus_dir / "train.npy").astype(np.int64)

    class Windows(Dataset):
        def __len__(self):
            return len(ids) // SEQ_LEN

        def __getitem__(self, i):
            x = torch.as_tensor(ids[i * SEQ_LEN:(i + 1) * SEQ_LEN])
            return {"input_ids": x, "labels": x}

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, len(tok)))
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8,
        learning_rate=lr, lr_scheduler_type=schedule, warmup_steps=warmup,
        logging_steps=25, save_strategy="steps", save_steps=save_steps, report_to=[],
        use_cpu=True, seed=seed, data_seed=seed, disable_tqdm=True,
        dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=Windows(), processing_class=tok,
            data_collator=default_data_collator).train()
