"""Phase 2, measuring: the evaluation batch, per-checkpoint statistics, per-model series.

Owns the phase's file I/O. The workflow (``workflow/rules/extract.smk``) passes every path;
the science is in :mod:`madyn.measure.extract` (one checkpoint), :mod:`madyn.measure.hub`
(downloads), :mod:`madyn.measure.series` and :mod:`madyn.measure.released` (the study's
released layout); how checkpoints are measured is :class:`madyn.settings.ExtractSettings`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from madyn.io import atomic_path, read_json, sha256_file, write_json
from madyn.measure import released
from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.extract import measure_checkpoint
from madyn.measure.gpus import claimed_device
from madyn.measure.hub import delete_cached_revision, download_revision
from madyn.measure.series import build_series, growth_summary
from madyn.measure.stats_table import read_stats, write_stats
from madyn.settings import ExtractSettings


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def eval_tokens(corpus_manifest: str, tokenizer: str, out: str, *, n_seqs: int,
                seq_len: int, seed: int, revision: str | None = None,
                bos: bool | None = None) -> np.ndarray:
    """Write the fixed evaluation batch (N x T int64 ids, ``.npy``) cut from the held-out
    corpus files of ``corpus_manifest``, tokenized with ``tokenizer`` (folder or hub id);
    for a synthetic corpus, drawn from its process (``bos`` overrides its BOS setting).
    A text batch with ``bos`` True has the tokenizer's end-of-text token at position 0 (as
    :mod:`madyn.train.training` trains a model with ``bos``)."""
    from madyn.train.corpus import encode_with, eval_windows, heldout_texts

    manifest = read_json(corpus_manifest)
    if manifest.get("source") == "synthetic":
        from madyn.train import synthetic

        tokens = synthetic.eval_batch(synthetic.spec_of(manifest, bos), n_seqs, seq_len, seed)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, tokens)
        _say(f"eval tokens: {tokens.shape[0]} x {tokens.shape[1]} synthetic -> {out}")
        return tokens
    ids = encode_with(tokenizer, heldout_texts(manifest), revision)
    tokens = eval_windows(ids, n_seqs, seq_len, seed)
    if bos:
        from transformers import AutoTokenizer

        tokens[:, 0] = AutoTokenizer.from_pretrained(tokenizer, revision=revision).eos_token_id
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, tokens)
    _say(f"eval tokens: {tokens.shape[0]} x {tokens.shape[1]} from {len(ids)} held-out "
         f"tokens -> {out}")
    return tokens


def load_tokens(path: str) -> np.ndarray:
    """An evaluation batch written by :func:`eval_tokens`, or a run entry's ``tokens``
    (never unpickled; only a regular file, :func:`madyn.io.open_regular`: a FIFO would
    block)."""
    from madyn.io import UnsafeFile, open_regular

    try:
        with open_regular(path) as f:
            return np.load(f, allow_pickle=False)
    except UnsafeFile:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a .npy array of token ids ({e})") from None


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to measure: a local folder (a trained step, or a hub snapshot)."""

    source: str
    step: int
    out: Path  # its statistics table (Parquet)
    expected_sha256: str | None = None  # sha256 of model.safetensors per the manifest
    repo: str | None = None  # a hub snapshot's repo id and revision, for the metadata
    revision: str | None = None
    pickles: tuple[Path, ...] = ()  # weight pickles to load (torch.load weights_only)
    refused: str | None = None  # why its checks refused it (a run's job records a skip)


def trained_checkpoints(model_dir: str, steps: list[int], outs: list[str]
                        ) -> list[Checkpoint]:
    """The checkpoints of a model trained by madyn (``model_dir``, as ``madyn step train``
    writes it), with the weights sha256 its manifest records; ``outs`` pairs with steps."""
    from madyn.train.training import checkpoint_dir

    if len(steps) != len(outs):
        raise ValueError(f"{len(steps)} steps but {len(outs)} output paths")
    manifest = read_json(Path(model_dir) / "manifest.json")
    sha = manifest.get("weights_sha256", {})
    return [Checkpoint(str(checkpoint_dir(model_dir, s)), s, Path(o), sha.get(str(s)))
            for s, o in zip(steps, outs, strict=True)]


def run_checkpoints(folders: list[str], steps: list[int], outs: list[str],
                    allow_pickle: bool = False, skip_bad: bool = False) -> list[Checkpoint]:
    """The checkpoints of a run folder (source: run), each checked first
    (:func:`madyn.measure.run_checkpoints.check_checkpoint`); ``folders``, ``steps`` and
    ``outs`` pair up. ``skip_bad``: a checkpoint its checks refuse is returned with the
    reason in ``refused`` (its table records the skip) instead of stopping the others."""
    from madyn.measure.run_checkpoints import check_checkpoint

    if not len(folders) == len(steps) == len(outs):
        raise ValueError(f"{len(folders)} checkpoints, {len(steps)} steps and {len(outs)} "
                         "output paths: give one of each per checkpoint")
    out = []
    for d, s, o in zip(folders, steps, outs, strict=True):
        try:
            files = check_checkpoint(Path(d), allow_pickle)
        except (CheckpointError, ValueError, OSError) as e:
            if not skip_bad:
                raise
            out.append(Checkpoint(d, s, Path(o), refused=" ".join(str(e).split())))
            continue
        pickles = tuple(f for f in files if f.suffix != ".safetensors")
        out.append(Checkpoint(d, s, Path(o), pickles=pickles))
    return out


def _verify(ck: Checkpoint, fp: dict) -> None:
    """The weights on disk must be the ones training recorded."""
    if ck.expected_sha256 is None:
        return
    got = fp["shards"].get("model.safetensors")
    if got != ck.expected_sha256:
        raise CheckpointError(
            f"{ck.source}: model.safetensors sha256 {str(got)[:12]}... differs from its "
            f"manifest's {ck.expected_sha256[:12]}... (changed or corrupted after "
            "training): retrain it, or restore the file")


def _is_current(out: Path, fp: dict, tokens_sha: str, dtype: str,
                extreme_tokens: bool = True) -> bool:
    """Does ``out`` already hold this checkpoint measured on these tokens?"""
    if not out.exists():
        return False
    import json

    import pyarrow.parquet as pq

    try:
        meta = json.loads((pq.read_schema(out).metadata or {}).get(b"madyn", b"{}"))
    except Exception:  # unreadable or foreign file: measure again
        return False
    return (meta.get("weights", {}).get("sha256") == fp["sha256"]
            and meta.get("tokens_sha256") == tokens_sha and meta.get("dtype") == dtype
            and meta.get("extreme_tokens") == extreme_tokens)


def measure(checkpoints: list[Checkpoint], tokens_path: str, model: str,
            settings: ExtractSettings | dict | None = None, *,
            progress: Callable[[str], None] = _say, skip_bad: bool = False
            ) -> dict[str, int]:
    """Measure every checkpoint whose table is missing or stale, one process for all.

    ``settings``: how (None: the defaults). With ``extreme_tokens`` the attention-sink
    metric is measured too (see :func:`madyn.measure.statistics.measure`); a table measured with
    the other setting, or in another dtype, is stale.

    Each table is written atomically as soon as its checkpoint is measured, so a killed
    job loses only the checkpoint in flight; a table that already holds the same weights
    measured on the same tokens is kept. ``skip_bad`` (a run folder): a checkpoint
    refused by its checks, or that fails to load or to measure in any way, is named and
    its table is a record of the reason (no rows; metadata ``skipped``), which
    :func:`series` reports as skipped; the job goes on (a failed job would lose the
    tables it measured); it is tried again whenever the job runs again.
    Returns counts: measured, kept, skipped.
    """
    from madyn.measure.checkpoints import fingerprint, weight_files

    s = ExtractSettings.of(settings)
    tokens = load_tokens(tokens_path)
    tokens_sha = sha256_file(tokens_path)
    t0, done, kept, skipped = time.monotonic(), 0, 0, 0

    def skip(ck: Checkpoint, why: str) -> None:
        progress(f"[{model}] skipped step {ck.step} ({ck.source}): {why}")
        write_stats(pd.DataFrame(columns=["seq", "layer"]),
                    {"model": model, "step": ck.step, "skipped": why}, ck.out)

    with ExitStack() as held:
        dev = None  # claimed at the first checkpoint to measure (one GPU of several)
        for i, ck in enumerate(checkpoints, 1):
            if ck.refused is not None:
                skip(ck, ck.refused)
                skipped += 1
                continue
            try:
                fp = fingerprint(list(ck.pickles) or weight_files(ck.source))
                _verify(ck, fp)
                if _is_current(ck.out, fp, tokens_sha, s.dtype, s.extreme_tokens):
                    kept += 1
                    continue
                dev = dev or held.enter_context(claimed_device(s.device, say=progress))
                t_ck = time.monotonic()
                df, meta = measure_checkpoint(ck.source, tokens, replace(s, device=dev),
                                              weights_fp=fp, pickles=list(ck.pickles))
            except Exception as e:  # noqa: BLE001 (skip_bad: whatever fails, named)
                if not skip_bad:
                    raise
                why = " ".join(str(e).split())
                if not isinstance(e, (CheckpointError, ValueError, OSError)):
                    why = f"{type(e).__name__}: {why}"
                skip(ck, why)
                skipped += 1
                continue
            meta.update(model=model, step=ck.step, tokens_sha256=tokens_sha)
            if ck.repo:
                meta.update(source=ck.repo, revision=ck.revision, snapshot=ck.source)
            write_stats(df, meta, ck.out)
            done += 1
            last = df[df["layer"] == df["layer"].max()]["ratio"].mean()
            progress(f"[{model}] step {ck.step} ({i}/{len(checkpoints)}): last-layer "
                     f"top1/median {last:.1f}, {time.monotonic() - t_ck:.2f}s "
                     f"({time.monotonic() - t0:.0f}s elapsed)")
    progress(f"[{model}] measured {done} checkpoints, kept {kept} up to date"
             + (f", skipped {skipped}" if skipped else "")
             + f" ({time.monotonic() - t0:.1f}s)")
    return {"measured": done, "kept": kept, "skipped": skipped}


def _earlier_fetch(out: str, marker: dict) -> dict:
    """What an earlier marker at ``out`` records madyn fetched of the same snapshot (a
    download run again finds its own earlier download in the cache)."""
    try:
        old = read_json(out)
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or old.get("snapshot") != marker["snapshot"]:
        return {}
    return old.get("fetched") or {}


def download(repo: str, revision: str, out: str) -> dict:
    """Download one hub revision and write its marker: snapshot folder, weights sha256,
    and which weight files this download (or an earlier one of the same marker) fetched,
    the only ones ``--delete-download`` removes."""
    t0 = time.monotonic()
    marker = download_revision(repo, revision)
    if Path(out).is_file():
        earlier = _earlier_fetch(out, marker)
        for k, names in marker["fetched"].items():
            names[:] = sorted(set(names) | set(earlier.get(k, [])))
    write_json(out, marker)
    _say(f"{repo}@{revision}: {marker['bytes'] / 1e9:.2f} GB in "
         f"{time.monotonic() - t0:.0f}s -> {marker['snapshot']}")
    return marker


def measure_download(marker_path: str, tokens_path: str, out: str, model: str, step: int,
                     settings: ExtractSettings | dict | None = None) -> None:
    """Measure a downloaded hub revision; with ``settings.delete_downloads``, remove from
    the cache after the weights madyn's download fetched (the marker's ``fetched``; never a
    revision the user had cached before)."""
    s = ExtractSettings.of(settings)
    marker = read_json(marker_path)
    if not list(Path(marker["snapshot"]).glob("*.safetensors")):  # deleted after an
        marker = download_revision(marker["repo"], marker["revision"])  # earlier measurement
    ck = Checkpoint(marker["snapshot"], step, Path(out), repo=marker["repo"],
                    revision=marker["revision"])
    measure([ck], tokens_path, model, s)
    if s.delete_downloads:
        delete_cached_revision(marker["snapshot"], marker.get("fetched"))


def settings_from_args(settings_json: str | None, **given) -> ExtractSettings:
    """The ExtractSettings of ``madyn extract``/``extract-model``: ``settings_json`` (JSON
    text, e.g. a suite's ``extract`` in params.yaml), each option in ``given`` that is not
    None over it, the params schema's defaults for the rest; ValueError naming
    ``--settings-json`` for unreadable JSON or an unknown key."""
    import json

    try:
        base = json.loads(settings_json) if settings_json else {}
        return ExtractSettings.from_dict({**base,
                                          **{k: v for k, v in given.items() if v is not None}})
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"--settings-json: {e}") from None


def measure_one(checkpoint: str | None, tokens_path: str, out: str, *, model: str | None,
                step: int | None, settings: ExtractSettings, revision: str | None = None,
                marker: str | None = None, allow_pickle: bool = False) -> None:
    """``madyn extract``: measure one checkpoint into ``out``. From a download ``marker``
    (:func:`download`); or a hub repo id ``checkpoint`` at ``revision`` (downloaded to a
    temporary marker, measured, removed from the cache after with
    ``settings.delete_downloads``); or a local checkpoint folder. ``model`` defaults to the
    checkpoint's folder name, ``step`` to 0 (with a marker both are recorded as given)."""
    if marker:
        measure_download(marker, tokens_path, out, model, step, settings)
        return
    if not checkpoint:
        raise ValueError("give a CHECKPOINT (folder or hub repo id) or --marker")
    step = 0 if step is None else step
    model = model or Path(checkpoint).name
    if revision:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="madyn-download-") as tmp:
            tmp_marker = str(Path(tmp) / "download.json")
            download(checkpoint, revision, tmp_marker)
            measure_download(tmp_marker, tokens_path, out, model, step, settings)
        return
    cks = (run_checkpoints([checkpoint], [step], [out], allow_pickle)  # checked as a run's
           if Path(checkpoint).is_dir() else [Checkpoint(checkpoint, step, Path(out))])
    measure(cks, tokens_path, model, settings)


def export_config(source: str) -> dict:
    """The ``config.json`` to export beside a model's released files: from a checkpoint
    folder, or from the snapshot a hub download marker (``.json`` file) names."""
    folder = Path(source)
    if folder.is_file():
        folder = Path(read_json(folder)["snapshot"])
    cfg = folder / "config.json"
    try:
        return read_json(cfg)
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg}: cannot read the model's config.json: {e}") from None


def series(model: str, out: str, integrity_out: str, *, stats: list[str] | None = None,
           released_dir: str | None = None, export_dir: str | None = None,
           export_config_from: str | None = None, skipped_json: str | None = None
           ) -> tuple[pd.DataFrame, dict]:
    """One model's series table and integrity report, from its per-checkpoint tables
    (``stats``) or from a folder in the study's released layout (``released_dir``: bad
    files are skipped, named, and recorded with their reason). ``export_dir``: also write
    the tables in the released layout there, with the model's ``config.json`` (from
    ``export_config_from``, see :func:`export_config`) so that the export reads back as a
    released suite without its architecture in the suite entry."""
    cfg = export_config(export_config_from) if export_dir and export_config_from else None
    if released_dir:
        files = released.scan(released_dir).get(model)
        if not files:
            raise released.MalformedStats(
                f"model {model}: no exp2_{model}_step* files under {released_dir}/{model}/stats")
        tables = released.read_model(files, warn=_say)
        skipped = tables.skipped
        metas: dict[int, dict] = {s: {} for s in tables}
        extremes = released.read_extremes(released.extremes_path(released_dir, model))
        for step in tables:
            if step in extremes:
                tables[step] = tables[step].merge(extremes[step], on=["seq", "layer"],
                                                  how="left")
    else:
        tables, metas, skipped = {}, {}, {}
        for f in stats or []:
            df, meta = read_stats(f)
            if meta.get("skipped"):  # a run checkpoint that failed to load: its reason
                skipped[f"step {meta['step']}"] = meta["skipped"]
                continue
            tables[int(meta["step"])], metas[int(meta["step"])] = df, meta
    if not tables:
        raise ValueError(f"model {model}: no checkpoint could be measured ("
                         + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]) + ")")
    frame, report = build_series(tables, metas, model)
    if skipped_json:  # what the run source skipped in the run's folder
        import json

        skipped = {**skipped, **json.loads(skipped_json)}
    report["skipped_files"] = {str(k): v for k, v in skipped.items()}
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    write_json(integrity_out, report)
    if export_dir:
        for step, df in tables.items():
            released.write_exp2(df, released.exp2_path(export_dir, model, step))
        released.write_extremes(tables, released.extremes_path(export_dir, model))
        if cfg is not None:
            write_json(Path(export_dir) / model / "config.json", cfg)
    _say(f"[{model}] series of {len(tables)} checkpoints, {len(report['flagged'])} flagged, "
         f"{len(skipped)} files skipped -> {out}")
    return frame, report


def growth(series_paths: list[str], out: str) -> dict:
    """Growth of top1/median per model and layer (a DVC metric); prints a line per model."""
    summary = growth_summary({Path(f).stem: pd.read_parquet(f) for f in series_paths})
    write_json(out, summary)
    for m, g in summary.items():
        per = " ".join(f"{x:.1f}" for x in g["growth_per_layer"])
        _say(f"{m:14s} top1/median x{g['growth_middle_mean']:.2f} (middle layers); "
             f"per layer {per}")
    return summary


def plot_series(series_path: str, out_series: str, out_first_last: str) -> None:
    """The figures of one model's series."""
    from madyn.report.plots_series import plot_first_last
    from madyn.report.plots_series import plot_series as plot

    frame = pd.read_parquet(series_path)
    plot(frame, out_series)
    plot_first_last(frame, out_first_last)
