"""Synthetic corpora for the ``firsttoken`` suite: Bigram-Backcopy and a plain bigram chain.

Bigram-Backcopy (Guo et al. 2024, *Active-Dormant Attention Heads*, arXiv 2410.13835): a
bigram Markov chain over ``vocab`` tokens whose transition rows are Dirichlet(``alpha``)
draws; ``n_triggers`` trigger tokens carry ``trigger_mass`` of every row's probability, and
the token after a trigger copies the token before it. ``kind: bigram`` is the same chain
without the copy rule (the control). An optional fixed BOS token (id ``vocab``) opens every
sequence at position 0. Everything is drawn from seeded NumPy generators: the same
parameters give the same chain, training batches and evaluation batch on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("backcopy", "bigram")


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic corpus (the schema's ``synthetic`` entry mirrors these).

    ``vocab``: ordinary tokens (ids 0..vocab-1); the BOS token, when ``bos`` is true, has id
    ``vocab``. ``triggers``: the trigger token ids (the ``n`` last ordinary ids by default).
    ``trigger_mass``: probability of moving to some trigger from any token. ``alpha``:
    Dirichlet concentration of the transition rows. ``seed``: the chain's seed (training
    batches and the evaluation batch take their own seeds).
    """

    kind: str = "backcopy"
    vocab: int = 64
    n_triggers: int = 3
    trigger_mass: float = 0.2
    alpha: float = 0.1
    bos: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corpus.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 1 <= self.n_triggers < self.vocab // 2:
            raise ValueError(f"corpus.n_triggers: {self.n_triggers} must be in "
                             f"[1, vocab/2) (vocab {self.vocab})")
        if not 0 < self.trigger_mass < 1:
            raise ValueError(f"corpus.trigger_mass: {self.trigger_mass} must be in (0, 1)")
        if not self.alpha > 0:
            raise ValueError(f"corpus.alpha: {self.alpha} must be > 0")

    @property
    def triggers(self) -> list[int]:
        """Trigger token ids: the last ``n_triggers`` ordinary ids."""
        return list(range(self.vocab - self.n_triggers, self.vocab))

    @property
    def vocab_size(self) -> int:
        """Embedding rows a model needs: ordinary tokens plus BOS (always reserved)."""
        return self.vocab + 1

    @property
    def bos_id(self) -> int:
        return self.vocab


def transition_matrix(spec: SyntheticSpec) -> np.ndarray:
    """The bigram chain's transition matrix, ``vocab x vocab``, rows summing to 1.

    Each row is a Dirichlet(alpha) draw over non-triggers scaled to ``1 - trigger_mass``
    and a Dirichlet(max(alpha, 1)) draw over triggers scaled to ``trigger_mass`` (so that
    every trigger occurs, not one per row).
    """
    rng = np.random.default_rng([spec.seed, 7919])
    v, k = spec.vocab, spec.n_triggers
    plain = rng.dirichlet(np.full(v - k, spec.alpha), size=v)
    trig = rng.dirichlet(np.full(k, max(spec.alpha, 1.0)), size=v)
    p = np.concatenate([(1 - spec.trigger_mass) * plain, spec.trigger_mass * trig], axis=1)
    return p / p.sum(axis=1, keepdims=True)


def sample(spec: SyntheticSpec, n: int, seq_len: int, seed: int,
           matrix: np.ndarray | None = None) -> np.ndarray:
    """``n`` sequences of ``seq_len`` tokens (BOS first when ``spec.bos``); int64, n x seq_len.

    The first ordinary token is uniform; then each token follows the chain, except that
    (backcopy) the token after a trigger copies the token before the trigger.
    """
    p = transition_matrix(spec) if matrix is None else matrix
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0
    rng = np.random.default_rng([seed, 104729])
    start = 1 if spec.bos else 0
    out = np.empty((n, seq_len), dtype=np.int64)
    if spec.bos:
        out[:, 0] = spec.bos_id
    out[:, start] = rng.integers(0, spec.vocab - spec.n_triggers, size=n)
    is_trig = np.zeros(spec.vocab + 1, dtype=bool)
    is_trig[spec.triggers] = True
    u = rng.random((n, seq_len))
    for t in range(start + 1, seq_len):
        prev = out[:, t - 1]
        nxt = (u[:, t, None] > cum[prev]).sum(axis=1)
        if spec.kind == "backcopy" and t - 2 >= start:
            copy = is_trig[prev]
            nxt = np.where(copy, out[:, t - 2], nxt)
        out[:, t] = np.minimum(nxt, spec.vocab - 1)
    return out


def batches(spec: SyntheticSpec, batch_size: int, seq_len: int, seed: int):
    """Endless training batches (batch_size x seq_len int64), batch ``i`` from seed (seed, i)."""
    p = transition_matrix(spec)
    i = 0
    while True:
        yield sample(spec, batch_size, seq_len, seed=hash_seed(seed, i), matrix=p)
        i += 1


def hash_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (independent streams for batches and evaluation)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


def eval_batch(spec: SyntheticSpec, n_seqs: int, seq_len: int, seed: int) -> np.ndarray:
    """The fixed evaluation batch: the same process, a stream no training batch uses."""
    return sample(spec, n_seqs, seq_len, seed=hash_seed(-1, seed))


def manifest(spec: SyntheticSpec) -> dict:
    """What identifies the corpus: its parameters, trigger ids, BOS id and a digest of
    the transition matrix (like the text corpus's manifest)."""
    p = transition_matrix(spec)
    return {"source": "synthetic", **asdict(spec), "triggers": spec.triggers,
            "bos_id": spec.bos_id if spec.bos else None, "vocab_size": spec.vocab_size,
            "matrix_sha256": hashlib.sha256(np.round(p, 12).tobytes()).hexdigest(),
            "reference": "Guo et al. 2024, arXiv 2410.13835 (Bigram-Backcopy)"}


def spec_of(corpus_manifest: dict, bos: bool | None = None) -> SyntheticSpec:
    """The :class:`SyntheticSpec` a corpus manifest records (``bos``, when given,
    overrides its BOS setting: a model trained without the BOS token)."""
    fields = {k: corpus_manifest[k] for k in SyntheticSpec.__dataclass_fields__}
    if bos is not None:
        fields["bos"] = bos
    return SyntheticSpec(**fields)


def tokenizer_vocab(spec: SyntheticSpec) -> dict[str, int]:
    """Token strings of the synthetic vocabulary: ``t0`` .. ``t{vocab-1}``, then ``<bos>``."""
    return {**{f"t{i}": i for i in range(spec.vocab)}, BOS: spec.bos_id}


BOS = "<bos>"


def save_tokenizer(spec: SyntheticSpec, out_dir) -> None:
    """A word-level Hugging Face tokenizer of the synthetic vocabulary (so checkpoints carry
    a tokenizer like every other madyn model); ``<bos>`` is its BOS, EOS and UNK token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=tokenizer_vocab(spec), unk_token=BOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS,
                                   unk_token=BOS)
    fast.save_pretrained(str(out_dir))


def build_corpus(out_dir, spec: SyntheticSpec) -> dict:
    """Write ``manifest.json`` and ``tokenizer/`` of a synthetic corpus to ``out_dir``
    (atomically); training batches and the evaluation batch are drawn from the manifest's
    parameters when needed. Returns the manifest."""
    from pathlib import Path

    from madyn.io import atomic_path, write_json

    out = Path(out_dir)
    with atomic_path(out / "tokenizer", folder=True) as tdir:
        save_tokenizer(spec, tdir)
    m = manifest(spec)
    write_json(out / "manifest.json", m)
    return m
