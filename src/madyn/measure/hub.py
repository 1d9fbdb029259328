"""Hub revisions: downloading one revision's weights and config into the Hugging Face
cache, and removing afterwards only what madyn fetched."""

from __future__ import annotations

from pathlib import Path

from madyn.measure.checkpoint_error import CheckpointError
from madyn.measure.checkpoints import fingerprint
from madyn.measure.safetensors_files import check_weight_files

# weight files of a hub snapshot (what a suite's extract.delete_downloads removes)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def delete_cached_revision(snapshot: str | Path, fetched: dict | None) -> list[Path]:
    """Remove from the hub cache the weights madyn fetched for one revision: the weight
    links and blobs ``fetched`` names (``download_revision``'s record), each blob only when
    no other snapshot links to it. What was cached before madyn downloaded (a revision the
    user fetched) stays, and so do small files (config, tokenizer): identical files are one
    blob shared by every revision, and a download running beside this one may be about to
    link them. ``fetched`` None (a marker from before madyn kept the record): nothing is
    removed. Returns the blobs removed."""
    snap = Path(snapshot)
    if not fetched:
        return []
    links, blobs = set(fetched.get("links", [])), set(fetched.get("blobs", []))
    others = {p.resolve() for s in (snap.parent).iterdir() if s != snap
              for p in s.rglob("*") if p.is_symlink()}
    removed = []
    for link in sorted(snap.rglob("*")):
        if (link.is_symlink() and link.name.endswith(WEIGHT_SUFFIXES)
                and link.relative_to(snap).as_posix() in links):
            blob = link.resolve()
            link.unlink()
            if blob.name in blobs and blob not in others and blob.is_file():
                blob.unlink()
                removed.append(blob)
    return removed


def _cached_weights(repo_id: str) -> tuple[set[str], set[str]]:
    """What the hub cache holds of ``repo_id`` now: its weight links (``commit/file``)
    and the names of its blobs."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    links = {p.relative_to(root / "snapshots").as_posix()
             for p in (root / "snapshots").glob("*/**/*")
             if p.is_symlink() or p.is_file()}
    blobs = {b.name for b in (root / "blobs").glob("*")}
    return links, blobs


# Files a measurement needs from a hub revision: config, weights, tokenizer (no code).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


def download_revision(repo_id: str, revision: str) -> dict:
    """Download one hub revision's weights and config (safetensors only, no code).

    Returns what the measuring job needs: the snapshot folder, its commit, the weights
    fingerprint (hub blobs are named by their sha256, so nothing is read twice) and
    ``fetched``: the weight links and blobs this download added to the cache (what
    :func:`delete_cached_revision` may remove; a revision cached before stays).
    """
    from huggingface_hub import snapshot_download

    had_links, had_blobs = _cached_weights(repo_id)
    snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    files = sorted(snap.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{repo_id}@{revision}: no safetensors weights")
    fetched: dict[str, list[str]] = {"links": [], "blobs": []}
    for link in sorted(snap.rglob("*")):
        rel = link.relative_to(snap).as_posix()
        if link.name.endswith(WEIGHT_SUFFIXES) and f"{snap.name}/{rel}" not in had_links:
            fetched["links"].append(rel)
            if link.is_symlink() and link.resolve().name not in had_blobs:
                fetched["blobs"].append(link.resolve().name)
    return {"repo": repo_id, "revision": revision, "snapshot": str(snap),
            "commit": snap.name, "weights": fingerprint(check_weight_files(files)),
            "bytes": sum(f.resolve().stat().st_size for f in files), "fetched": fetched}
