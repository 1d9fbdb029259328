"""The offline corpus and its locally trained tokenizer.

The embedded suite trains on the Python standard library's own source files (the
CodeParrot-like setting of He et al., *Understanding and Minimising Outlier Features in
Neural Network Training*, arXiv 2405.19279): every machine with Python has them, so no
network is needed. A manifest records every file, its size, sha256 and split.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from madyn.io import atomic_path, write_json

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class CorpusFile:
    path: str  # relative to the corpus root
    bytes: int
    sha256: str
    split: str  # "train" or "heldout"


def stdlib_root() -> Path:
    """Directory of this interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def _unit_hash(text: str) -> float:
    """Deterministic number in [0, 1) from a string (stable across machines)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def collect_files(root: Path, max_mb: float, heldout_fraction: float) -> list[CorpusFile]:
    """Pick ``.py`` files under ``root`` (no site-packages), in a hash order, up to ``max_mb``.

    Files that are not valid UTF-8 are skipped. The split is decided per file by a hash
    of its relative path, so it never depends on which other files exist.
    """
    candidates = sorted(
        p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file()
    )
    candidates.sort(key=lambda p: _unit_hash(p.relative_to(root).as_posix()))
    picked: list[CorpusFile] = []
    total = 0
    for p in candidates:
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        rel = p.relative_to(root).as_posix()
        split = "heldout" if _unit_hash("split:" + rel) < heldout_fraction else "train"
        picked.append(CorpusFile(rel, len(data), hashlib.sha256(data).hexdigest(), split))
        total += len(data)
        if total >= max_mb * 1e6:
            break
    if not picked:
        raise ValueError(f"no usable .py files under {root}")
    if not any(f.split == "heldout" for f in picked):
        raise ValueError(f"corpus max_mb {max_mb:g}: its {len(picked)} files hold no held-out "
                         f"file at heldout_fraction {heldout_fraction:g}; raise either")
    return picked


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> None:
    """Train a byte-level BPE tokenizer and save it in Hugging Face format to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT
    )
    fast.save_pretrained(str(out_dir))


def encode(tokenizer_dir: Path, texts: list[str]) -> np.ndarray:
    """Token ids of ``texts`` joined by the end-of-text token; uint16, shape (N,)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    eot = tok.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eot)
    if len(tok) > np.iinfo(np.uint16).max:
        raise ValueError("vocabulary too large for uint16 token files")
    return np.asarray(ids, dtype=np.uint16)


def build_corpus(out_dir: str | Path, max_mb: float, heldout_fraction: float,
                 vocab_size: int, root: str | Path | None = None) -> dict:
    """Write manifest.json, tokenizer/, train.npy and heldout.npy to ``out_dir``.

    Returns the manifest. Every output is written atomically.
    """
    out = Path(out_dir)
    src = Path(root) if root else stdlib_root()
    files = collect_files(src, max_mb, heldout_fraction)
    if all(f.split == "heldout" for f in files):
        raise ValueError(f"corpus max_mb {max_mb:g}: its {len(files)} files are all held out "
                         f"at heldout_fraction {heldout_fraction:g}, none left to train on")
    texts = {f.path: (src / f.path).read_text(encoding="utf-8") for f in files}
    train = [texts[f.path] for f in files if f.split == "train"]
    heldout = [texts[f.path] for f in files if f.split == "heldout"]
    with atomic_path(out / "tokenizer", folder=True) as tdir:
        train_tokenizer(train, vocab_size, tdir)
    arrays = {"train": encode(out / "tokenizer", train),
              "heldout": encode(out / "tokenizer", heldout)}
    for name, arr in arrays.items():
        with atomic_path(out / f"{name}.npy") as tmp:
            np.save(tmp, arr)
    digest = hashlib.sha256("".join(f.sha256 for f in files).encode()).hexdigest()
    manifest = {
        "root": str(src),
        "files": [f.__dict__ for f in files],
        "n_files": len(files),
        "bytes": sum(f.bytes for f in files),
        "sha256": digest,
        "tokens": {k: int(v.size) for k, v in arrays.items()},
        "vocab_size": vocab_size,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def heldout_texts(manifest: dict) -> list[str]:
    """The held-out files' texts listed in a corpus manifest."""
    root = Path(manifest["root"])
    return [(root / f["path"]).read_text(encoding="utf-8")
            for f in manifest["files"] if f["split"] == "heldout"]


TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                   "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
                   "chat_template.json")
TOKENIZER_FILE_LIMIT = 512 * 2**20  # bytes; the largest real tokenizer.json is ~35 MB


def check_tokenizer_folder(folder: str | Path) -> None:
    """Each file of a local tokenizer folder that transformers may read
    (:data:`TOKENIZER_FILES`) must be a regular file (a link to one is followed) of at
    most :data:`TOKENIZER_FILE_LIMIT` bytes: :class:`madyn.io.UnsafeFile` naming it
    otherwise (a link to /dev/zero or a FIFO would read without end or block)."""
    import os
    import stat

    from madyn.io import open_regular

    for name in TOKENIZER_FILES:
        f = Path(folder) / name
        if not os.path.lexists(f):
            continue
        try:
            st = os.stat(f)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            open_regular(f).close()  # raises, naming what it is
        if st.st_size > TOKENIZER_FILE_LIMIT:
            from madyn.io import UnsafeFile

            raise UnsafeFile(f"{f}: larger than {TOKENIZER_FILE_LIMIT / 2**20:g} MB, more "
                             "than a tokenizer file holds")


def encode_with(tokenizer: str, texts: list[str], revision: str | None = None) -> np.ndarray:
    """Encode ``texts`` joined by blank lines with any HF tokenizer (local dir, its files
    checked by :func:`check_tokenizer_folder`, or hub id)."""
    from transformers import AutoTokenizer

    if Path(tokenizer).is_dir():
        check_tokenizer_folder(tokenizer)
    tok = AutoTokenizer.from_pretrained(tokenizer, revision=revision)
    return np.asarray(tok("\n\n".join(texts), add_special_tokens=False)["input_ids"],
                      dtype=np.int64)


def eval_windows(ids: np.ndarray, n_seqs: int, seq_len: int, seed: int) -> np.ndarray:
    """``n_seqs`` non-overlapping windows of ``seq_len`` tokens at seeded random offsets.

    ids: 1-D token stream. Returns an int64 array, n_seqs x seq_len.
    """
    n_windows = len(ids) // seq_len
    if n_windows < n_seqs:
        raise ValueError(f"held-out text has {len(ids)} tokens: too few for {n_seqs} "
                         f"sequences of {seq_len}; raise corpus.max_mb or heldout_fraction")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n_windows, size=n_seqs, replace=False))
    return np.stack([ids[p * seq_len:(p + 1) * seq_len] for p in picks]).astype(np.int64)
